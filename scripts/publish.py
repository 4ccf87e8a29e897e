"""Publish produced zoo artifacts (+ model card) and record the pinned revision in the manifest.

    python scripts/publish.py NAME                   # tiny entries: the bundled stand-in; others: the Hub
    python scripts/publish.py NAME --mirror DIR      # a local mirror <DIR>/<repo_id>/<revision>/
    python scripts/publish.py NAME --hub             # the Hugging Face Hub (write token in HF_TOKEN)

The library code is perceiver_torch/zoo/publish.py.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from perceiver_torch.zoo.hub import ZooError  # noqa: E402
from perceiver_torch.zoo.manifest import BUNDLED_STANDIN, get_entry  # noqa: E402
from perceiver_torch.zoo.publish import publish_to_hub, publish_to_mirror  # noqa: E402
from perceiver_torch.zoo.regenerate import WORK_DIR  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="+")
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--mirror", help="local mirror directory (default for tiny entries: the bundled stand-in)")
    target.add_argument("--hub", action="store_true", help="upload to the Hugging Face Hub")
    parser.add_argument("--work-dir", default=str(WORK_DIR))
    args = parser.parse_args(argv)
    status = 0
    for name in args.names:
        try:
            entry = get_entry(name)
            mirror = args.mirror or os.environ.get("PERCEIVER_ZOO_MIRROR")
            if not args.hub and (mirror or entry["kind"] == "tiny"):
                publish_to_mirror(name, mirror or BUNDLED_STANDIN, Path(args.work_dir))
            else:
                publish_to_hub(name, Path(args.work_dir))
        except (ZooError, KeyError, OSError) as exc:
            print(f"[{name}] FAILED: {exc}", file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    raise SystemExit(main())
