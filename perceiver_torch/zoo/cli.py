"""`perceiver-zoo list | info NAME | pull NAME | export NAME -o FILE [--dtype D]`: the model zoo from the command line.

Maintainers produce and publish entries with `perceiver-zoo-admin` (the producer side, `converters.zoo`).
"""

from __future__ import annotations

import argparse
import sys

import torch
import yaml

from ..export import MAX_TRACE_BATCH, check_chunks, check_output, export_model, max_errors, onnx_runner
from ..serialization import MODEL_DTYPES, build_on_meta
from .hub import ZooError, create_model, entry_config, fetch, how_to_get, location
from .manifest import entries, get_entry, manifest_path
from .schema import ManifestError


def _list(manifest) -> int:
    models = entries(manifest)
    width = max(map(len, models))
    print(f"{'name':<{width}}  {'task':<18} {'kind':<8} status")
    for name, e in models.items():
        print(f"{name:<{width}}  {e['task']:<18} {e['kind']:<8} {e['status']}")
    return 0


def _info(name: str, manifest) -> int:
    entry = get_entry(name, manifest)
    print(yaml.safe_dump({name: entry}, sort_keys=False, width=110), end="")
    if entry["status"] == "published":
        kind, where = location(entry)
        print(f"# would be pulled from {kind}: {where}")
    else:
        print(f"# not published yet ({entry['status']}): nothing to pull; {how_to_get(name, entry)}")
    print(f"# manifest: {manifest_path(manifest)}")
    return 0


def _pull(name: str, endpoint: str | None, mirror: str | None, manifest) -> int:
    path = fetch(name, endpoint=endpoint, mirror=mirror, manifest=manifest)  # huggingface_hub shows a progress bar
    print(f"{name}: verified sha256 {get_entry(name, manifest)['artifact']['sha256']}\n{path}")
    return 0


# What `export`'s check accepts. Float32/64: 1e-5, the export tests' bound (the programs run eager's kernels,
# measured 0-2e-7; onnxruntime 2.4e-6). Reduced precision, relative to the output's largest value: 2e-2, as
# test_export's bf16 language check (two kernels' bf16 rounding; measured 0.4-0.7%).
VERIFY_TOLERANCE = {True: 1e-5, False: 2e-2}


def _check_export_args(args) -> None:
    """What `export` can refuse before pulling or tracing: the output location (and a .pt2/.onnx name that
    contradicts --format), and --chunks for this entry."""
    check_output(args.output, args.format)
    if args.chunks is not None:
        entry = get_entry(args.name, args.manifest)
        check_chunks(build_on_meta(entry["task"], entry_config(entry)), args.chunks)  # sizes only, no memory


def _export(args) -> int:
    _check_export_args(args)
    model = create_model(args.name, endpoint=args.endpoint, mirror=args.mirror, manifest=args.manifest,
                         dtype=args.dtype)
    path = export_model(model, args.output, batch=args.batch, format=args.format, chunks=args.chunks)
    print(f"{args.name}: exported ({args.format}, {args.dtype}, dynamic batch) to {path}")
    if args.verify:
        run = _load_pt2(path) if args.format == "pt2" else onnx_runner(path)
        exact = args.dtype in ("float32", "float64")  # reduced precision: program and eager may differ in kernels
        errors = max_errors(model, run, chunks=args.chunks, relative=not exact)
        what = "max |exported - eager|" if exact else "max |exported - eager| / max |eager|"
        print(f"{what}: " + ", ".join(f"{e:.2e} at batch {b}" for b, e in errors.items()))
        tolerance = VERIFY_TOLERANCE[exact]
        if not max(errors.values()) <= tolerance:  # NaN fails too
            print(f"perceiver-zoo: error: {path} does not match the eager model within {tolerance:.0e}",
                  file=sys.stderr)
            return 1
    return 0


def _load_pt2(path):
    # Through a file object: given a path, torch.export.load warns unless the name ends in .pt2.
    with open(path, "rb") as f:
        return torch.export.load(f).module()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="perceiver-zoo", description=__doc__)
    parser.add_argument("--manifest",
                        help="a zoo manifest file (default: PERCEIVER_ZOO_MANIFEST, else the packaged one)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list the zoo's models")
    info = sub.add_parser("info", help="show one entry of the manifest")
    info.add_argument("name")
    pull = sub.add_parser("pull", help="download and verify a model into the Hub cache "
                          "(from a mirror: verify it in place)")
    pull.add_argument("name")
    exp = sub.add_parser("export", help="export a model (torch.export .pt2 or ONNX) with a dynamic batch dimension")
    exp.add_argument("name")
    exp.add_argument("-o", "--output", required=True, help="output file")
    exp.add_argument("--format", choices=("pt2", "onnx"),
                     help="default: onnx for an output ending in .onnx, else pt2")
    exp.add_argument("--batch", type=int, default=2,
                     help=f"tracing batch size (2 to {MAX_TRACE_BATCH}; the result takes any)")
    exp.add_argument("--chunks", type=int, help="video autoencoder: decoding chunks per clip (default: nchunks)")
    exp.add_argument("--dtype", choices=tuple(MODEL_DTYPES), default="float32",
                     help="the model's dtype, as model.to(dtype) (pt2 only; ONNX is exported in float32)")
    exp.add_argument("--no-verify", dest="verify", action="store_false",
                     help="skip running the export against the eager model at batch sizes 1 and 3")
    for command in (pull, exp):
        command.add_argument("--endpoint", help="Hub-compatible endpoint (default: PERCEIVER_ZOO_ENDPOINT / "
                             "HF_ENDPOINT)")
        command.add_argument("--mirror", help="local mirror directory <repo_id>/<revision>/<file>")
    args = parser.parse_args(argv)
    if args.command == "export" and args.format is None:
        args.format = "onnx" if args.output.lower().endswith(".onnx") else "pt2"
    if args.command == "export" and not 2 <= args.batch <= MAX_TRACE_BATCH:  # refused before anything is pulled
        parser.error(f"--batch must be from 2 to {MAX_TRACE_BATCH} (torch.export specialises sizes 0 and 1; the "
                     f"exported program takes any batch); got {args.batch}")
    if args.command == "export" and args.format == "onnx" and args.dtype != "float32":
        # onnxruntime's CPU kernels refuse a bfloat16 convolution (measured): nothing it could verify.
        parser.error(f"--dtype {args.dtype} applies to pt2 exports; ONNX is exported in float32")
    if args.command == "export" and args.chunks is not None and args.chunks < 1:
        parser.error(f"--chunks must be >= 1 (decoding chunks per clip); got {args.chunks}")
    try:
        if args.command == "list":
            return _list(args.manifest)
        if args.command == "info":
            return _info(args.name, args.manifest)
        if args.command == "export":
            return _export(args)
        return _pull(args.name, args.endpoint, args.mirror, args.manifest)
    except (ZooError, ManifestError, KeyError, ValueError, ImportError, OSError) as exc:
        print(f"perceiver-zoo: error: {exc.args[0] if isinstance(exc, KeyError) else exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
