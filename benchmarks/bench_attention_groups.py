"""The released language forward with its attention logits taken a few sequences at a time, or in one call.

    PYTHONPATH=$PWD python benchmarks/bench_attention_groups.py [--batch 32] [--modes fp32 bf16 autocast]
        [--rounds 3] [--threads N]

The language model is the released task whose attentions materialise their logits on the CPU (q/k heads 32
wide, v heads 160 and 96: `attention._explicit_attention` in float32, `_narrow_key_attention` in bfloat16); the
other tasks' heads are of equal widths and go to SDPA's flash kernel. Per mode (fp32 weights; bf16 weights;
fp32 weights under bf16 autocast), random weights and inputs at the released size, the forward runs with
`attention.LOGITS_GROUP_BYTES` as shipped and with it disabled (one batched call), in interleaved rounds.
It prints both medians, the median of per-round ratios (groups / one call) and whether the outputs are
bit-identical, as they should be.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import bench_forward  # noqa: E402

from perceiver_torch import build_preset  # noqa: E402
from perceiver_torch.layers import attention  # noqa: E402

MODES = ("fp32", "bf16", "autocast")
ONE_CALL = 1 << 62  # a budget no batch reaches: the single batched call


def language_forward(mode: str, batch: int):
    torch.manual_seed(0)
    model = build_preset(bench_forward.PRESETS["language"]).eval().requires_grad_(False)
    inputs = bench_forward.inputs_for("language", model, batch, torch.device("cpu"))
    if mode == "bf16":
        model, inputs = model.to(torch.bfloat16), bench_forward._bf16(inputs)
    forward = bench_forward.our_call("language", model, inputs, tile_batch_size=1)

    def call():
        context = torch.autocast("cpu", dtype=torch.bfloat16) if mode == "autocast" else contextlib.nullcontext()
        with torch.no_grad(), context:
            return forward()
    return call


def timed(call, group_bytes: int) -> tuple[float, torch.Tensor]:
    shipped = attention.LOGITS_GROUP_BYTES
    attention.LOGITS_GROUP_BYTES = group_bytes
    try:
        start = time.perf_counter()
        out = call()
        return time.perf_counter() - start, out
    finally:
        attention.LOGITS_GROUP_BYTES = shipped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch.set_num_threads")
    args = parser.parse_args()
    if args.rounds < 1 or args.batch < 1:
        parser.error("--rounds and --batch must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    shipped = attention.LOGITS_GROUP_BYTES
    print(f"# bench_attention_groups: {bench_forward.describe_machine(torch.device('cpu'))}; batch {args.batch}, "
          f"rounds {args.rounds}, LOGITS_GROUP_BYTES {shipped >> 20} MiB\n")
    print("| mode | one call | in groups | groups / one call (per round) | outputs bit-identical |")
    print("|---|---:|---:|---|---|")
    for mode in args.modes:
        call = language_forward(mode, args.batch)
        _, one = timed(call, ONE_CALL)  # also the warm-up
        _, grouped = timed(call, shipped)
        times = {"one": [], "groups": []}
        for _ in range(args.rounds):
            times["one"].append(timed(call, ONE_CALL)[0])
            times["groups"].append(timed(call, shipped)[0])
        ratios = [g / o for o, g in zip(times["one"], times["groups"], strict=True)]
        print(f"| {mode} | {statistics.median(times['one']):.2f} s | {statistics.median(times['groups']):.2f} s | "
              f"{statistics.median(ratios):.3f} ({', '.join(f'{r:.3f}' for r in ratios)}) | "
              f"{torch.equal(one, grouped)} |")


if __name__ == "__main__":
    main()
