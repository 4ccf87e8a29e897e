"""`perceiver-zoo list | info NAME | pull MODEL | export MODEL -o FILE | predict MODEL INPUT... |
push FILE [OWNER/]NAME`: the model zoo from the command line.

`predict` runs a model (a zoo name, an hf-hub: repo or a converted .safetensors file) on your inputs: texts
with [MASK] markers (language; `-` reads stdin, one text a line), image files (imagenet: top-k labels), or two
frames (optical_flow: the flow to --output, .npy or .png).

`pull` downloads a zoo model (verified against the manifest) or a user's hf-hub: repo (checked, not verified)
into the Hub cache without loading it.

`push` shares a converted file as a Hub repo of your own (`hf-hub:OWNER/NAME`, not verified by the zoo).

Maintainers produce and publish entries with `perceiver-zoo-admin` (the producer side, `converters.zoo`).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from typing import cast

import torch
import yaml

from .. import class_names
from ..cli_exit import stdout_gone
from ..export import (
    MAX_TRACE_BATCH,
    check_chunks,
    check_not_source,
    check_output,
    export_model,
    max_errors,
    onnx_runner,
)
from ..message_text import printable
from ..safetensors_io import read_header
from ..serialization import MODEL_DTYPES, atomic_write, build_on_meta, checked_metadata, loading_device
from ..version import add_version_flag
from .download import SHA256
from .hub import ZooError, fetch, how_to_get, location
from .listing import list_models
from .manifest import entries, get_entry, manifest_path
from .model_arg import Target, load_target, resolve_model, source_kind
from .predict import (
    FLOW_LAYOUT,
    FLOW_SUFFIXES,
    check_options,
    json_text,
    lines,
    read_inputs,
    resolve,
    run,
    unmasked_note,
)
from .pretrained import zoo_entry
from .push import CARD, upload
from .schema import is_repo_id, is_repo_name
from .token import TokenSafeParser, add_token_option
from .user_hub import HUB_PREFIX, checked_revision, hub_checkpoint, parse_hub_name

SHOWN_NAMES = 20  # of a checkpoint's class names, by `info`: a file may hold thousands


def _list(manifest, patterns: list[str], exclude: list[str]) -> int:
    models = entries(manifest)
    names = set(list_models(patterns, exclude_filters=exclude, manifest=manifest))
    if not names:  # as grep: nothing printed and exit 1 when nothing matches
        print(f"perceiver-zoo: no zoo model matches {' or '.join(map(repr, patterns))}"
              f"{' less ' + ' or '.join(map(repr, exclude)) if exclude else ''}", file=sys.stderr)
        return 1
    models = {name: entry for name, entry in models.items() if name in names}  # in the manifest's order
    width = max(map(len, models))
    print(f"{'name':<{width}}  {'task':<18} {'kind':<8} status")
    for name, e in models.items():
        print(f"{name:<{width}}  {e['task']:<18} {e['kind']:<8} {e['status']}")
    return 0


def _info(args) -> int:
    name, manifest = args.name, args.manifest
    if source_kind(name) != "zoo":
        return _checkpoint_info(resolve_model(name, manifest, command="info", revision=args.revision,
                                              endpoint=args.endpoint, token=args.token))
    entry = zoo_entry(name, manifest)  # an unknown name's error says how a file of that name is written
    print(yaml.safe_dump({name: entry}, sort_keys=False, width=110), end="")
    if entry["status"] == "published":
        kind, where = location(entry)
        print(f"# would be pulled from {kind}: {where}")
    else:
        print(f"# not published yet ({entry['status']}): nothing to pull; {how_to_get(name, entry)}")
    print(f"# manifest: {manifest_path(manifest)}")
    return 0


def _shown_names(names: tuple[str, ...]) -> list[str]:
    """Class names as `info` shows them: the first SHOWN_NAMES of a long list and how many more."""
    return list(names) if len(names) <= SHOWN_NAMES else \
        [*names[:SHOWN_NAMES], f"... and {len(names) - SHOWN_NAMES} more (load_model(...).class_names)"]


def _checkpoint_info(target: Target) -> int:
    """What a Hub repo's or a file's header says (nothing of its body is downloaded or read), as YAML."""
    meta = cast(dict, target.metadata)
    model = build_on_meta(target.task, target.config)  # sizes only, no memory
    shown = {k: v for k, v in sorted(meta.items()) if k not in ("format", "task", "config")}
    names = class_names.stored(target.model, meta, target.task, target.config)  # checked with the header already
    if names is not None:
        shown[class_names.METADATA_KEY] = _shown_names(names)
    found = {"task": target.task, "class": type(model).__name__,
             "parameters": sum(p.numel() for p in model.parameters()),
             **({"revision": target.revision, "commit": target.commit} if target.kind == "hub" else {}),
             "metadata": shown,
             "config": target.config}
    print(yaml.safe_dump({target.model: found}, sort_keys=False, width=110), end="")
    if target.kind == "hub":
        print(f"# not verified by the zoo; load it with perceiver_torch.create_model({target.model!r}, "
              f"revision={target.commit!r})")
    return 0


def _pull(args) -> int:
    name, manifest = args.name, args.manifest
    if source_kind(name) == "hub":
        return _pull_hub(name, args.revision, args.endpoint, args.token)
    path = fetch(name, endpoint=args.endpoint, mirror=args.mirror, manifest=manifest,  # with a progress bar
                 token=args.token)
    print(f"{name}: verified sha256 {get_entry(name, manifest)['artifact']['sha256']}\n{path}")
    return 0


def _pull_hub(name: str, revision: str | None, endpoint: str | None, token: str | None) -> int:
    """A user's Hub repo's model.safetensors into the Hub cache, as create_model downloads it (bounded, its header
    checked before the body, the body checked against its sha256), without loading it. A file the cache held
    already is checked as a load checks it: its header, and its bytes against the sha256 its blob is named by."""
    repo_id, revision = parse_hub_name(name, revision)
    name = f"{HUB_PREFIX}{repo_id}"  # hf_hub: or @REVISION as given: said as the other commands say it
    path = hub_checkpoint(repo_id, revision, endpoint=endpoint, token=token)
    commit = path.parent.name  # snapshots/<commit>/model.safetensors
    checked_metadata(f"{name}@{commit}/{path.name} (cached as {path})", read_header(path))
    blob = os.path.basename(os.path.realpath(path))  # the Hub's ETag of an LFS file: its sha256
    how = (f"sha256 {blob} (its bytes checked against it" if SHA256.match(blob) else
           "no sha256 to check it by (a cache without links names no blob by it")
    print(f"{name}: commit {commit}, {how}; not verified by the zoo)\n{path}")
    return 0


# What `export`'s check accepts. Float32/64: 1e-5, the export tests' bound (the programs run eager's kernels,
# measured 0-2e-7; onnxruntime 2.4e-6). Reduced precision, relative to the output's largest value: 2e-2, as
# test_export's bf16 language check (two kernels' bf16 rounding; measured 0.4-0.7%).
VERIFY_TOLERANCE = {True: 1e-5, False: 2e-2}


def _export_source(args) -> torch.nn.Module:
    """The model MODEL names, loaded once everything that can be refused before pulling it (the output location,
    --chunks against its config) has been."""
    output = check_output(args.output, args.format)
    if os.path.lexists(output) and not args.force:  # as predict's --output: a rerun does not replace a file unasked
        raise FileExistsError(f"{output} exists; pass --force to replace it")
    target = resolve_model(args.name, args.manifest, command="export", revision=args.revision, endpoint=args.endpoint,
                           token=args.token)
    if target.kind == "file":
        check_not_source(target.model, output)
    check_chunks(build_on_meta(target.task, target.config), args.chunks)  # sizes only, on the meta device
    return load_target(target, dtype=args.dtype, endpoint=args.endpoint, mirror=args.mirror, manifest=args.manifest,
                       token=args.token)


class ExportMismatch(ValueError):
    """The exported program does not match the eager model within VERIFY_TOLERANCE."""


def _export(args) -> int:
    """Export, and with --verify (the default) put the file in place only once it matches the eager model: a
    refused or interrupted export leaves nothing at --output (an earlier file there stays as it was)."""
    model = _export_source(args)
    _quiet_exporter_noise()

    def write(tmp: str) -> None:
        export_model(model, tmp, batch=args.batch, format=args.format, chunks=args.chunks)
        if args.verify:
            _verify(model, tmp, args)

    try:
        path = atomic_write(args.output, write)
    except ExportMismatch as exc:
        print(f"perceiver-zoo: error: {exc}", file=sys.stderr)
        return 1
    print(f"{args.name}: exported ({args.format}, {args.dtype}, dynamic batch) to {path}")
    return 0


def _quiet_exporter_noise() -> None:
    """Silence what torch's exporters say about themselves, not about the model: the ONNX registry's "torchvision
    is not installed" (one line per torchvision op) and a pytree deprecation torch triggers internally."""
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                            category=FutureWarning)


