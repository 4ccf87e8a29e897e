"""Autocast's weight casts: ours and transformers under bf16 autocast, each forward in its own block or many in one.

Autocast casts a float32 weight at every use and keeps the cast for the rest of its `with` block only
when the parameter requires grad (a loaded model's default; bench_forward.py turns it off). So a model
run as `with autocast: model(x)` casts every weight once a forward, and shared weights once in all; one
`with autocast:` around several forwards casts each weight once for all of them. This prints both ways,
for ours and transformers' Perceiver (released configurations, random weights, batch 1), in interleaved
rounds: medians and the median of per-round ratios.

    PYTHONPATH=$PWD python benchmarks/bench_autocast_cache.py [--tasks language imagenet_fourier ...] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import forward_peers  # noqa: E402
from bench_forward import PRESETS, inputs_for  # noqa: E402

from perceiver_torch import build_preset  # noqa: E402

TASKS = ("language", "imagenet_learned", "imagenet_fourier", "imagenet_conv")


def bf16_autocast():
    return torch.autocast("cpu", dtype=torch.bfloat16)


def time_block(call) -> float:
    """One forward in a fresh autocast block: every cast made anew."""
    start = time.perf_counter()
    with bf16_autocast():
        call()
    return time.perf_counter() - start


def time_in_shared_block(call) -> float:
    """The second of two forwards in one autocast block: the casts cached by the first are reused."""
    with bf16_autocast():
        call()
        start = time.perf_counter()
        call()
        return time.perf_counter() - start


def bench(task: str, rounds: int) -> None:
    model = build_preset(PRESETS[task]).eval()  # parameters require grad, as loaded
    inputs = inputs_for(task, model, 1, torch.device("cpu"))
    calls = {"ours": lambda: model(*inputs)}
    hf = forward_peers.hf_model(task, model.config, torch.device("cpu"))
    if hf is None:
        print(f"\n### {task}: transformers is not installed; ours only")
    else:
        calls["transformers"] = forward_peers.hf_call(task, hf, inputs)
    modes = {"own block": time_block, "one block": time_in_shared_block}
    times = {(who, mode): [] for who in calls for mode in modes}
    with torch.no_grad():
        for call in calls.values():
            time_block(call)  # warm-up
        for _ in range(rounds):
            for who, call in calls.items():
                for mode, timer in modes.items():
                    times[who, mode].append(timer(call))
    print(f"\n### {task} ({PRESETS[task]}), batch 1, bf16 autocast, parameters requiring grad\n")
    print("| forward | " + " | ".join(calls) + (" | ours / transformers |" if len(calls) > 1 else " |"))
    print("|---|" + "---:|" * (len(calls) + (len(calls) > 1)))
    for mode in modes:
        row = [f"{statistics.median(times[who, mode]) * 1e3:.0f} ms" for who in calls]
        if len(calls) > 1:
            ratios = [a / b for a, b in zip(times["ours", mode], times["transformers", mode], strict=True)]
            row.append(f"{statistics.median(ratios):.2f}")
        print(f"| in its {mode} |" if mode == "own block" else f"| two in {mode} (the second) |", " | ".join(row), "|")
    spread = max(max(t) / min(t) for t in times.values())
    print(f"\nrounds: {rounds}; largest max/min spread of one timing over the rounds: {spread:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    print(f"# bench_autocast_cache: torch {torch.__version__}, {torch.get_num_threads()} threads")
    for task in args.tasks:
        bench(task, args.rounds)


if __name__ == "__main__":
    main()
