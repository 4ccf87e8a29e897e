"""Make the tiny test entries' sources from the JAX reference (fixed seeds) and add them to the test manifest.

    python scripts/make_tiny_sources.py [NAME ...]     # default: every tiny entry

Writes parity_tests/fixtures/zoo_tiny/NAME/{checkpoint.pickle, io.npz}; an entry whose source bytes
changed is reset to not-produced in parity_tests/fixtures/zoo_test_manifest.yaml, to be rebuilt with
`perceiver-zoo-admin --manifest parity_tests/fixtures/zoo_test_manifest.yaml regenerate NAME` and
`... publish NAME --stand-in parity_tests/fixtures/zoo_hub`. Needs the jax extra. The code is
parity_tests/tiny_sources.py (test machinery: the sources are test fixtures).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # parity_tests is not an installed package

from parity_tests.tiny_sources import TINY, make_source, register  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help=f"default: all of {list(TINY)}")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.names) - set(TINY))
    if unknown:
        parser.error(f"unknown tiny entries {unknown}; expected some of {list(TINY)}")
    for name in args.names or list(TINY):
        ckpt, io = make_source(name)
        changed = register(name)
        print(f"[{name}] {ckpt} ({ckpt.stat().st_size} bytes), {io}; manifest {'updated' if changed else 'unchanged'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
