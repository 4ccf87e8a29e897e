"""Regenerate a zoo entry: fetch the upstream Haiku file, check it, convert, verify, write card + manifest.

``regenerate(name)`` is what ``scripts/regenerate.py`` runs. Steps:

1. the source: ``--source PATH``, the entry's repo-relative ``source.path``, or a download of
   ``source.url`` (with a progress bar, resumable by re-running) -- its size and sha256 must equal
   the manifest's before anything else happens;
2. unless forced, stop if the manifest already records this source sha256, this converter version
   and an artifact whose file is present locally with the recorded sha256 (a second run is a no-op);
3. convert (``converters.convert``, strict) into ``<work>/<name>/<filename>``;
4. parity: the converted model against the JAX reference on CPU, and on CUDA when present
   (see ``parity_reference``), plus the entry's known real-weight checks (the released language
   model: the colab sentence's greedy predictions, upstream_release.md);
5. the model card ``README.md`` beside the artifact, and the manifest entry (atomic rewrite) with
   the measured figures and ``status: produced``.
"""

from __future__ import annotations

import datetime as _dt
import importlib
import importlib.metadata
import platform
import urllib.request
from pathlib import Path

import numpy as np
import torch

from ..serialization import atomic_write, load_model
from ..upstream_io import run_upstream_layout
from .hub import ZooError, entry_config, sha256_file
from .manifest import BUNDLED_STANDIN, REPO_ROOT, get_entry, resolve_repo_path, update_entry

WORK_DIR = REPO_ROOT / "out" / "zoo"
ARTIFACT_NAME = "model.safetensors"
ATOL = RTOL = 1e-4  # float32 parity tolerance, as the golden tests (parity_tests/conftest.py)

# upstream_release.md, "What the real checkpoints are known to do".
COLAB_SENTENCE = "This is an incomplete sentence where some words are missing."
COLAB_MASKED = range(51, 60)
COLAB_GREEDY_IDS = [38, 115, 111, 121, 121, 111, 116, 109, 52]


def _progress(total: int | None, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc)


def download_url(url: str, dest: Path) -> Path:
    """Download `url` to `dest` with a progress bar (atomic: a partial file never sits at `dest`)."""
    def write(tmp):
        with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as f:  # noqa: S310
            total = int(response.headers.get("Content-Length") or 0) or None
            with _progress(total, dest.name) as bar:
                for chunk in iter(lambda: response.read(1 << 20), b""):
                    f.write(chunk)
                    bar.update(len(chunk))
    return atomic_write(dest, write)


def canonicalize_safetensors(path: Path) -> None:
    """Rewrite a safetensors header with sorted keys, in place (atomically).

    The safetensors writer serialises the metadata map in hash order, so two conversions of one
    source differ in bytes; the zoo pins artifacts by sha256, so they must be byte-reproducible.
    Only the JSON header changes (re-padded to 8 bytes); the tensor data is copied unchanged.
    """
    import json
    import struct

    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    ordered = {k: header[k] for k in sorted(header)}
    if "__metadata__" in ordered:
        ordered["__metadata__"] = dict(sorted(ordered["__metadata__"].items()))
    text = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)
    data = struct.pack("<Q", len(text)) + text + raw[8 + n:]
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def check_source(path: Path, source: dict, name: str) -> None:
    size = path.stat().st_size
    if size != source["size"]:
        raise ZooError(f"{name}: source {path} has {size} bytes, the release has {source['size']}")
    digest = sha256_file(path)
    if digest != source["sha256"]:
        raise ZooError(f"{name}: source {path} has sha256 {digest}, the release has {source['sha256']}")


