"""Released-size language forward (batch 1, 2048 bytes) against the GEMM peak, optionally before/after a change.

    python benchmarks/bench_language_speed.py                          # this checkout
    python benchmarks/bench_language_speed.py --against /work/main     # this checkout vs another, interleaved

Each checkout runs in its own worker process with the model built once
(random weights); the rounds interleave the workers, the precisions (float32,
bfloat16 cast, bfloat16 autocast) and a GEMM-peak probe (a 2048x1280 by
1280x1280 matmul in float32 and bfloat16, measured in the same process at the
same moment), so load from other processes hits all alike. Each timing is
taken as wall time and as the process's CPU time (both threads; less
sensitive to other processes taking the cores, which on a shared machine
inflate wall time many times over). Prints per-setting medians, the median
of per-round ratios (this / other), the model's GFLOP (torch.utils.flop_counter)
and the achieved fraction of the GEMM peak. Weights are random: speed only.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
PRESET = "language_perceiver_io_bytes"
SETTINGS = ("float32", "bfloat16", "autocast")
PEAK_SHAPE = (2048, 1280, 1280)


def _worker(checkout: str) -> None:
    """Build the model from `checkout`, then answer one timing per line read from stdin."""
    sys.path.insert(0, checkout)
    import perceiver_torch
    from perceiver_torch.registry import build_preset

    if not Path(perceiver_torch.__file__).resolve().is_relative_to(Path(checkout).resolve()):
        raise SystemExit(f"worker imported perceiver_torch from {perceiver_torch.__file__}, not {checkout}")
    torch.manual_seed(0)
    models = {"float32": build_preset(PRESET).eval()}
    models["bfloat16"] = build_preset(PRESET).eval().to(torch.bfloat16)
    models["bfloat16"].load_state_dict(models["float32"].state_dict())
    ids = torch.randint(6, 262, (1, 2048))
    m, k, n = PEAK_SHAPE
    a32, b32 = torch.randn(m, k), torch.randn(k, n)
    operands = {"gemm_float32": (a32, b32), "gemm_bfloat16": (a32.bfloat16(), b32.bfloat16())}

    def run(setting: str) -> None:
        if setting.startswith("gemm_"):
            a, b = operands[setting]
            a @ b
            return
        if setting == "bfloat16_no_islands":  # what the float32 islands cost (this checkout only)
            from perceiver_torch.layers.precision import fp32_islands

            with fp32_islands(residual=False, layer_norm=False, final_projection=False):
                models["bfloat16"](ids)
            return
        model = models["float32" if setting == "autocast" else setting]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=setting == "autocast"):
            model(ids)

    with torch.no_grad():
        for setting in (*SETTINGS, *operands):
            run(setting)  # warm-up
        extra = []
        if Path(checkout, "perceiver_torch", "layers", "precision.py").exists():
            run("bfloat16_no_islands")
            extra = ["bfloat16_no_islands"]
        print("ready", *extra, flush=True)
        for line in sys.stdin:
            setting, repeats = line.split()
            start, cpu = time.perf_counter(), time.process_time()
            for _ in range(int(repeats)):
                run(setting)
            print((time.perf_counter() - start) / int(repeats), (time.process_time() - cpu) / int(repeats), flush=True)


def model_gflop() -> float:
    """The forward's GFLOP by torch's FLOP counter.

    Counted with the head padding of layers.attention off: SDPA then runs its math path, whose matmuls the
    counter sees (it has no formula for the CPU flash kernel, and the padding's extra products are not
    the model's arithmetic).
    """
    from torch.utils.flop_counter import FlopCounterMode

    from perceiver_torch.layers import attention
    from perceiver_torch.registry import build_preset

    model = build_preset(PRESET).eval()
    ids = torch.randint(6, 262, (1, 2048))
    attention.PAD_HEAD_DIMS = False
    try:
        with FlopCounterMode(display=False) as counter:  # (its module tracker needs autograd on)
            model(ids)
    finally:
        attention.PAD_HEAD_DIMS = True
    return counter.get_total_flops() / 1e9


class Worker:
    def __init__(self, checkout: Path):
        env = dict(os.environ, PYTHONPATH=str(checkout))
        self.proc = subprocess.Popen([sys.executable, __file__, "--worker", str(checkout)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env)
        ready = self.proc.stdout.readline().split()
        if not ready or ready[0] != "ready":
            raise SystemExit(f"worker for {checkout} failed to start")
        self.extra = ready[1:]

    def time(self, setting: str, repeats: int) -> tuple[float, float]:
        """(wall seconds, CPU seconds) per run."""
        self.proc.stdin.write(f"{setting} {repeats}\n")
        self.proc.stdin.flush()
        wall, cpu = self.proc.stdout.readline().split()
        return float(wall), float(cpu)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--against", type=Path, help="another checkout to compare with (e.g. main's)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--json", type=Path, help="write the figures here")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return _worker(args.worker)
    gflop = model_gflop()
    workers = {"this": Worker(ROOT)}
    if args.against:
        workers["other"] = Worker(args.against)
    settings = (*SETTINGS, *workers["this"].extra)
    times: dict = {(w, s): [] for w in workers for s in (*settings, "gemm_float32", "gemm_bfloat16")}
    for r in range(args.rounds):
        for setting in settings:
            for name, worker in workers.items():
                if setting not in SETTINGS and setting not in worker.extra:
                    continue
                times[(name, setting)].append(worker.time(setting, 1))
                gemm = "gemm_float32" if setting == "float32" else "gemm_bfloat16"
                times[(name, gemm)].append(worker.time(gemm, 5))
        print(f"round {r + 1}/{args.rounds} done", flush=True)
    for worker in workers.values():
        worker.close()
    gemm_gflop = 2 * PEAK_SHAPE[0] * PEAK_SHAPE[1] * PEAK_SHAPE[2] / 1e9
    print(f"model: {gflop:.1f} GFLOP per forward")
    results = {"gflop": gflop, "rounds": args.rounds, "settings": {}}
    for setting in settings:
        gemm = "gemm_float32" if setting == "float32" else "gemm_bfloat16"
        row = {}
        for name in workers:
            if not times[(name, setting)]:
                continue
            row[name] = {}
            for clock, i in (("wall", 0), ("cpu", 1)):
                t = statistics.median(x[i] for x in times[(name, setting)])
                peak = gemm_gflop / statistics.median(x[i] for x in times[(name, gemm)])
                row[name][clock] = {"median_s": t, "gflops": gflop / t, "gemm_peak_gflops": peak,
                                    "fraction_of_peak": gflop / t / peak}
        for clock, i in (("wall", 0), ("cpu", 1)):
            this = row["this"][clock]
            line = (f"{setting:19s} {clock:4s} this {this['median_s'] * 1e3:8.1f} ms {this['gflops']:6.1f} GFLOP/s "
                    f"{this['fraction_of_peak']:4.0%} of the {this['gemm_peak_gflops']:.0f} GFLOP/s GEMM peak")
            if "other" in row:
                ratios = [a[i] / b[i] for a, b in zip(times[("this", setting)], times[("other", setting)], strict=True)]
                row[f"ratio_this_over_other_{clock}"] = statistics.median(ratios)
                other = row["other"][clock]
                line += (f" | other {other['median_s'] * 1e3:8.1f} ms ({other['fraction_of_peak']:.0%})"
                         f" | this/other {statistics.median(ratios):.3f}")
            print(line)
        results["settings"][setting] = row
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
