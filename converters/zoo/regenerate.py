"""Regenerate a zoo entry from its upstream Haiku file: fetch, check, convert, verify, write card + manifest.

``regenerate(name)`` is what ``perceiver-zoo-admin regenerate NAME`` runs:

1. the source: ``source_path=`` (a local copy), the entry's manifest-relative ``source.path``, or a
   download of ``source.url`` with a progress bar; its size and sha256 must equal the
   manifest's before anything else happens;
2. unless forced, stop when the manifest already records this source sha256 and converter
   version and the recorded artifact is present locally with its hash (a second run is a no-op);
3. convert (``converters.convert``, strict and byte-reproducible) to a temp file;
4. verify (``verify.py``): the parity harness against the JAX reference on CPU and CUDA where
   present, the stored upstream outputs when the entry has them, and the known real-weight
   checks; any failure deletes the temp file and leaves the manifest untouched;
5. move the artifact into ``<work_dir>/<name>/``, write the model card ``README.md`` beside it,
   and rewrite the manifest entry (atomically) with the measured figures, ``status: produced``;
   except for a published entry whose artifact came out byte-identical (a fresh checkout's run): its
   publication still serves the right bytes, so the manifest entry is kept as it is (status, pinned
   revision, and the parity record and card the revision was published with) and that card is rebuilt
   from the record beside the artifact.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import urllib.request
from pathlib import Path

from tqdm.auto import tqdm

from perceiver_torch.hashing import sha256_file
from perceiver_torch.serialization import atomic_write, load_model, read_metadata
from perceiver_torch.zoo import ZooError, get_entry
from perceiver_torch.zoo.hub import entry_config

from ..convert import CONVERTER_VERSION, convert
from ..parity.harness import package_versions
from ..transformers import from_transformers
from . import verify
from .manifest_edit import entry_file, update_entry

log = logging.getLogger(__name__)

# Relative: maintainers run regeneration from their checkout, where /out/ is ignored.
WORK_DIR = Path("out") / "zoo"
ARTIFACT_NAME = "model.safetensors"


def _progress(total: int | None, desc: str):
    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc)


def download_url(url: str, dest: Path) -> Path:
    """Download `url` to `dest` with a progress bar; a partial download never sits at `dest`."""
    def write(tmp):
        with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as f:  # noqa: S310 - https/file
            total = int(response.headers.get("Content-Length") or 0) or None
            with _progress(total, dest.name) as bar:
                for chunk in iter(lambda: response.read(1 << 20), b""):
                    f.write(chunk)
                    bar.update(len(chunk))
    return atomic_write(dest, write)


def check_source(path: Path, source: dict, name: str) -> None:
    size = path.stat().st_size
    if size != source["size"]:
        raise ZooError(f"{name}: source {path} has {size} bytes, the manifest (release) says {source['size']}")
    digest = sha256_file(path)
    if digest != source["sha256"]:
        raise ZooError(f"{name}: source {path} has sha256 {digest}, the manifest (release) says {source['sha256']}")


def fetch_source(name: str, entry: dict, source_path=None, work_dir: Path = WORK_DIR, manifest=None) -> Path:
    """The checked upstream file: a given local copy, the entry's source path, or a download of its URL."""
    source = entry["source"]
    if source_path:
        path = Path(source_path)
    elif source.get("path"):
        path = entry_file(source["path"], manifest)
    else:
        path = Path(work_dir) / "_sources" / source["url"].rsplit("/", 1)[-1]
        if not (path.is_file() and path.stat().st_size == source["size"]):
            log.info("[%s] fetch %s -> %s", name, source["url"], path)
            try:
                download_url(source["url"], path)
            except OSError as exc:
                raise ZooError(f"{name}: could not download {source['url']}: {exc}; pass a local copy with "
                               "--source PATH") from exc
    if not path.is_file():
        raise ZooError(f"{name}: source file {path} not found")
    check_source(path, source, name)
    return path


def versions() -> dict[str, str]:
    return package_versions(("perceiver-torch", "torch", "numpy", "safetensors", "huggingface_hub", "jax", "jaxlib",
                             "dm-haiku"))


def run_checks(name: str, entry: dict, model, source: Path | None, config: dict,
               manifest=None) -> tuple[list[dict], list[dict]]:
    """(parity runs, known checks) of a converted model; raises ZooError if nothing can verify it.

    Without the Haiku `source` (the transformers route) the JAX harness cannot run.
    """
    io_path = entry["source"].get("reference_io")
    io_file = entry_file(io_path, manifest) if io_path else None
    runs = []
    missing = verify.harness_missing() if source is not None else "the Haiku source is not used on this route"
    if missing is None:
        runs += verify.harness_runs(entry["task"], config, model, source,
                                    inputs=io_file)
    elif not io_path:
        raise ZooError(f"{name}: the parity harness cannot run ({missing}; it needs pip install "
                       "\"perceiver-torch[jax]\") and the entry stores no reference outputs; nothing can verify it")
    else:
        log.warning("[%s] the parity harness cannot run (%s): checking the stored outputs in %s only",
                    name, missing, io_path)
    if io_file:
        runs += verify.stored_io_runs(entry["task"], model, io_file,
                                      f"reference outputs in {io_path}")
    return runs, verify.known_checks(entry, model)


