"""Conversion and loading at released size: wall time and peak memory against issue 13's targets.

Makes (once, cached under out/bench_convert_load/, which git ignores) a random checkpoint of a
released model in the release files' layout: Haiku FlatMapping objects of float32 numpy arrays,
protocol-4 pickled, with every shape from parity_tests/fixtures/golden/released_shapes.json. Then,
in interleaved rounds, each in a fresh child process:

- unpickle: `converters.load_haiku_checkpoint` (the project's safe reader) alone;
- convert:  `converters.convert` of that file to safetensors;
- load:     `perceiver_torch.load_model` of the converted file;
- save:     `perceiver_torch.save_model` of that model loaded in bfloat16 (loaded before the peak is reset),
            which widens each tensor to float32 only as it is written.

Each child reports the operation's wall time and its peak RSS (VmHWM, reset just before the
operation; it counts the touched pages of memory-mapped files too) less the RSS it had before
starting it (Python, torch and the project imported). ru_maxrss is not used: Linux carries it
over from the parent through fork and exec. Before each operation the page cache's dirty pages
are written out (`os.sync`, untimed), and before each conversion its previous output is removed.
Prints medians over the rounds and the ratios the targets name: conversion time / unpickling
time <= 1.5, conversion peak / pickle size <= 1.3, load peak / safetensors size <= 1.2.

    python benchmarks/bench_convert_load.py [--rounds 3] [--preset language_perceiver_io_bytes]
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import statistics
import subprocess
import sys
import types
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHAPES = REPO / "parity_tests" / "fixtures" / "golden" / "released_shapes.json"
CACHE = REPO / "out" / "bench_convert_load"
TARGETS = {"convert_time": 1.5, "convert_peak": 1.3, "load_peak": 1.2}

# The child: imports first (their memory is the baseline), then one timed operation.
CHILD = """
import json, sys, time
import converters, perceiver_torch

def status(key):  # kB, from the kernel's accounting of this process's own address space
    with open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith(key)).split()[1])

op, args = sys.argv[1], json.loads(sys.argv[2])
if op == "save":  # the model to save is there before the measurement starts
    model = perceiver_torch.load_model(args["output"], dtype="bfloat16")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak (VmHWM) to the current RSS: imports are not counted
before = status("VmRSS:")
start = time.perf_counter()
if op == "unpickle":
    result = converters.load_haiku_checkpoint(args["pickle"])
elif op == "convert":
    result = converters.convert(args["task"], args["pickle"], args["config"], args["output"])
elif op == "load":
    result = perceiver_torch.load_model(args["output"])
else:
    result = perceiver_torch.save_model(model, args["saved"])
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "peak_kb": status("VmHWM:"), "baseline_kb": before}))
"""

def _flat_mapping_class():
    """A stand-in pickled under Haiku's name, as the release files are (no Haiku needed to write it)."""
    # pickle checks that the global it records imports back to the same object: stand-in modules
    # for the whole package path (this process never imports the real Haiku).
    for name in ("haiku", "haiku._src", "haiku._src.data_structures"):
        sys.modules.setdefault(name, types.ModuleType(name))
    module = sys.modules["haiku._src.data_structures"]

    def FlatMapping(mapping):  # noqa: N802  (Haiku's name, which the pickle records)
        return dict(mapping)

    FlatMapping.__module__, FlatMapping.__qualname__ = module.__name__, "FlatMapping"
    module.FlatMapping = FlatMapping

    class Wrapped(dict):
        def __reduce__(self):
            return FlatMapping, (dict(self),)

    return Wrapped


def make_checkpoint(name: str, path: Path) -> None:
    """Random float32 weights with the released shapes, pickled in the release layout."""
    entry = json.loads(SHAPES.read_text())[name]
    wrapped = _flat_mapping_class()
    rng = np.random.default_rng(0)

    def tree(shapes: dict) -> object:
        return wrapped({module: wrapped({leaf: (0.02 * rng.standard_normal(shape, dtype=np.float32))
                                         for leaf, shape in sorted(leaves.items())})
                        for module, leaves in sorted(shapes.items())})

    params = tree(entry["params"])
    data = wrapped({"params": params, "state": tree(entry["state"])}) if entry.get("state") else params
    tmp = path.with_suffix(".partial")
    with open(tmp, "wb") as f:
        pickle.dump(data, f, protocol=4)
    tmp.replace(path)