def _verify(model: torch.nn.Module, path: str, args) -> None:
    """Run the export at `path` against the eager model at batch sizes 1 and 3; print the errors, and raise
    ExportMismatch (naming --output) above the tolerance."""
    run = _load_pt2(path) if args.format == "pt2" else onnx_runner(path)
    exact = args.dtype in ("float32", "float64")  # reduced precision: program and eager may differ in kernels
    errors = max_errors(model, run, chunks=args.chunks, relative=not exact)
    what = "max |exported - eager|" if exact else "max |exported - eager| / max |eager|"
    print(f"{what}: " + ", ".join(f"{e:.2e} at batch {b}" for b, e in errors.items()))
    tolerance = VERIFY_TOLERANCE[exact]
    if not max(errors.values()) <= tolerance:  # NaN fails too
        raise ExportMismatch(f"the export does not match the eager model within {tolerance:.0e}; nothing was "
                             f"written to {args.output}")


def _predict(args) -> int:
    """Everything that can be refused (device, MODEL, options, inputs) before the model is pulled or loaded."""
    device = loading_device(args.device)
    target = resolve(args.model, args.manifest, revision=args.revision, endpoint=args.endpoint, token=args.token)
    check_options(target, args.k, args.mask, args.output, args.force, args.inputs)
    inputs = read_inputs(target, args.inputs, sys.stdin, args.mask)
    model = load_target(target, device=device, dtype=args.dtype, endpoint=args.endpoint, mirror=args.mirror,
                        manifest=args.manifest, token=args.token)
    result = run(target, model, inputs, k=args.k, mask=args.mask, output=args.output)
    print(json_text(result) if args.json else "\n".join(lines(result)))
    note = unmasked_note(result, args.mask)
    if note is not None:
        print(f"perceiver-zoo: note: {note}", file=sys.stderr)
    return 0