def fetch_source(name: str, entry: dict, source_path=None, work_dir: Path = WORK_DIR) -> Path:
    source = entry["source"]
    if source_path:
        path = Path(source_path)
    elif source.get("path"):
        path = resolve_repo_path(source["path"])
    else:
        path = work_dir / "_sources" / source["url"].rsplit("/", 1)[-1]
        if not (path.is_file() and path.stat().st_size == source["size"]):
            print(f"[fetch] {source['url']} -> {path}")
            download_url(source["url"], path)
    if not path.is_file():
        raise ZooError(f"{name}: source file {path} not found")
    check_source(path, source, name)
    return path


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("perceiver-torch", "torch", "numpy", "safetensors", "huggingface_hub", "jax", "dm-haiku"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    if "perceiver-torch" not in out:
        from .. import __version__

        out["perceiver-torch"] = __version__
    return out


def parity_reference(entry: dict, source_path: Path, config: dict) -> tuple[str, dict, dict]:
    """(description, inputs, expected outputs) of the JAX reference for this entry's weights.

    An entry with ``source.reference_io`` (an ``io.npz`` of ``input/...`` and ``output/...``
    computed by DeepMind's Haiku code from exactly these weights, e.g. the golden fixtures)
    uses it; otherwise the project's JAX reference (``perceiver_torch.reference``) is run on the
    source weights with inputs from ``make_inputs(task, config, seed=0)``.
    """
    io_path = entry["source"].get("reference_io")
    if io_path:
        with np.load(resolve_repo_path(io_path)) as data:
            inputs = {k.removeprefix("input/"): data[k] for k in data.files if k.startswith("input/")}
            expected = {k.removeprefix("output/"): data[k] for k in data.files if k.startswith("output/")}
        return f"upstream Haiku outputs stored in {io_path}", inputs, expected
    try:
        reference = importlib.import_module("perceiver_torch.reference")
    except ImportError as exc:
        raise ZooError(f"the JAX reference (perceiver_torch.reference) is not importable ({exc}); it is "
                       "needed to verify this entry. Install the [jax] extra.") from exc
    from converters import load_haiku_checkpoint

    ckpt = load_haiku_checkpoint(source_path)
    inputs = reference.make_inputs(entry["task"], config, 0)
    expected = reference.apply(entry["task"], config, ckpt.params, ckpt.state, inputs)
    expected = {k: np.asarray(v) for k, v in expected.items()}
    return "perceiver_torch.reference.apply on the source weights, make_inputs(seed=0)", inputs, expected


def _measure(task: str, model, inputs, expected, device: str) -> dict:
    model = model.to(device)
    outputs = run_upstream_layout(task, model, inputs, device=device)
    figures, passed = {}, True
    for key, want in expected.items():
        got = np.asarray(outputs[key], dtype=np.float64)
        want = np.asarray(want, dtype=np.float64)
        if got.shape != want.shape:
            raise ZooError(f"parity: output {key!r} has shape {got.shape}, the reference {want.shape}")
        err = np.abs(got - want)
        # max_rel: the worst absolute error relative to the output's scale (max |want|).
        figures[key] = {"max_abs": float(err.max()), "max_rel": float(err.max() / max(np.abs(want).max(), 1e-12))}
        passed &= bool(np.allclose(got, want, atol=ATOL, rtol=RTOL))
    return {"device": device, "dtype": "float32", "passed": passed, "tolerance": {"atol": ATOL, "rtol": RTOL},
            "outputs": figures}


def devices() -> list[str]:
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def colab_sentence_check(model) -> dict:
    """The language colab's masked sentence: greedy predictions at bytes 51..59 (upstream_release.md)."""
    tok = model.tokenizer
    ids = tok.encode(COLAB_SENTENCE)
    for i in COLAB_MASKED:
        ids[i] = tok.mask_token
    max_len = int(model.config["max_seq_len"]) if hasattr(model, "config") else 2048
    padded, mask = tok.pad(ids, max_len)
    with torch.no_grad():
        logits = model(torch.tensor([padded]), torch.tensor([mask]))
    got = logits[0, COLAB_MASKED.start:COLAB_MASKED.stop].argmax(-1).tolist()
    return {"name": "language colab sentence greedy ids at 51..59 (upstream_release.md)",
            "expected": COLAB_GREEDY_IDS, "got": got, "passed": got == COLAB_GREEDY_IDS}


def known_checks(entry: dict, model) -> list[dict]:
    if entry["kind"] == "released" and entry["task"] == "language":
        return [colab_sentence_check(model)]
    return []


def model_card(name: str, entry: dict, parity: dict, artifact: dict) -> str:
    src = entry["source"]
    rows = "\n".join(
        f"| {run['device']} | {run['dtype']} | {out} | {fig['max_abs']:.3e} | {fig['max_rel']:.3e} | "
        f"{'pass' if run['passed'] else 'FAIL'} |"
        for run in parity["runs"] for out, fig in run["outputs"].items()
    )
    checks = "\n".join(f"- {c['name']}: expected {c['expected']}, got {c['got']} ({'pass' if c['passed'] else 'FAIL'})"
                       for c in parity["known_checks"]) or "- none for this entry"
    where = src.get("url") or src.get("path")
    return f"""---
license: cc-by-4.0
library_name: perceiver-torch
tags: [perceiver-io, {entry['task']}]
---

# {name}

Perceiver IO ({entry['task']}) converted to PyTorch by perceiver-torch (converter version
{parity['converter_version']}), numerically checked against upstream JAX/Haiku.

```python
import perceiver_torch
model = perceiver_torch.create_model("{name}")
```

## Source and licence

- Upstream file: `{where}` ({src['size']} bytes, sha256 `{src['sha256']}`), produced by
  {src.get('produced_by') or 'DeepMind'}.
- Licence of the parameters: {src['licence']}.
- Attribution: {src['attribution']}
- Artifact: `{artifact['filename']}`, {artifact['size']} bytes, sha256 `{artifact['sha256']}`.

## Parity

Reference: {parity['reference']}. Measured {parity['date']} with {parity['versions']}.
Tolerance atol = rtol = {ATOL}.

| device | dtype | output | max abs | max rel | result |
|---|---|---|---:|---:|---|
{rows}

Known real-weight checks:
{checks}

## Preprocessing

{chr(10).join(f'- {k}: {v}' for k, v in entry['preprocessing'].items())}
"""


def is_up_to_date(name: str, entry: dict, source_sha: str, work_dir: Path = WORK_DIR) -> bool:
    from converters import CONVERTER_VERSION

    parity, artifact = entry.get("parity"), entry.get("artifact")
    if entry["status"] == "not-produced" or not parity or not artifact:
        return False
    if parity["source_sha256"] != source_sha or str(parity["converter_version"]) != str(CONVERTER_VERSION):
        return False
    return any(p.is_file() and sha256_file(p) == artifact["sha256"] for p in artifact_candidates(name, entry,
                                                                                                  work_dir))


def artifact_candidates(name: str, entry: dict, work_dir: Path = WORK_DIR) -> list[Path]:
    """Where a produced artifact may be present locally: the work dir, then published mirrors."""
    artifact = entry.get("artifact") or {}
    paths = [work_dir / name / artifact.get("filename", ARTIFACT_NAME)]
    if artifact.get("repo_id") and artifact.get("revision"):
        import os

        roots = [BUNDLED_STANDIN] + ([Path(os.environ["PERCEIVER_ZOO_MIRROR"])]
                                     if os.environ.get("PERCEIVER_ZOO_MIRROR") else [])
        paths += [r / artifact["repo_id"] / artifact["revision"] / artifact["filename"] for r in roots]
    return paths


def regenerate(name: str, source_path=None, force: bool = False, work_dir: Path = WORK_DIR, manifest=None) -> dict:
    """Regenerate one entry; returns {"name", "changed", "artifact", ...}. Raises ZooError on failure."""
    import converters

    work_dir = Path(work_dir)
    entry = get_entry(name, manifest)
    print(f"[{name}] source check")
    src = fetch_source(name, entry, source_path, work_dir)
    source_sha = entry["source"]["sha256"]
    if not force and is_up_to_date(name, entry, source_sha, work_dir):
        print(f"[{name}] up to date (source sha256, converter {converters.CONVERTER_VERSION}, artifact hash match): "
              "nothing to do")
        return {"name": name, "changed": False}

    config = entry_config(entry)
    out = work_dir / name / ARTIFACT_NAME
    print(f"[{name}] convert {src.name} -> {out}")
    converters.convert(entry["task"], src, config, out)
    canonicalize_safetensors(out)
    artifact_sha, size = sha256_file(out), out.stat().st_size

    print(f"[{name}] parity against the JAX reference on {devices()}")
    reference, inputs, expected = parity_reference(entry, src, config)
    model = load_model(out)
    runs = [_measure(entry["task"], model, inputs, expected, d) for d in devices()]
    checks = known_checks(entry, model.to("cpu"))
    for run in runs:
        print(f"[{name}]   {run['device']}: " + ", ".join(
            f"{k} max_abs={v['max_abs']:.2e}" for k, v in run["outputs"].items()) + f" -> {run['passed']}")
    for check in checks:
        print(f"[{name}]   {check['name']}: got {check['got']} -> {check['passed']}")
    if not all(r["passed"] for r in runs) or not all(c["passed"] for c in checks):
        raise ZooError(f"{name}: parity or known checks FAILED; the manifest was not updated ({out} kept for "
                       "inspection)")

    old = entry.get("artifact") or {}
    if (not force and old.get("sha256") == artifact_sha and entry.get("parity")
            and entry["parity"]["source_sha256"] == source_sha
            and str(entry["parity"]["converter_version"]) == str(converters.CONVERTER_VERSION)):
        print(f"[{name}] artifact identical to the recorded one: manifest unchanged")
        return {"name": name, "changed": False, "artifact": str(out)}

    parity = {
        "harness": "perceiver_torch.zoo.regenerate (upstream_io.run_upstream_layout vs reference, allclose)",
        "reference": reference,
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d"),
        "versions": versions(),
        "converter_version": str(converters.CONVERTER_VERSION),
        "source_sha256": source_sha,
        "runs": runs,
        "known_checks": checks,
    }
    artifact = {"filename": ARTIFACT_NAME, "sha256": artifact_sha, "size": size,
                "repo_id": None, "revision": None, "published_to": None}
    card = model_card(name, entry, parity, artifact)
    card_path = atomic_write(out.parent / "README.md", lambda tmp: Path(tmp).write_text(card))
    artifact["card_sha256"] = sha256_file(card_path)
    entry.update(status="produced", artifact=artifact, parity=parity)
    update_entry(name, entry, manifest)
    print(f"[{name}] wrote {out} ({size} bytes, sha256 {artifact_sha}), {card_path}, manifest entry")
    return {"name": name, "changed": True, "artifact": str(out), "card": str(card_path)}
