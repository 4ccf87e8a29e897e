"""Time `autoencode` (encoder once, decoder per chunk) against rerunning the whole model per chunk.

The colab reconstructs a clip by calling the full model once per decoding
chunk; `PerceiverForMultimodalAutoencoding.autoencode` encodes once. Both give
the same outputs (checked here); only the time differs. Untrained weights.

    python benchmarks/bench_autoencode.py                 # a small clip (golden fixture config, 8x scale)
    python benchmarks/bench_autoencode.py --released      # the released 16x224x224 config (slow on CPU)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from perceiver_torch.registry import build_model, preset

ROOT = Path(__file__).resolve().parents[1]


def small_config() -> dict:
    config = json.loads((ROOT / "parity_tests/fixtures/golden/video_autoencoding/config.json").read_text())
    config.update(num_frames=4, image_size=32, audio_samples_per_frame=128, nchunks=16)
    return config


def rerun_per_chunk(model, images, audio, chunks):
    image_step, audio_step = model.num_image_points // chunks, model.num_audio_patches // chunks
    parts = [model(images, audio, {"image": torch.arange(i * image_step, (i + 1) * image_step, device=images.device),
                                   "audio": torch.arange(i * audio_step, (i + 1) * audio_step, device=images.device)})
             for i in range(chunks)]
    return torch.cat([p["image"] for p in parts], 1), torch.cat([p["audio"] for p in parts], 1)


def timed(fn, repeats, sync):
    best = float("inf")
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        result = fn()
        sync()
        best = min(best, time.perf_counter() - start)
    return best, result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--released", action="store_true", help="use the released configuration")
    parser.add_argument("--chunks", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    config = preset("video_autoencoding")["config"] if args.released else small_config()
    torch.manual_seed(0)
    model = build_model("video_autoencoding", config).to(args.device).eval()
    chunks = args.chunks or config["nchunks"]
    f, s = config["num_frames"], config["image_size"]
    images = torch.rand(1, f, 3, s, s, device=args.device)
    audio = torch.rand(1, f * config["audio_samples_per_frame"], 1, device=args.device) * 2 - 1
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    with torch.no_grad():
        t_once, once = timed(lambda: model.autoencode(images, audio, chunks), args.repeats, sync)
        t_rerun, (image, _) = timed(lambda: rerun_per_chunk(model, images, audio, chunks), args.repeats, sync)
    rerun_image = image.reshape(1, f, s, s, 3).permute(0, 1, 4, 2, 3)
    err = (once["image"] - rerun_image).abs().max().item()
    print(f"clip {f}x{s}x{s}, {f * config['audio_samples_per_frame']} audio samples, {chunks} chunks, "
          f"device {args.device}")
    print(f"autoencode (encoder once):  {t_once * 1e3:9.1f} ms")
    print(f"rerun model per chunk:      {t_rerun * 1e3:9.1f} ms   ({t_rerun / t_once:.2f}x)")
    print(f"max |difference| of reconstructions: {err:.2e}")


if __name__ == "__main__":
    main()