def _push(args) -> int:
    repo_id, commit, wrote_card = upload(args.file, args.repo, token=args.token, endpoint=args.endpoint,
                                         revision=args.revision, private=True if args.private else None,
                                         commit_message=args.message, overwrite_card=args.overwrite_card)
    name = f"{HUB_PREFIX}{repo_id}"  # a bare NAME: in the token owner's namespace
    card = f"wrote {CARD}" if wrote_card else f"kept the repo's {CARD} (--overwrite-card replaces it)"
    print(f"{args.file}: pushed to {name} as commit {commit}; {card}\n"
          f"load it with: perceiver_torch.create_model({name!r}, revision={commit!r})\n"
          f"or: perceiver-zoo export {name} --revision {commit} -o model.pt2")
    return 0


def _check_predict_args(parser: argparse.ArgumentParser, args) -> None:
    """What `predict` refuses from its arguments alone (usage errors, exit 2)."""
    if args.k is not None and args.k < 1:
        parser.error(f"-k must be >= 1 (labels per image); got {args.k}")
    if args.mask == "":
        parser.error("--mask must be a non-empty marker (each occurrence is one byte to fill)")
    if args.output is not None and not args.output.lower().endswith(FLOW_SUFFIXES):
        parser.error(f"--output must end in .npy (the flow, {FLOW_LAYOUT}) or .png (its colour coding); "
                     f"got {args.output}")
    if args.force and args.output is None:
        parser.error("--force replaces an existing --output; no --output was given")
    if args.inputs.count("-") > 1:
        parser.error("stdin (-) can be read once; give - at most once")
    _check_source_args(parser, args.model, args)


