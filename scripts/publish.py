"""Publish produced zoo artifacts (+ model card) to their Hub repos and pin the returned revision in the manifest.

    HF_TOKEN=... python scripts/publish.py NAME [NAME ...]       # the Hugging Face Hub (or $HF_ENDPOINT)
    python scripts/publish.py NAME --endpoint URL                 # another Hub-compatible server
    python scripts/publish.py NAME --stand-in [DIR]               # the local stand-in tree (default: the bundled
                                                                  # parity_tests/fixtures/zoo_hub), served on 127.0.0.1

Tiny entries go to the bundled stand-in unless told otherwise. The library code is perceiver_torch/zoo/publish.py.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from perceiver_torch.zoo.hub import ZooError  # noqa: E402
from perceiver_torch.zoo.manifest import BUNDLED_STANDIN, get_entry  # noqa: E402
from perceiver_torch.zoo.publish import publish  # noqa: E402
from perceiver_torch.zoo.regenerate import WORK_DIR  # noqa: E402
from perceiver_torch.zoo.standin import serve  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="+")
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--endpoint", help="Hub-compatible endpoint (default: $HF_ENDPOINT or huggingface.co)")
    target.add_argument("--stand-in", nargs="?", const=str(BUNDLED_STANDIN), dest="stand_in",
                        help="publish into a stand-in repository tree served on 127.0.0.1")
    parser.add_argument("--work-dir", default=str(WORK_DIR), help="where scripts/regenerate.py wrote the artifacts")
    args = parser.parse_args(argv)
    status = 0
    for name in args.names:
        try:
            stand_in = args.stand_in or (str(BUNDLED_STANDIN) if get_entry(name)["kind"] == "tiny"
                                         and not args.endpoint else None)
            if stand_in:
                token = os.environ.get("HF_TOKEN") or secrets.token_hex(16)
                with serve(stand_in, token=token) as hub:
                    label = "stand-in" if Path(stand_in).resolve() == BUNDLED_STANDIN.resolve() else "hub"
                    publish(name, endpoint=hub.endpoint, published_to=label, token=token,
                            work_dir=Path(args.work_dir))
            else:
                publish(name, endpoint=args.endpoint, work_dir=Path(args.work_dir))
        except (ZooError, KeyError, OSError) as exc:
            print(f"[{name}] FAILED: {exc}", file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    raise SystemExit(main())
