"""Attention in bf16 at released size: its share of each task's forward, and what other formulations would cost.

    PYTHONPATH=$PWD python benchmarks/bench_attention_paths.py [--tasks imagenet_conv video_autoencoding ...]
        [--rounds 5] [--threads N]

Part 1, per task: one forward of ours with bf16 weights (random weights, batch 1, released size; the task
inputs of bench_forward.py) with `attend` wrapped to time each call: every attention shape, how often it runs,
its time and its share of the forward.

Part 2, per attention shape found: on random bf16 q, k, v of that shape, in interleaved rounds, medians and
the median of per-round ratios to what ours runs (`attend`):

- `fp32 logits, q chunks of C`: q and k widened, float32 logits and softmax, the probabilities rounded to
  bf16 times v (the precision ours keeps, as SDPA's CPU flash kernel does), C queries at a time;
- `bf16 logits`: what transformers' Perceiver does under bf16 autocast (bf16 matmul logits, softmax, bf16
  probabilities times v), the lower precision ours does not take.

Each comes with its max |error| against float64 attention on the same (bf16-valued) inputs. The question it
answers: could another formulation of the same precision, or transformers' lower one, close the gap between
ours and transformers under bf16 autocast on a CPU without AMX (benchmarks/README.md)?
"""

from __future__ import annotations

import argparse
import collections
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
import bench_forward  # noqa: E402

from perceiver_torch import build_preset  # noqa: E402
from perceiver_torch.layers import attention  # noqa: E402

TASKS = [task for task in bench_forward.PRESETS if task != "flow_sintel"]
CHUNKS = (None, 64, 256, 1024)  # None: all queries at once


def attention_calls(task: str) -> tuple[float, dict]:
    """(forward seconds, {(q shape, k shape, v shape, masked): [calls, seconds]}) of one bf16-weights forward."""
    model = build_preset(bench_forward.PRESETS[task]).eval().requires_grad_(False).to(torch.bfloat16)
    inputs = bench_forward._bf16(bench_forward.inputs_for(task, model, 1, torch.device("cpu")))
    forward = bench_forward.our_call(task, model, inputs, tile_batch_size=6)
    calls = collections.defaultdict(lambda: [0, 0.0])
    original = attention.attend

    def timed_attend(q, k, v, mask, dropout=0.0):
        start = time.perf_counter()
        out = original(q, k, v, mask, dropout)
        entry = calls[(tuple(q.shape), tuple(k.shape), tuple(v.shape), mask is not None)]
        entry[0] += 1
        entry[1] += time.perf_counter() - start
        return out

    with torch.no_grad():
        forward()  # warm-up, untimed
        attention.attend = timed_attend
        try:
            start = time.perf_counter()
            forward()
            total = time.perf_counter() - start
        finally:
            attention.attend = original
    return total, dict(calls)


def fp32_logits(q, k, v, chunk):
    scale = q.shape[-1] ** -0.5
    keys = k.float().transpose(-2, -1)

    def part(queries):
        probs = torch.softmax(torch.matmul(queries.float(), keys).mul_(scale), dim=-1)
        return torch.matmul(probs.to(v.dtype), v)

    if chunk is None or chunk >= q.shape[-2]:
        return part(q)
    return torch.cat([part(queries) for queries in q.split(chunk, dim=-2)], dim=-2)


def bf16_logits(q, k, v):
    probs = torch.softmax(torch.matmul(q, k.transpose(-2, -1)) * q.shape[-1] ** -0.5, dim=-1)
    return torch.matmul(probs, v)


def formulations(q_shape) -> dict:
    found = {"ours (attend)": lambda q, k, v: attention.attend(q, k, v, None)}
    for chunk in CHUNKS:
        if chunk is None or chunk < q_shape[-2]:
            label = "all queries" if chunk is None else f"q chunks of {chunk}"
            found[f"fp32 logits, {label}"] = lambda q, k, v, chunk=chunk: fp32_logits(q, k, v, chunk)
    found["bf16 logits (transformers)"] = bf16_logits
    return found


def compare(shapes: tuple, rounds: int) -> None:
    q_shape, k_shape, v_shape = shapes
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(shape, generator=g).to(torch.bfloat16) for shape in shapes)
    reference = F.scaled_dot_product_attention(q.double(), k.double(), v.double())
    ways = formulations(q_shape)
    times = {name: [] for name in ways}
    with torch.no_grad():
        errors = {name: (way(q, k, v).double() - reference).abs().max().item() for name, way in ways.items()}
        for _ in range(rounds):
            for name, way in ways.items():
                start = time.perf_counter()
                way(q, k, v)
                times[name].append(time.perf_counter() - start)
    ours = times["ours (attend)"]
    print(f"\nq {list(q_shape)}, k {list(k_shape)}, v {list(v_shape)}\n")
    print("| formulation | median | ratio to ours | max abs error vs float64 |")
    print("|---|---:|---:|---:|")
    for name, seconds in times.items():
        ratio = statistics.median(t / o for t, o in zip(seconds, ours, strict=True))
        print(f"| {name} | {statistics.median(seconds) * 1e3:.1f} ms | {ratio:.2f} | {errors[name]:.1e} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=TASKS)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, help="torch.set_num_threads")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"# bench_attention_paths: {bench_forward.describe_machine(torch.device('cpu'))}; rounds {args.rounds}")
    shapes = {}
    for task in args.tasks:
        total, calls = attention_calls(task)
        spent = sum(seconds for _, seconds in calls.values())
        print(f"\n## {task}: bf16 weights forward {total * 1e3:.0f} ms, attention {spent * 1e3:.0f} ms "
              f"({spent / total:.0%})\n")
        print("| q | k | v | masked | calls | time | share of forward |")
        print("|---|---|---|---|---:|---:|---:|")
        for (q_shape, k_shape, v_shape, masked), (count, seconds) in sorted(calls.items(), key=lambda c: -c[1][1]):
            print(f"| {list(q_shape)} | {list(k_shape)} | {list(v_shape)} | {masked} | {count} | "
                  f"{seconds * 1e3:.1f} ms | {seconds / total:.0%} |")
            if not masked:  # the masked one (language's encoder) is small; the formulations here take no mask
                shapes.setdefault((q_shape, k_shape, v_shape), task)
    print("\n## Formulations, per unmasked attention shape")
    for shape, task in shapes.items():
        print(f"\n({task})", end="")
        compare(shape, args.rounds)


if __name__ == "__main__":
    main()
