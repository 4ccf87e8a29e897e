"""`perceiver-zoo-admin`: the maintainer's side of the zoo (regenerate, publish, serve a Hub stand-in).

    perceiver-zoo-admin regenerate NAME [--source PATH] [--force]   # fetch, check, convert, verify, card
    perceiver-zoo-admin regenerate --all                            # every entry, going on past failures (exit 1)
    perceiver-zoo-admin regenerate NAME --from-transformers         # from its pinned deepmind/* repo instead
    HF_TOKEN=... perceiver-zoo-admin publish NAME [--endpoint URL]  # upload and pin the revision (or --token T)
    perceiver-zoo-admin publish NAME --stand-in DIR                 # into an existing stand-in tree, on 127.0.0.1
    perceiver-zoo-admin serve-standin --root DIR                    # serve a tree as a Hub stand-in (Ctrl-C stops)

`--manifest FILE` (or PERCEIVER_ZOO_MANIFEST) picks the manifest to read and rewrite; the default
is the packaged zoo_manifest.yaml (in a source checkout, the repository's file). A second
regeneration with an unchanged source, converter version (or one recorded as having reproduced the published
artifact byte for byte) and artifact is a no-op.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from pathlib import Path

from perceiver_torch.version import add_version_flag
from perceiver_torch.zoo import ManifestError, ZooError, entries
from perceiver_torch.zoo.token import TokenSafeParser, add_token_option

from ..cli_support import show_logs
from . import standin
from .publish import publish
from .regenerate import WORK_DIR, regenerate


def _regenerate(args) -> int:
    names = list(entries(args.manifest)) if args.all else args.names
    if not names:
        print("perceiver-zoo-admin: error: name an entry or pass --all", file=sys.stderr)
        return 2
    if args.source and len(names) != 1:
        print("perceiver-zoo-admin: error: --source applies to exactly one entry", file=sys.stderr)
        return 2
    failed = []
    for name in names:
        try:
            regenerate(name, source_path=args.source, force=args.force, work_dir=Path(args.work_dir),
                       manifest=args.manifest, from_transformers_repo=args.from_transformers)
        except (ZooError, ManifestError, KeyError, ValueError, OSError) as exc:
            print(f"[{name}] FAILED: {exc.args[0] if isinstance(exc, KeyError) else exc}", file=sys.stderr)
            failed.append(name)
    if failed:
        print(f"perceiver-zoo-admin: error: failed: {failed}", file=sys.stderr)
    return 1 if failed else 0


def _publish(args) -> int:
    # A mistyped tree would be made, published into and pinned in the manifest at a revision no real tree has.
    problem = standin.tree_problem(Path(args.stand_in)) if args.stand_in else None
    if problem:
        hint = "; to start a new stand-in tree, make an empty directory" if not Path(args.stand_in).exists() else ""
        print(f"perceiver-zoo-admin: error: --stand-in {problem}{hint}; nothing was published", file=sys.stderr)
        return 1
    status = 0
    for name in args.names:
        try:
            if args.stand_in:
                token = args.token or os.environ.get("HF_TOKEN") or secrets.token_hex(16)
                with standin.serve(args.stand_in, token=token) as hub:
                    publish(name, endpoint=hub.endpoint, published_to="stand-in", token=token,
                            work_dir=Path(args.work_dir), manifest=args.manifest)
            else:
                publish(name, endpoint=args.endpoint, token=args.token, work_dir=Path(args.work_dir),
                        manifest=args.manifest)
        except (ZooError, ManifestError, KeyError, OSError) as exc:
            print(f"[{name}] FAILED: {exc.args[0] if isinstance(exc, KeyError) else exc}", file=sys.stderr)
            status = 1
    return status


def main(argv: list[str] | None = None) -> int:
    parser = TokenSafeParser(prog="perceiver-zoo-admin", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_version_flag(parser)
    parser.add_argument("--manifest", help="manifest to read and rewrite (default: PERCEIVER_ZOO_MANIFEST, else the "
                                           "packaged one)")
    sub = parser.add_subparsers(dest="command", required=True)
    regen = sub.add_parser("regenerate", help="produce an entry's artifact from its upstream file")
    regen.add_argument("names", nargs="*", help="zoo entry names")
    regen.add_argument("--all", action="store_true", help="every entry in the manifest")
    regen.add_argument("--source", help="local copy of the upstream file (one entry only)")
    regen.add_argument("--force", action="store_true", help="regenerate even if up to date")
    regen.add_argument("--from-transformers", action="store_true",
                       help="convert from the entry's pinned source.transformers repo instead of the Haiku file")
    regen.add_argument("--work-dir", default=str(WORK_DIR), help="where artifacts and cards are written")
    pub = sub.add_parser("publish", help="upload produced artifacts and pin their revisions in the manifest")
    pub.add_argument("names", nargs="+")
    target = pub.add_mutually_exclusive_group()
    target.add_argument("--endpoint", help="Hub-compatible endpoint (default: $HF_ENDPOINT or huggingface.co)")
    target.add_argument("--stand-in", dest="stand_in",
                        help="publish into this stand-in tree (an existing directory), served on 127.0.0.1")
    pub.add_argument("--work-dir", default=str(WORK_DIR), help="where `regenerate` wrote the artifacts")
    add_token_option(pub, "the upload (a write token; with --stand-in, the one the stand-in is started with)")
    serve = sub.add_parser("serve-standin", help="serve a repository tree as a Hub stand-in on 127.0.0.1")
    standin.add_arguments(serve)
    args = parser.parse_args(argv)
    show_logs("%(message)s", sys.stdout)
    if args.command == "regenerate":
        return _regenerate(args)
    if args.command == "publish":
        return _publish(args)
    return standin.serve_from_args(args)


if __name__ == "__main__":
    sys.exit(main())