def model_card(name: str, entry: dict, parity: dict, artifact: dict) -> str:
    src = entry["source"]
    rows = "\n".join(
        f"| {run['reference']} | {run['device']} | {run['dtype']} | {out} | {fig['max_abs']:.3e} | "
        f"{fig['max_rel']:.3e} | {'pass' if run['passed'] else 'FAIL'} |"
        for run in parity["runs"] for out, fig in run["outputs"].items()
    )
    checks = "\n".join(f"- {c['name']}: expected {c['expected']}, got {c['got']} ({'pass' if c['passed'] else 'FAIL'})"
                       for c in parity["known_checks"]) or "- none for this entry"
    licence = "cc-by-4.0" if src["licence"].startswith("CC BY 4.0") else "apache-2.0"
    prep = "\n".join(f"- {k}: {v}" for k, v in entry["preprocessing"].items())
    return f"""---
license: {licence}
library_name: perceiver-torch
tags: [perceiver-io, {entry['task']}]
---

# {name}

Perceiver IO ({entry['task']}) converted to PyTorch by perceiver-torch (converter version
{parity['converter_version']}) and checked against the JAX/Haiku reference.

```python
import perceiver_torch
model = perceiver_torch.create_model("{name}")
```

## Source and licence

- Upstream file: `{src.get('url') or src.get('path')}` ({src['size']} bytes, sha256 `{src['sha256']}`),
  produced by {src.get('produced_by') or 'DeepMind'}.
- Licence of the parameters: {src['licence']}.
- Attribution: {src['attribution']}
- Artifact: `{artifact['filename']}`, {artifact['size']} bytes, sha256 `{artifact['sha256']}`.

## Parity

Measured {parity['date']}; versions: {json.dumps(parity['versions'], sort_keys=True)}.

| reference | device | dtype | output | max abs | max rel | result |
|---|---|---|---|---:|---:|---|
{rows}

Known real-weight checks:
{checks}

## Preprocessing

{prep}
"""


def is_up_to_date(name: str, entry: dict, work_dir: Path = WORK_DIR, source_sha256: str | None = None) -> bool:
    """The manifest records this source (default: the Haiku file) and converter (the one that made the artifact,
    or one that re-verified the published artifact byte for byte), and the artifact and its card are present."""
    parity, artifact = entry.get("parity"), entry.get("artifact")
    if entry["status"] == "not-produced" or not parity or not artifact:
        return False
    reverified = parity.get("reverified") or {}
    if parity["source_sha256"] != (source_sha256 or entry["source"]["sha256"]) \
            or CONVERTER_VERSION not in (parity["converter_version"], reverified.get("converter_version")):
        return False
    local = Path(work_dir) / name
    if not (local / artifact["filename"]).is_file() or not (local / "README.md").is_file():
        return False
    return (sha256_file(local / artifact["filename"]) == artifact["sha256"]
            and sha256_file(local / "README.md") == artifact.get("card_sha256"))


def convert_from_transformers(name: str, entry: dict, config: dict, out: Path) -> str:
    """The transformers route: convert the entry's pinned transformers repo into `out`; returns its sha256.

    The downloaded weights must have the manifest's sha256 and give the entry's config.
    """
    pinned = entry["source"]["transformers"]
    from_transformers(entry["task"], pinned["repo_id"], out, revision=pinned["revision"])
    meta = read_metadata(out)
    problems = []
    if (meta["source_name"], meta["source_sha256"]) != (pinned["filename"], pinned["sha256"]):
        problems.append(f"{pinned['repo_id']}@{pinned['revision']} served {meta['source_name']} with sha256 "
                        f"{meta['source_sha256']}; the manifest pins {pinned['filename']} with {pinned['sha256']}")
    if json.loads(meta["config"]) != config:
        problems.append(f"{pinned['repo_id']}'s config.json gives a config other than the entry's")
    if problems:  # the caller removes `out`
        raise ZooError(f"{name}: " + "; ".join(problems))
    return pinned["sha256"]


