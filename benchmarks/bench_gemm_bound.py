"""How close to the GEMM peak a task's forward can get: its matmuls and attentions replayed alone, at their shapes.

    PYTHONPATH=$PWD python benchmarks/bench_gemm_bound.py [--tasks language ...] [--batch-sizes 1 8]
        [--dtypes float32 bfloat16] [--rounds 3]

bench_forward reports achieved GFLOP/s against a peak measured on one large GEMM (2048x1280 @ 1280x1280).
A model's own matmuls have other shapes (the language model's 26 latent layers multiply 256-row matrices,
its queries and keys are 256 wide), and a GEMM kernel reaches a different share of the peak at each. This
records every FLOP-carrying operation of ours' forward (the aten ops torch's FLOP counter has formulas for,
and SDPA's CPU flash kernel) with its shapes, strides and dtypes, then times each distinct one alone on fresh
random tensors, as many times as the forward calls it. The sum is what the forward would take if everything
else (layer norms, GELU, softmax outside SDPA, residual adds, casts, copies, Python) were free; the model's
FLOPs over that sum, against the peak, bound the share of the peak the forward can reach with these kernels.

Random weights at released size (`build_preset`), eval mode, no grad; `bfloat16` is the model in bfloat16
(`.to(torch.bfloat16)`). Each round times the forward and every replayed op, each just after a peak GEMM,
and expresses each time as a share of that GEMM's rate; medians over the rounds. Replayed alone, an op finds
its operands in cache more often than inside the forward, so the bound is, if anything, optimistic. The share
of the forward's time the replayed ops take is the figure that holds on a noisy machine; shares of the peak
move with whatever else loads the memory system (a 2048-row GEMM suffers more than a 256-row one).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map
from torch.utils.flop_counter import FlopCounterMode, flop_registry

sys.path.insert(0, str(Path(__file__).parent))
import bench_forward  # noqa: E402

from perceiver_torch import build_preset  # noqa: E402

FLOP_OPS = {*flop_registry, *bench_forward.UNCOUNTED}  # overload packets
TASKS = [t for t in bench_forward.PRESETS if t != "flow_sintel"]
MIN_REPLAY_SECONDS = 0.02  # each distinct op is repeated until one timing takes at least this long


class Spec:
    """A tensor argument by its metadata alone: replayed as fresh random values of the same layout."""

    def __init__(self, t: torch.Tensor):
        self.shape, self.stride, self.dtype = tuple(t.shape), tuple(t.stride()), t.dtype

    def key(self) -> tuple:
        return self.shape, self.stride, self.dtype

    def make(self) -> torch.Tensor:
        # Filled as a flat buffer, then viewed: an expanded argument (a zero stride) overlaps itself.
        size = 1 + sum((n - 1) * s for n, s in zip(self.shape, self.stride, strict=True)) if all(self.shape) else 0
        flat = torch.empty(size, dtype=self.dtype)
        flat = flat.fill_(True) if self.dtype == torch.bool else flat.normal_()
        return flat.as_strided(self.shape, self.stride)


class Recorder(TorchDispatchMode):
    """Counts the FLOP-carrying aten ops a forward runs, by op and argument layout."""

    def __init__(self):
        super().__init__()
        self.calls: Counter = Counter()
        self.args: dict = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.overloadpacket in FLOP_OPS:
            spec = tree_map(lambda a: Spec(a) if isinstance(a, torch.Tensor) else a, (args, kwargs))
            key = (func, repr(tree_map(lambda a: a.key() if isinstance(a, Spec) else a, spec)))
            self.calls[key] += 1
            self.args.setdefault(key, spec)
        return func(*args, **kwargs)


def replay_calls(recorder: Recorder) -> list[tuple]:
    """Per distinct op: (name, calls per forward, FLOPs per call, a no-arg callable running it `repeats` times,
    repeats)."""
    out = []
    for key, count in recorder.calls.items():
        func, (args, kwargs) = key[0], recorder.args[key]
        real = tree_map(lambda a: a.make() if isinstance(a, Spec) else a, (args, kwargs))
        with FlopCounterMode(display=False, custom_mapping=bench_forward.UNCOUNTED) as counter:
            func(*real[0], **real[1])
        start = time.perf_counter()
        func(*real[0], **real[1])
        repeats = max(1, round(MIN_REPLAY_SECONDS / max(time.perf_counter() - start, 1e-6)))

        def run(func=func, real=real, repeats=repeats):
            for _ in range(repeats):
                func(*real[0], **real[1])
        out.append((str(func.overloadpacket), count, counter.get_total_flops(), run, repeats))
    return out


def bench(task: str, batch: int, dtype: torch.dtype, rounds: int) -> None:
    device = torch.device("cpu")
    model = build_preset(bench_forward.PRESETS[task]).eval().requires_grad_(False).to(dtype)
    inputs = bench_forward.inputs_for(task, model, batch, device)
    if dtype != torch.float32:
        inputs = bench_forward._bf16(inputs)
    forward = bench_forward.our_call(task, model, inputs, tile_batch_size=1)
    recorder = Recorder()
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=bench_forward.UNCOUNTED) as counter:
        with recorder:
            forward()
    flops = counter.get_total_flops()
    replays = replay_calls(recorder)
    replay_flops = sum(count * f for _, count, f, _, _ in replays)
    if abs(replay_flops - flops) > 1e-9 * flops:  # every counted FLOP must be in a replayed op, or the bound lies
        raise SystemExit(f"{task}: the replayed ops carry {replay_flops:.4g} of the forward's {flops:.4g} FLOPs")
    gemm_name = f"gemm {str(dtype).removeprefix('torch.')}"
    gemm = bench_forward.gemm_calls(device)[gemm_name]

    def against_peak(run, per_forward: float) -> tuple[float, float]:
        """(seconds per forward, the same as FLOPs the peak GEMM does in that time, timed just before it)."""
        peak = bench_forward.GEMM_FLOPS / bench_forward.timed(gemm, device)
        seconds = bench_forward.timed(run, device) * per_forward
        return seconds, seconds * peak

    # Each timing is paired with a peak GEMM timed just before it: on a shared machine the GEMM rate drifts
    # (seen here: 132-197 GFLOP/s fp32 from one run to the next), and shares of a peak taken minutes away
    # would drift with it.
    forward_runs, replay_runs = [], [[] for _ in replays]
    for _ in range(rounds):
        forward_runs.append(against_peak(forward, 1))
        for runs, (_, count, _, run, repeats) in zip(replay_runs, replays, strict=True):
            runs.append(against_peak(run, count / repeats))
    fwd, fwd_at_peak = (statistics.median(r[i] for r in forward_runs) for i in (0, 1))
    per_op = [(statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)) for runs in replay_runs]
    replayed, replayed_at_peak = sum(t for t, _ in per_op), sum(p for _, p in per_op)
    peak = statistics.median(p / t for t, p in forward_runs)
    print(f"\n### {task}, batch {batch}, {str(dtype).removeprefix('torch.')}: {flops / 1e9:.1f} GFLOP per forward "
          f"(all of it in the {sum(c for _, c, _, _, _ in replays)} replayed calls), "
          f"GEMM peak {peak / 1e9:.0f} GFLOP/s (median)\n")
    print("| op | calls | GFLOP per forward | time per forward, alone | % of the peak GEMM's rate |")
    print("|---|---:|---:|---:|---:|")
    by_op: dict[str, list[float]] = {}
    for (name, count, f, _, _), (t, at_peak) in zip(replays, per_op, strict=True):
        entry = by_op.setdefault(name, [0, 0.0, 0.0, 0.0])
        entry[0] += count
        entry[1] += count * f
        entry[2] += t
        entry[3] += at_peak
    for name, (count, f, t, at_peak) in sorted(by_op.items(), key=lambda kv: -kv[1][2]):
        print(f"| {name} | {count} | {f / 1e9:.1f} | {t * 1e3:.1f} ms | {100 * f / at_peak:.0f}% |")
    print(f"\nforward {fwd * 1e3:.0f} ms, {100 * flops / fwd_at_peak:.0f}% of the peak; the replayed ops alone "
          f"{replayed * 1e3:.0f} ms ({100 * replayed_at_peak / fwd_at_peak:.0f}% of the forward, each time taken "
          f"against the peak beside it), everything else "
          f"{max(fwd - replayed, 0) * 1e3:.0f} ms. Bound with everything else free: "
          f"{100 * flops / replayed_at_peak:.0f}% of the peak.")
    spread = max(max(r[0] for r in runs) / min(r[0] for r in runs) for runs in [forward_runs, *replay_runs])
    peak_spread = max(p / t for t, p in forward_runs) / min(p / t for t, p in forward_runs)
    print(f"rounds: {rounds}; largest max/min spread over the rounds: {spread:.2f}x for a timing, "
          f"{peak_spread:.2f}x for the peak GEMM")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=["language"])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--dtypes", nargs="+", choices=("float32", "bfloat16"), default=["float32", "bfloat16"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch.set_num_threads")
    args = parser.parse_args()
    if args.rounds < 1 or min(args.batch_sizes) < 1:
        parser.error("--rounds and --batch-sizes must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"# bench_gemm_bound: {bench_forward.describe_machine(torch.device('cpu'))}; rounds {args.rounds}")
    for task in args.tasks:
        for batch in args.batch_sizes:
            for dtype in args.dtypes:
                bench(task, batch, getattr(torch, dtype), args.rounds)


if __name__ == "__main__":
    main()