def _check_push_args(parser: argparse.ArgumentParser, args) -> None:
    """What `push` refuses from its arguments alone (usage errors, exit 2), before any file is read."""
    if not is_repo_id(args.repo) and not is_repo_name(args.repo):
        parser.error(f"[OWNER/]NAME must be a Hub repo id, or a name for a repo of the token's owner (letters, digits, "
                     f"'.', '_' or '-', each side of one '/'); got {args.repo!r}")
    if args.revision is not None:
        try:
            checked_revision(args.revision)
        except ValueError as exc:
            parser.error(f"--{exc}")
    if args.endpoint == "":
        parser.error("--endpoint must not be empty")


def _check_pull_args(parser: argparse.ArgumentParser, args) -> None:
    """`pull` takes a zoo name or an hf-hub: repo (a file is already here), and the source options that apply."""
    if source_kind(args.name) == "file":
        hint = f"; a Hub repo is named {HUB_PREFIX}{args.name}" if is_repo_id(args.name) else ""
        parser.error(f"MODEL must be a zoo name (perceiver-zoo list) or {HUB_PREFIX}owner/name; got "
                     f"'{printable(args.name)}'{hint}")
    _check_source_args(parser, args.name, args)


def _check_source_args(parser: argparse.ArgumentParser, model: str, args, *, zoo_endpoint: bool = True) -> None:
    """Each source option applies to some kinds of MODEL: given for another, it is refused, not ignored
    (`zoo_endpoint`: whether the command fetches a zoo model, which --endpoint then applies to)."""
    kind = source_kind(model)
    given = (("--endpoint", args.endpoint), ("--mirror", getattr(args, "mirror", None)), ("--revision", args.revision),
             ("--token", args.token))
    for flag, value in given:
        if value == "":  # would silently fall back to the default
            parser.error(f"{flag} must not be empty")
    fetched = ("zoo", "hub") if zoo_endpoint else ("hub",)  # what the command downloads or asks a server about
    applies = {"--endpoint": fetched, "--mirror": ("zoo",), "--revision": ("hub",), "--token": fetched}
    what = {"zoo": "zoo models", "hub": "hf-hub: repos"}
    for flag, value in given:
        if value is not None and kind not in applies[flag]:
            parser.error(f"{flag} applies to {' and '.join(what[k] for k in applies[flag])}; {model!r} is "
                         f"{ {'zoo': 'a zoo name', 'hub': 'a Hub repo', 'file': 'a file'}[kind] }")


def _load_pt2(path):
    # Through a file object: given a path, torch.export.load warns unless the name ends in .pt2.
    with open(path, "rb") as f:
        return torch.export.load(f).module()


def _run(args) -> int:
    if args.command == "list":
        return _list(args.manifest, args.patterns, args.exclude)
    if args.command == "info":
        return _info(args)
    if args.command == "export":
        return _export(args)
    if args.command == "predict":
        return _predict(args)
    if args.command == "push":
        return _push(args)
    return _pull(args)


