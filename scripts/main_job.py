"""The main job on bundled small data: convert, verify parity, pull a verified model by name and run it.

1. convert a golden upstream checkpoint (parity_tests/fixtures/golden: a small configuration of the
   released architecture, made by DeepMind's Haiku code) with the strict converter;
2. verify it with the parity harness (the JAX reference against the converted model) and against
   the upstream outputs stored in the fixture; without JAX (the base install) only the latter, and
   it says so;
3. pull a small test model by name (from the test manifest, parity_tests/fixtures/zoo_test_manifest.yaml)
   through huggingface_hub from the Hub stand-in serving parity_tests/fixtures/zoo_hub on 127.0.0.1,
   into a Hub cache (sha256-verified before loading), and check it against its stored JAX-reference
   outputs.

Runs offline on a fresh machine with only `pip install -e .`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

import converters
import perceiver_torch as pt
from converters.rules import ConversionError
from converters.zoo.manifest_edit import entry_file
from converters.zoo.standin import serve
from converters.zoo.verify import harness_missing, harness_runs, stored_io_runs
from perceiver_torch.zoo import get_entry

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "parity_tests" / "fixtures"
GOLDEN = FIXTURES / "golden"
TEST_MANIFEST = FIXTURES / "zoo_test_manifest.yaml"
TEST_HUB = FIXTURES / "zoo_hub"
TINY = "tiny-language-perceiver"


def _report(runs: list[dict]) -> bool:
    for run in runs:
        figures = ", ".join(f"{k} max|diff| {v['max_abs']:.3e}" for k, v in run["outputs"].items())
        print(f"[parity]   {run['reference']}, {run['device']}: {figures} (atol=rtol={run['atol']:g}) -> "
              f"{'PASS' if run['passed'] else 'FAIL'}")
    return all(run["passed"] for run in runs)


def convert_and_verify(out_dir: Path) -> bool:
    family = GOLDEN / "language"
    path = converters.convert("language", family / "checkpoint.pickle", family / "config.json",
                              out_dir / "language.safetensors")
    print(f"[convert] {family / 'checkpoint.pickle'} -> {path}")
    model = pt.load_model(path)
    config = converters.load_config(family / "config.json")
    missing = harness_missing()
    runs = []
    if missing is None:
        print("[parity] JAX reference vs converted model (converters.parity.run_parity):")
        runs += harness_runs("language", config, model, family / "checkpoint.pickle", inputs=family / "io.npz")
    else:
        print(f"[parity] the JAX parity harness is not available here ({missing}); verifying against the "
              "golden fixture's upstream Haiku outputs instead")
    runs += stored_io_runs("language", model, family / "io.npz", "golden language io.npz")
    ok = _report(runs)
    masked = "This is an incomplete sentence where some words are" + "[MASK]" * 9
    print(f"[run] fill_masked({masked!r}) -> {model.fill_masked(masked)!r} (small fixture weights: gibberish)")
    return ok


def pull_and_run(cache: Path) -> bool:
    entry = get_entry(TINY, TEST_MANIFEST)
    with serve(TEST_HUB) as hub:
        print(f"[pull] {TINY} from the Hub stand-in at {hub.endpoint} (revision {entry['artifact']['revision']})")
        model = pt.create_model(TINY, endpoint=hub.endpoint, cache_dir=cache, manifest=TEST_MANIFEST)
    print(f"[pull] sha256 {entry['artifact']['sha256']} verified; {type(model).__name__} in eval mode: "
          f"{not model.training}")
    io_path = entry_file(entry["source"]["reference_io"], TEST_MANIFEST)
    return _report(stored_io_runs(entry["task"], model, io_path, f"{TINY} JAX-reference outputs"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(REPO / "out"), help="where converted files and the Hub cache go")
    args = parser.parse_args()
    out_dir = Path(args.out)
    torch.manual_seed(0)
    try:
        ok = convert_and_verify(out_dir)
        ok &= pull_and_run(out_dir / "hf-cache")
    except (ConversionError, OSError) as exc:  # an unusable --out: one line, no traceback
        print(f"main_job.py: error: {exc}", file=sys.stderr)
        return 2
    print(f"[done] {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
