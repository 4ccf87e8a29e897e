"""Time `estimate_flow` at several tile batch sizes (tiles per model call) on a tiny flow config.

    PYTHONPATH=$PWD python benchmarks/bench_flow_tiling.py [--device cuda] [--frame 96 128] [--repeats 5]

Prints the median wall time per call for each `tile_batch_size`; 1 is the
upstream colab's one model call per tile. Weights are random: speed only.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from perceiver_torch import build_model
from perceiver_torch.flow_tiling import tile_origins

TINY = {
    "train_size": [24, 32], "num_bands": 8, "flow_scale_factor": 20, "rescale_factor": 100.0,
    "encoder": {"num_self_attends_per_block": 2, "num_blocks": 1, "z_index_dim": 64, "num_z_channels": 64,
                "num_cross_attend_heads": 1, "num_self_attend_heads": 4, "cross_attend_widening_factor": 1,
                "self_attend_widening_factor": 1, "dropout_prob": 0.0, "z_pos_enc_init_scale": 0.02,
                "cross_attention_shape_for_attn": "kv"},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--frame", type=int, nargs=2, default=[96, 128], metavar=("H", "W"))
    parser.add_argument("--min-overlap", type=int, default=6)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads on CPU")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = build_model("optical_flow", TINY).to(device).eval()
    image1, image2 = (torch.rand(1, 3, *args.frame, device=device) * 2 - 1 for _ in range(2))
    origins = tile_origins(args.frame, TINY["train_size"], args.min_overlap)
    print(f"device={device} threads={torch.get_num_threads()} frame={args.frame[0]}x{args.frame[1]} "
          f"train_size={TINY['train_size'][0]}x{TINY['train_size'][1]} min_overlap={args.min_overlap} "
          f"tiles={len(origins)} (distinct {len(set(origins))})")

    def run(tile_batch_size: int) -> torch.Tensor:
        return model.estimate_flow(image1, image2, min_overlap=args.min_overlap, tile_batch_size=tile_batch_size)

    reference = None
    for tile_batch_size in args.batch_sizes:
        flow = run(tile_batch_size)  # warm-up
        if reference is None:
            reference = flow
        times = []
        for _ in range(args.repeats):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            run(tile_batch_size)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        diff = (flow - reference).abs().max().item()
        print(f"tile_batch_size={tile_batch_size:3d}  median {statistics.median(times) * 1e3:8.1f} ms  "
              f"min {min(times) * 1e3:8.1f} ms  max |diff vs first| {diff:.1e}")


if __name__ == "__main__":
    main()