def run_child(op: str, args: dict) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, op, json.dumps(args)], cwd=REPO, capture_output=True,
                         text=True, check=False)
    if out.returncode:
        raise SystemExit(f"{op} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--preset", default="language_perceiver_io_bytes")
    parser.add_argument("--out-dir", type=Path, default=CACHE,
                        help="where the converted file is written (e.g. a tmpfs such as /dev/shm, to take the "
                             "disk's write-back speed out of the conversion's time)")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from perceiver_torch.registry import preset

    entry = preset(args.preset)
    CACHE.mkdir(parents=True, exist_ok=True)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    source, output = CACHE / f"{args.preset}.pickle", args.out_dir / f"{args.preset}.safetensors"
    if not source.exists():
        print(f"making {source} ...", flush=True)
        make_checkpoint(args.preset, source)
    config = CACHE / f"{args.preset}.config.json"
    config.write_text(json.dumps(entry["config"]))
    saved = args.out_dir / f"{args.preset}.saved.safetensors"
    child_args = {"task": entry["task"], "pickle": str(source), "config": str(config), "output": str(output),
                  "saved": str(saved)}

    results: dict[str, list[dict]] = {"unpickle": [], "convert": [], "load": [], "save": []}
    for r in range(args.rounds):
        for op in results:  # interleaved: each round runs every operation once, in turn
            if op in ("convert", "save"):
                # A first write: freeing an old file's blocks is not its work.
                (output if op == "convert" else saved).unlink(missing_ok=True)
            # Each operation starts with nothing dirty in the page cache: else the kernel's write-back of the
            # previous round's 767 MiB lands in whichever operation comes next (measured 0.8-2.3 s for the same
            # conversion on this machine's disk).
            os.sync()
            results[op].append(run_child(op, child_args))
            last = results[op][-1]
            extra = (last["peak_kb"] - last["baseline_kb"]) / 1024
            print(f"round {r + 1} {op:8s} {last['seconds']:7.2f} s  peak +{extra:7.0f} MiB"
                  f"  (total {last['peak_kb'] / 1024:.0f} MiB)", flush=True)

    pickle_mb, st_mb = source.stat().st_size / 2**20, output.stat().st_size / 2**20

    def median(op: str, key: str) -> float:
        if key == "extra_mb":
            return statistics.median((x["peak_kb"] - x["baseline_kb"]) / 1024 for x in results[op])
        return statistics.median(x[key] for x in results[op])

    ratio_time = statistics.median(c["seconds"] / u["seconds"] for c, u in zip(results["convert"], results["unpickle"],
                                                                               strict=True))
    print(f"\n{args.preset}: pickle {pickle_mb:.0f} MiB, safetensors {st_mb:.0f} MiB written to {args.out_dir}, "
          f"{args.rounds} rounds (medians)")
    print("| operation | time | peak RSS above baseline | / file size | target |")
    print("|---|---|---|---|---|")
    print(f"| unpickle (load_haiku_checkpoint) | {median('unpickle', 'seconds'):.2f} s | "
          f"{median('unpickle', 'extra_mb'):.0f} MiB | {median('unpickle', 'extra_mb') / pickle_mb:.2f} | |")
    print(f"| convert | {median('convert', 'seconds'):.2f} s ({ratio_time:.2f}x unpickle; target "
          f"<= {TARGETS['convert_time']}) | {median('convert', 'extra_mb'):.0f} MiB | "
          f"{median('convert', 'extra_mb') / pickle_mb:.2f} | <= {TARGETS['convert_peak']} |")
    print(f"| load_model | {median('load', 'seconds'):.2f} s | {median('load', 'extra_mb'):.0f} MiB | "
          f"{median('load', 'extra_mb') / st_mb:.2f} | <= {TARGETS['load_peak']} |")
    print(f"| save_model (a bfloat16 model, written as float32) | {median('save', 'seconds'):.2f} s | "
          f"{median('save', 'extra_mb'):.0f} MiB | {median('save', 'extra_mb') / st_mb:.2f} | |")
    saved.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
