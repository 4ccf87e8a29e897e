"""Regenerate zoo entries from DeepMind's Haiku files: fetch, check, convert, verify parity, write card + manifest.

    python scripts/regenerate.py NAME [--source PATH] [--force]
    python scripts/regenerate.py --all            # every entry whose source is reachable

A second run with an unchanged source, converter version and artifact is a no-op.
The library code is perceiver_torch/zoo/regenerate.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from perceiver_torch.zoo.hub import ZooError  # noqa: E402
from perceiver_torch.zoo.manifest import entries  # noqa: E402
from perceiver_torch.zoo.regenerate import WORK_DIR, regenerate  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help="zoo entry names")
    parser.add_argument("--all", action="store_true", help="every entry in the manifest")
    parser.add_argument("--source", help="local copy of the upstream file (one entry only)")
    parser.add_argument("--force", action="store_true", help="regenerate even if up to date")
    parser.add_argument("--work-dir", default=str(WORK_DIR), help="where artifacts and cards are written")
    args = parser.parse_args(argv)
    names = list(entries()) if args.all else args.names
    if not names:
        parser.error("name an entry or pass --all")
    if args.source and len(names) != 1:
        parser.error("--source applies to exactly one entry")
    failed = []
    for name in names:
        try:
            regenerate(name, source_path=args.source, force=args.force, work_dir=Path(args.work_dir))
        except (ZooError, KeyError, ValueError, OSError) as exc:
            print(f"[{name}] FAILED: {exc}", file=sys.stderr)
            failed.append(name)
    if failed:
        print(f"failed: {failed}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
