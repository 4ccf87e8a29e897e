"""The main job on bundled small data: convert, verify parity, run a model.

Uses the golden upstream fixtures shipped in parity_tests/fixtures/golden
(small configurations of the released architectures, produced by DeepMind's
Haiku code), so it runs offline on a fresh machine.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

import converters
import perceiver_torch as pt

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO / "parity_tests" / "fixtures" / "golden"
SENTENCE = "This is an incomplete sentence where some words are missing."


def run_language(out_dir: Path) -> float:
    family = GOLDEN / "language"
    path = converters.convert("language", family / "checkpoint.pickle", family / "config.json",
                              out_dir / "language.safetensors")
    print(f"[convert] {family / 'checkpoint.pickle'} -> {path}")
    model = pt.load_model(path)
    io = np.load(family / "io.npz")
    with torch.no_grad():
        logits = model(torch.from_numpy(io["input/inputs"]).long(), torch.from_numpy(io["input/input_mask"]))
    max_diff = float(np.abs(logits.numpy() - io["output/logits"]).max())
    print(f"[parity] language logits vs upstream Haiku: max |diff| = {max_diff:.3e} (tolerance 1e-4)")

    masked = SENTENCE[:51] + "[MASK]" * 9  # the colab's masking of bytes 51..59
    filled = model.fill_masked(masked)
    tok = model.tokenizer
    ids = tok.encode_with_masks(masked)
    with torch.no_grad():
        preds = model(torch.tensor([ids]), torch.ones(1, len(ids))).argmax(-1)[0, 51:60].tolist()
    print(f"[run] input : {SENTENCE[:51]}{'_' * 9}")
    print(f"[run] greedy ids at 51..59: {preds}")
    print(f"[run] filled: {filled!r}  (small fixture weights, not the released model)")
    return max_diff


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=str(REPO / "out"), help="where converted files go")
    args = parser.parse_args()
    out_dir = Path(args.out)
    worst = run_language(out_dir)
    ok = worst <= 1e-4
    print(f"[done] {'PASS' if ok else 'FAIL'}: worst max |diff| {worst:.3e}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
