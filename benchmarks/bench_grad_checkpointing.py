"""Training memory and step time with and without `set_grad_checkpointing`, at released size.

One training step (forward, a scalar loss, backward) of a released architecture with random weights, in
train mode, each measurement in a fresh child process. The model is built and one untimed step is run (so
lazy initialisation is done), which also counts the activations autograd keeps for backward (distinct
storages, parameters excluded; of a checkpointed block only its inputs). Gradients are then dropped, the
freed memory handed back to the kernel (glibc's `malloc_trim`), the peak RSS (VmHWM) reset, and one step
timed. Its peak is reported above the RSS before it: the step's activations, gradients and temporaries,
not the model. Plain and checkpointed steps alternate round by round; medians, and the medians of
per-round ratios (checkpointed / plain).

    python benchmarks/bench_grad_checkpointing.py [--tasks language imagenet_conv] [--batch 1] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TASKS = ("language", "imagenet_learned", "imagenet_fourier", "imagenet_conv", "optical_flow", "video_autoencoding")

# The child: builds the model, warms up, then measures one step. Inputs come from bench_forward.inputs_for.
CHILD = """
import ctypes, json, sys, time
sys.path.insert(0, sys.argv[4])
import torch
from bench_forward import PRESETS, inputs_for
from perceiver_torch import build_preset

def status(key):  # kB, this process's own accounting
    with open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith(key)).split()[1])

task, batch, checkpointed = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
torch.manual_seed(0)
model = build_preset(PRESETS[task]).train()
model.set_grad_checkpointing(checkpointed)
inputs = inputs_for(task, model, batch, torch.device("cpu"))

def step():
    out = model(*inputs)
    outputs = out.values() if isinstance(out, dict) else [out]
    sum(o.float().square().mean() for o in outputs).backward()

parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
kept = {}

def pack(tensor):  # what autograd keeps for backward outside checkpointed blocks, parameters excluded
    storage = tensor.untyped_storage()
    if storage.data_ptr() not in parameters:
        kept[storage.data_ptr()] = storage.nbytes()
    return tensor

with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
    step()  # the warm-up
model.zero_grad(set_to_none=True)
ctypes.CDLL("libc.so.6").malloc_trim(0)  # the warm-up's freed memory back to the kernel: else it hides the peak
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # the peak (VmHWM) back to the current RSS
before = status("VmRSS:")
start = time.perf_counter()
step()
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "peak_mb": (status("VmHWM:") - before) / 1024,
                  "kept_mb": sum(kept.values()) / 2**20}))
"""


def run_child(task: str, batch: int, checkpointed: bool) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, task, str(batch), "1" if checkpointed else "0",
                          str(REPO / "benchmarks")], cwd=REPO, capture_output=True, text=True, check=False)
    if out.returncode:
        raise SystemExit(f"{task} (checkpointed={checkpointed}) failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _median(results: list[dict], key: str) -> float:
    return statistics.median(x[key] for x in results)


def _ratio(checkpointed: list[dict], plain: list[dict], key: str) -> float:
    """The median of per-round ratios."""
    return statistics.median(c[key] / p[key] for c, p in zip(checkpointed, plain, strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=["language", "imagenet_conv"])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(f"{platform.processor() or platform.machine()}, batch {args.batch}, {args.rounds} interleaved rounds")
    rows = []
    for task in args.tasks:
        runs = {False: [], True: []}
        for r in range(args.rounds):
            for checkpointed in (False, True):
                runs[checkpointed].append(run_child(task, args.batch, checkpointed))
                last = runs[checkpointed][-1]
                print(f"{task} round {r + 1} {'checkpointed' if checkpointed else 'plain':12s} "
                      f"{last['seconds']:7.2f} s  peak +{last['peak_mb']:7.0f} MiB  kept {last['kept_mb']:7.0f} MiB",
                      flush=True)
        plain, ckpt = runs[False], runs[True]
        rows.append(f"| {task} | {_median(plain, 'seconds'):.2f} s | {_median(ckpt, 'seconds'):.2f} s | "
                    f"{_ratio(ckpt, plain, 'seconds'):.2f} | {_median(plain, 'peak_mb'):.0f} MiB | "
                    f"{_median(ckpt, 'peak_mb'):.0f} MiB | {_ratio(ckpt, plain, 'peak_mb'):.2f} | "
                    f"{_median(plain, 'kept_mb'):.0f} -> {_median(ckpt, 'kept_mb'):.0f} MiB |")
    print("\n| task | step, plain | step, checkpointed | time ratio | peak above the model, plain | "
          "checkpointed | memory ratio | activations kept for backward |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
