"""Time and peak memory of the hardened checkpoint reader against plain pickle, on the same files.

    PYTHONPATH=$PWD python benchmarks/bench_checkpoint_reader.py [--rounds 3] [--released PATH] [--golden-repeats 20]

Two workloads:
- the golden pickles (about 0.3-0.6 MB each), read in-process many times: median per read;
- a released-size file: the language model's 201,108,230 float32 parameters (804 MB) in the release
  layout (Haiku FlatMappings, numpy 1 module names), written once from released_shapes.json with
  deterministic, value-free data (speed only). Each read runs in a fresh child process, the two
  readers alternating round by round, and reports the child's wall time for the read and its peak RSS.

Plain pickle is `pickle.Unpickler` (the C implementation) with `find_class` mapping FlatMapping to
dict, i.e. the unhardened reader this project used before. Ratios are hardened / plain.
"""

from __future__ import annotations

import argparse
import json
import pickle
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from parity_tests import hostile_pickles as hp  # noqa: E402  (opcode writers)

GOLDEN = REPO / "parity_tests" / "fixtures" / "golden"

_CHILD = r"""
import pickle, resource, sys, time
sys.path.insert(0, {repo!r})
path, mode = sys.argv[1], sys.argv[2]
if mode == "hardened":
    import types
    from pathlib import Path
    package = types.ModuleType("converters")
    package.__path__ = [str(Path({repo!r}) / "converters")]
    sys.modules["converters"] = package
    from converters.checkpoint_reader import load_haiku_checkpoint
    import numpy
    start = time.perf_counter()
    n = sum(a.nbytes for a in load_haiku_checkpoint(path).flat().values())
else:
    import numpy
    class Plain(pickle.Unpickler):
        def find_class(self, module, name):
            return dict if name == "FlatMapping" else super().find_class(module, name)
    start = time.perf_counter()
    with open(path, "rb") as f:
        tree = Plain(f).load()
    n = sum(a.nbytes for leaves in tree.values() for a in leaves.values())
elapsed = time.perf_counter() - start
print(elapsed, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, n)
"""


class _Plain(pickle.Unpickler):
    def find_class(self, module, name):
        return dict if name == "FlatMapping" else super().find_class(module, name)


def write_released_language(path: Path) -> int:
    """The language release layout at full size, streamed to `path`; returns the parameter count."""
    import numpy as np

    entry = json.loads((GOLDEN / "released_shapes.json").read_text())["language_perceiver_io_bytes"]
    flatmapping = hp.stack_global("haiku._src.data_structures", "FlatMapping")
    count = 0
    with open(path, "wb") as f:
        f.write(hp.proto(4) + pickle.EMPTY_DICT + pickle.MARK)
        for module, leaves in entry["params"].items():
            f.write(hp.text(module) + flatmapping + pickle.MARK + pickle.EMPTY_DICT + pickle.MARK)
            for name, shape in leaves.items():
                size = int(np.prod(shape))
                count += size
                data = (np.arange(size, dtype=np.uint32) % 1000).astype("<f4") * np.float32(1e-3)
                header = (pickle.BINBYTES8 + struct.pack("<Q", data.nbytes)) if data.nbytes >= 2**32 else \
                    (pickle.BINBYTES + struct.pack("<I", data.nbytes))
                f.write(hp.text(name) + hp.array(tuple(shape), hp.dtype("f4"), b"")[:-2])  # up to the data
                f.write(header)
                f.write(data.tobytes())
                f.write(pickle.TUPLE + pickle.BUILD)
            f.write(pickle.SETITEMS + pickle.TUPLE + pickle.REDUCE)
        f.write(pickle.SETITEMS + pickle.STOP)
    assert count == entry["num_params"], (count, entry["num_params"])
    return count


def child(path: Path, mode: str) -> tuple[float, int]:
    out = subprocess.run([sys.executable, "-c", _CHILD.format(repo=str(REPO)), str(path), mode],
                         capture_output=True, text=True, check=True)
    elapsed, peak, _ = out.stdout.split()
    return float(elapsed), int(peak)


def golden(repeats: int) -> None:
    from converters.checkpoint_reader import load_haiku_checkpoint

    print(f"golden pickles, in-process, median of {repeats} reads (interleaved):")
    for path in sorted(GOLDEN.glob("*/checkpoint*.pickle")):
        times = {"hardened": [], "plain": []}
        for _ in range(repeats):
            start = time.perf_counter()
            load_haiku_checkpoint(path)
            times["hardened"].append(time.perf_counter() - start)
            start = time.perf_counter()
            with open(path, "rb") as f:
                _Plain(f).load()
            times["plain"].append(time.perf_counter() - start)
        hardened, plain = (statistics.median(times[k]) for k in ("hardened", "plain"))
        print(f"  {path.parent.name}/{path.name:24s} {path.stat().st_size / 1e3:6.0f} KB  hardened "
              f"{hardened * 1e3:6.2f} ms  plain {plain * 1e3:6.2f} ms  ratio {hardened / plain:5.2f}")


def released(path: Path, rounds: int) -> None:
    if not path.exists():
        start = time.perf_counter()
        n = write_released_language(path)
        print(f"wrote {path} ({path.stat().st_size:,} bytes, {n:,} parameters) in {time.perf_counter() - start:.1f} s")
    print(f"released-size language file ({path.stat().st_size / 1e6:.0f} MB), one child per read, {rounds} rounds:")
    results = {"hardened": [], "plain": []}
    for r in range(rounds):
        for mode in ("hardened", "plain") if r % 2 == 0 else ("plain", "hardened"):
            elapsed, peak = child(path, mode)
            results[mode].append((elapsed, peak))
            print(f"  round {r + 1} {mode:8s} {elapsed:6.2f} s  peak RSS {peak / 2**20:7.0f} MiB")
    med = {k: (statistics.median(t for t, _ in v), max(p for _, p in v)) for k, v in results.items()}
    print(f"  median: hardened {med['hardened'][0]:.2f} s, plain {med['plain'][0]:.2f} s, "
          f"ratio {med['hardened'][0] / med['plain'][0]:.2f}; peak RSS hardened {med['hardened'][1] / 2**20:.0f} MiB, "
          f"plain {med['plain'][1] / 2**20:.0f} MiB (file {path.stat().st_size / 2**20:.0f} MiB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--golden-repeats", type=int, default=20)
    parser.add_argument("--released", type=Path, default=Path("/tmp/perceiver_released_language.pickle"),
                        help="where the released-size file is written (kept for later runs)")
    parser.add_argument("--skip-released", action="store_true")
    args = parser.parse_args()
    golden(args.golden_repeats)
    if not args.skip_released:
        released(args.released, args.rounds)


if __name__ == "__main__":
    main()