def _write_card(directory: Path, text: str) -> Path:
    return atomic_write(directory / "README.md", lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def _today() -> str:
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d")


def _keep_published(name: str, entry: dict, out: Path, manifest=None) -> dict:
    """The verified artifact is byte-identical to the published one: the publication stands, and so do the entry's
    status, artifact and parity figures; a converter other than the recorded one is noted as `parity.reverified`.

    Its parity record and card_sha256 describe the card published with those bytes; the card is rebuilt from
    that record next to the artifact, so that the work dir holds what was published (a second run is a no-op,
    a `publish` makes no new commit). A card that cannot be rebuilt so (the entry's text or the card's template
    changed since) is not written: the published card stays the entry's until a republish.
    """
    artifact, parity = entry["artifact"], entry["parity"]
    where = f"{artifact['repo_id']}@{artifact['revision']} ({artifact['published_to']})"
    recorded = (parity["converter_version"], (parity.get("reverified") or {}).get("converter_version"))
    if CONVERTER_VERSION not in recorded:  # else is_up_to_date could never hold for this converter
        parity["reverified"] = {"date": _today(), "converter_version": CONVERTER_VERSION, "versions": versions()}
        update_entry(name, entry, manifest)
        log.info("[%s] converter %s reproduced the published artifact (made by converter %s) byte for byte: "
                 "recorded as parity.reverified", name, CONVERTER_VERSION, parity["converter_version"])
    text = model_card(name, entry, entry["parity"], artifact)
    if hashlib.sha256(text.encode("utf-8")).hexdigest() == artifact.get("card_sha256"):
        card = _write_card(out.parent, text)
        log.info("[%s] the verified artifact is byte-identical to the one published at %s (sha256 %s): the "
                 "publication, its parity figures and card_sha256 stand; %s and its published card %s are in place",
                 name, where, artifact["sha256"], out, card)
        return {"name": name, "changed": False, "artifact": str(out), "card": str(card)}
    log.warning("[%s] the verified artifact is byte-identical to the one published at %s (sha256 %s): the "
                "publication, its parity figures and card_sha256 stand; but the card this version writes from the "
                "recorded figures differs from the published one (card_sha256 %s), so no card was written",
                name, where, artifact["sha256"], artifact.get("card_sha256"))
    return {"name": name, "changed": False, "artifact": str(out), "card": None}


def regenerate(name: str, source_path=None, force: bool = False, work_dir: Path = WORK_DIR, manifest=None,
               from_transformers_repo: bool = False) -> dict:
    """Regenerate one entry; returns {"name", "changed", ...}. Raises ZooError on failure.

    `from_transformers_repo` converts from the entry's pinned `source.transformers` repo instead of
    DeepMind's Haiku file (same tensors; verified by the stored outputs and known checks only).
    """
    work_dir = Path(work_dir)
    entry = get_entry(name, manifest)
    pinned = entry["source"].get("transformers") if from_transformers_repo else None
    if from_transformers_repo and not pinned:
        raise ZooError(f"{name}: the entry names no source.transformers repo to regenerate from")
    src = None if pinned else fetch_source(name, entry, source_path, work_dir, manifest)
    if src is not None:
        log.info("[%s] source %s (size and sha256 match the manifest)", name, src)
    if not force and is_up_to_date(name, entry, work_dir, pinned["sha256"] if pinned else None):
        log.info("[%s] up to date (source sha256, converter %s, artifact and card hashes match the manifest): "
                 "nothing to do", name, CONVERTER_VERSION)
        return {"name": name, "changed": False}

    config = entry_config(entry)
    out = work_dir / name / ARTIFACT_NAME
    unverified = out.with_name(f".unverified-{out.name}")
    log.info("[%s] convert %s -> %s", name, f"{pinned['repo_id']}@{pinned['revision']}" if pinned else src.name, out)
    try:
        if pinned:
            source_sha256 = convert_from_transformers(name, entry, config, unverified)
        else:
            convert(entry["task"], src, config, unverified)
            source_sha256 = entry["source"]["sha256"]
        log.info("[%s] verify on %s", name, verify.devices())
        model = load_model(unverified)
        runs, checks = run_checks(name, entry, model, src, config, manifest)
        for run in runs:
            log.info("[%s]   %s on %s: %s -> %s", name, run["reference"], run["device"], ", ".join(
                f"{k} max_abs={v['max_abs']:.2e}" for k, v in run["outputs"].items()), run["passed"])
        for check in checks:
            log.info("[%s]   %s: got %s -> %s", name, check["name"], check["got"], check["passed"])
        if not all(r["passed"] for r in runs) or not all(c["passed"] for c in checks):
            raise ZooError(f"{name}: parity or a known check FAILED (figures above); nothing was written")
        os.replace(unverified, out)
    finally:
        unverified.unlink(missing_ok=True)

    published = entry.get("artifact") or {}
    if entry["status"] == "published" and published.get("revision") and sha256_file(out) == published["sha256"]:
        return _keep_published(name, entry, out, manifest)
    parity = {
        "date": _today(),
        "versions": versions(),
        "converter_version": CONVERTER_VERSION,
        "source_sha256": source_sha256,
        "runs": runs,
        "known_checks": checks,
    }
    artifact = {"filename": ARTIFACT_NAME, "sha256": sha256_file(out), "size": out.stat().st_size,
                "repo_id": None, "revision": None, "published_to": None}
    card = _write_card(out.parent, model_card(name, entry, parity, artifact))
    artifact["card_sha256"] = sha256_file(card)
    entry.update(status="produced", artifact=artifact, parity=parity)
    update_entry(name, entry, manifest)
    log.info("[%s] wrote %s (%d bytes, sha256 %s), %s and the manifest entry", name, out, artifact["size"],
             artifact["sha256"], card)
    return {"name": name, "changed": True, "artifact": str(out), "card": str(card)}