def main(argv: list[str] | None = None) -> int:
    parser = TokenSafeParser(prog="perceiver-zoo", description=__doc__)
    add_version_flag(parser)
    parser.add_argument("--manifest",
                        help="a zoo manifest file (default: PERCEIVER_ZOO_MANIFEST, else the packaged one)")
    sub = parser.add_subparsers(dest="command", required=True)
    listing = sub.add_parser("list", help="list the zoo's models (those matching a PATTERN, if given)")
    listing.add_argument("patterns", nargs="*", metavar="PATTERN",
                         help="shell-style wildcards, as list_models takes them ('tiny-*'; quote them from the shell)")
    listing.add_argument("--exclude", action="append", default=[], metavar="PATTERN",
                         help="leave out the models matching PATTERN (repeatable)")
    info = sub.add_parser("info", help="show a zoo entry of the manifest, or what a Hub repo's or a file's header "
                          "says (task, parameters, provenance, config; nothing else is downloaded or read)")
    info.add_argument("name", metavar="MODEL", help="a zoo name, hf-hub:owner/name[@REVISION], or a converted "
                      ".safetensors file or save_pretrained directory")
    info.add_argument("--revision", help="hf-hub: repos: a branch, tag or commit (default: main, or MODEL's @REVISION)")
    info.add_argument("--endpoint", help="hf-hub: repos: a Hub-compatible endpoint (default: HF_ENDPOINT)")
    add_token_option(info, "hf-hub: repos' requests (a private or gated repo needs one with access)")
    pull = sub.add_parser("pull", help="download and verify a model into the Hub cache: a zoo name (the manifest's "
                          "sha256; from a mirror: verified in place) or hf-hub:owner/name (its header checked before "
                          "its body, the body against its sha256; a cached file's header and bytes checked again; "
                          "not verified by the zoo)")
    pull.add_argument("name", metavar="MODEL", help="a zoo name or a user's Hub repo hf-hub:owner/name[@REVISION]")
    pull.add_argument("--revision", help="hf-hub: repos: a branch, tag or commit (default: main, or MODEL's @REVISION)")
    exp = sub.add_parser("export", help="export a model (torch.export .pt2 or ONNX) with a dynamic batch dimension")
    exp.add_argument("name", metavar="MODEL", help="a zoo name (pulled and verified as `pull` does), a user's Hub "
                     "repo hf-hub:owner/name[@REVISION] (not verified), or a converted .safetensors file or "
                     "save_pretrained directory")
    exp.add_argument("--revision", help="hf-hub: repos: a branch, tag or commit (default: main, or MODEL's @REVISION)")
    exp.add_argument("-o", "--output", required=True, help="output file")
    exp.add_argument("--force", action="store_true", help="replace an existing --output")
    exp.add_argument("--format", choices=("pt2", "onnx"),
                     help="default: onnx for an output ending in .onnx, else pt2")
    exp.add_argument("--batch", type=int, default=2,
                     help=f"tracing batch size (2 to {MAX_TRACE_BATCH}; the result takes any)")
    exp.add_argument("--chunks", type=int, help="video autoencoder: decoding chunks per clip (default: nchunks)")
    exp.add_argument("--dtype", choices=tuple(MODEL_DTYPES), default="float32",
                     help="the model's dtype, as model.to(dtype) (pt2 only; ONNX is exported in float32)")
    exp.add_argument("--no-verify", dest="verify", action="store_false",
                     help="skip running the export against the eager model at batch sizes 1 and 3")
    pred = sub.add_parser("predict", help="run a model on your inputs: texts (language), image files (imagenet) "
                          "or two frames (optical_flow)")
    pred.add_argument("model", metavar="MODEL", help="a zoo name (pulled and verified as `pull` does), a user's Hub "
                      "repo hf-hub:owner/name[@REVISION] (not verified), or a converted .safetensors file or "
                      "save_pretrained directory")
    pred.add_argument("inputs", metavar="INPUT", nargs="+",
                      help="language: texts (- reads stdin, one text a line); imagenet: image files; optical_flow: "
                      "two frames (image files, at least the training size); put -- before a text that starts "
                      "with -")
    pred.add_argument("-k", type=int, help="imagenet: labels per image (default 5, or the class count if fewer)")
    pred.add_argument("--mask", help='language: the mask marker, each one byte to fill (default "[MASK]")')
    pred.add_argument("-o", "--output", help=f"optical_flow: where to write the flow: .npy ({FLOW_LAYOUT}) or "
                      ".png (colour coding: hue = direction, saturation = magnitude)")
    pred.add_argument("--force", action="store_true", help="replace an existing --output")
    pred.add_argument("--json", action="store_true", help="print the results as JSON")
    pred.add_argument("--device", default="cpu", help="e.g. cuda, cuda:1 (default: cpu)")
    pred.add_argument("--dtype", choices=tuple(MODEL_DTYPES),
                      help="the model's dtype, as model.to(dtype) (default: the file's, float32)")
    pred.add_argument("--revision", help="hf-hub: repos: a branch, tag or commit (default: main, or MODEL's @REVISION)")
    push = sub.add_parser("push", help="upload a converted .safetensors file to your Hub repo (checked as loading "
                          "checks it; with a model card if the repo has none), loadable as hf-hub:OWNER/NAME")
    push.add_argument("file", metavar="FILE",
                      help="a converted .safetensors file (save_model's or perceiver-convert's) or a "
                      "save_pretrained directory")
    push.add_argument("repo", metavar="[OWNER/]NAME", help="the Hub repo (created if needed); a NAME alone is in "
                      "the namespace of the token's owner, as huggingface_hub resolves it")
    push.add_argument("--revision", help="a branch (created from main if new; default: main)")
    push.add_argument("--private", action="store_true", help="create the repo private (default: the owner's "
                      "default visibility, public unless an organisation says otherwise; an existing repo keeps its "
                      "visibility)")
    push.add_argument("--message", help="the commit message")
    push.add_argument("--overwrite-card", action="store_true", help=f"replace the repo's {CARD} with a generated "
                      "model card (default: a card already there is kept; one is written where there is none)")
    push.add_argument("--endpoint", help="Hub-compatible endpoint (default: HF_ENDPOINT, else the Hugging Face Hub)")
    add_token_option(push, "the upload (a write token)")
    for command in (pull, exp, pred):
        command.add_argument("--endpoint", help="Hub-compatible endpoint (default: for zoo names "
                             "PERCEIVER_ZOO_ENDPOINT, else HF_ENDPOINT; for hf-hub: repos HF_ENDPOINT)")
        command.add_argument("--mirror", help="local mirror directory <repo_id>/<revision>/<file>")
        add_token_option(command, "the download (a private or gated repo, or an endpoint that asks for one)")
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
    if args.command == "export":
        _check_source_args(parser, args.name, args)
    if args.command == "pull":
        _check_pull_args(pull, args)
    if args.command == "info":
        _check_source_args(info, args.name, args, zoo_endpoint=False)
    if args.command == "predict":
        _check_predict_args(pred, args)  # its own usage and prog, as argparse's errors for its arguments
    if args.command == "push":
        _check_push_args(push, args)
    try:
        status = _run(args)
        sys.stdout.flush()  # a reader that has gone (| head) is found here, not at the interpreter's exit
        return status
    except BrokenPipeError:  # stdout's reader closed it early: stop quietly, as Unix tools do
        return stdout_gone()
    except (ZooError, ValueError, ImportError, OSError) as exc:  # ManifestError, UnknownModelError are ValueErrors
        print(f"perceiver-zoo: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # outputs are written atomically (export's once verified), so none is left
        # half-written; but predict writes its flow before the summary line: "nothing was written" could be untrue
        print("perceiver-zoo: interrupted; no file was left half-written.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
