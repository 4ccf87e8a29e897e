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
path, mode, source = sys.argv[1], sys.argv[2], sys.argv[3]
import io
data = open(path, "rb").read() if source == "memory" else None  # read before the clock: no disk I/O timed
if mode == "hardened":
    import types
    from pathlib import Path
    package = types.ModuleType("converters")
    package.__path__ = [str(Path({repo!r}) / "converters")]
    sys.modules["converters"] = package
    from converters.checkpoint_reader import load_haiku_checkpoint
    import numpy
    from converters.checkpoint_reader import loads_haiku_checkpoint
    start, cpu = time.perf_counter(), time.process_time()
    tree = load_haiku_checkpoint(path) if data is None else loads_haiku_checkpoint(data, path)
    n = sum(a.nbytes for a in tree.flat().values())
else:
    import numpy
    class Plain(pickle.Unpickler):
        def find_class(self, module, name):
            return dict if name == "FlatMapping" else super().find_class(module, name)
    start, cpu = time.perf_counter(), time.process_time()
    with open(path, "rb") if data is None else io.BytesIO(data) as f:
        tree = Plain(f).load()
    n = sum(a.nbytes for leaves in tree.values() for a in leaves.values())
elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
print(elapsed, cpu, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, n)
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


def child(path: Path, mode: str, source: str) -> tuple[float, float, int]:
    out = subprocess.run([sys.executable, "-c", _CHILD.format(repo=str(REPO)), str(path), mode, source],
                         capture_output=True, text=True, check=True)
    elapsed, cpu, peak, _ = out.stdout.split()
    return float(elapsed), float(cpu), int(peak)


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
    for source in ("file", "memory"):
        what = "read from the file" if source == "file" else "file bytes already in memory (no disk I/O timed)"
        print(f"released-size language file ({path.stat().st_size / 1e6:.0f} MB), {what}, one child per read:")
        results = {"hardened": [], "plain": []}
        for r in range(rounds):
            for mode in ("hardened", "plain") if r % 2 == 0 else ("plain", "hardened"):
                elapsed, cpu, peak = child(path, mode, source)
                results[mode].append((elapsed, cpu, peak))
                print(f"  round {r + 1} {mode:8s} wall {elapsed:6.2f} s  cpu {cpu:6.2f} s  peak RSS "
                      f"{peak / 2**20:6.0f} MiB")
        for i, what in ((0, "wall"), (1, "cpu")):
            med = {k: statistics.median(x[i] for x in v) for k, v in results.items()}
            low = {k: min(x[i] for x in v) for k, v in results.items()}
            print(f"  {what}: median hardened {med['hardened']:.2f} s, plain {med['plain']:.2f} s, ratio "
                  f"{med['hardened'] / med['plain']:.2f}; best hardened {low['hardened']:.2f} s, plain "
                  f"{low['plain']:.2f} s, ratio {low['hardened'] / low['plain']:.2f}")
        peak = {k: max(x[2] for x in v) / 2**20 for k, v in results.items()}
        print(f"  peak RSS: hardened {peak['hardened']:.0f} MiB, plain {peak['plain']:.0f} MiB "
              f"(file {path.stat().st_size / 2**20:.0f} MiB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
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
