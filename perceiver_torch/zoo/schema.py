"""The schema of `zoo_manifest.yaml`, and its validation.

The manifest is a mapping ``{"schema_version": 1, "models": {NAME: ENTRY}}``.
Each ENTRY has these fields (``?`` = may be null):

``kind``            ``released`` (one of DeepMind's six checkpoints) or ``test`` (a model with
                    random weights made to test the whole produce/publish/pull path offline;
                    test entries live in parity_tests/fixtures/zoo_test_manifest.yaml, never
                    in the packaged manifest).
``task``            one of ``perceiver_torch.registry.TASKS``.
``preset``?         a released configuration in ``perceiver_torch/data/presets.json``.
``config``?         the model config itself (golden ``config.json`` layout), checked against
                    the task's config schema with its size caps; exactly one of ``preset``
                    and ``config`` is set.
``status``          ``not-produced`` (no converted artifact exists yet: ``artifact`` and
                    ``parity`` are null, pulling fails and says how to regenerate),
                    ``produced`` (artifact written and verified locally, not published) or
                    ``published`` (artifact uploaded; ``artifact.repo_id``/``revision`` set).
``regenerate``      the exact command that (re)produces the artifact.
``publish_repo``    the Hub repo id the publish command uploads to.
``source``          the upstream Haiku file: ``url``? or ``path``? (relative to the manifest's
                    directory, without ``..``), ``size``
                    (bytes), ``sha256``, ``licence``, ``attribution``, ``produced_by``?,
                    ``reference_io``? (manifest-relative ``io.npz`` of inputs and the outputs the
                    reference computed from exactly these weights; checked without JAX),
                    ``transformers``? (the same weights as a transformers repo: ``repo_id``,
                    ``revision`` (40-hex commit), ``filename``, ``sha256``).
``artifact``?       the converted file: ``filename``, ``sha256``, ``size``, ``card_sha256``?
                    (the model card written beside it), and once published ``repo_id``,
                    ``revision`` (the 40-hex commit the publish returned; pulls are pinned to
                    it) and ``published_to`` (``hub``, or ``stand-in``: the local Hub stand-in
                    the tests publish to and pull from). ``filename`` is a relative path
                    without ``..``; ``repo_id`` follows the Hub's ``namespace/name`` grammar.
``parity``?         measured by ``perceiver-zoo-admin regenerate``, never typed in: ``date``, ``versions``
                    (distribution -> version), ``converter_version``, ``source_sha256``,
                    ``runs`` (list of ``{reference, device, dtype, passed, atol, rtol,
                    outputs: {NAME: {max_abs, max_rel, ...}}, ...}``, the parity harness's
                    report layout) and ``known_checks`` (list of ``{name, expected, got, passed}``);
                    ``reverified``? (``{date, converter_version, versions}``: a later converter whose
                    verified output was byte-identical to the published artifact, so the publication,
                    its figures and its card stand; regenerate then counts the entry up to date for it).
``preprocessing``   facts about the inputs (tokenizer, image size, normalisation), each
                    with its source; what the release does not state is null, never guessed.
``notes``?          free text.
"""

from __future__ import annotations

import re
from typing import TypeGuard

from ..config_schema import config_problems, short_repr
from ..registry import TASKS, preset_names

SCHEMA_VERSION = 1
KINDS = ("released", "test")
STATUSES = ("not-produced", "produced", "published")
PUBLISHED_TO = ("hub", "stand-in")
_SHA256 = re.compile(r"^[0-9a-f]{64}\Z")
_REVISION = re.compile(r"^[0-9a-f]{40}\Z")
_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,95}\Z")
# The Hub's repo id grammar (huggingface_hub's validate_repo_id), with the namespace required.
_REPO_PART = r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}"
_REPO_ID = re.compile(rf"^{_REPO_PART}/{_REPO_PART}\Z")
_PATH_PART = re.compile(r"^[A-Za-z0-9._-]+\Z")

ENTRY_FIELDS = {
    "kind": True, "task": True, "preset": False, "config": False, "status": True, "regenerate": True,
    "publish_repo": True, "source": True, "artifact": False, "parity": False, "preprocessing": True,
    "notes": False,
}
SOURCE_FIELDS = ("url", "path", "size", "sha256", "licence", "attribution", "produced_by", "reference_io",
                 "transformers")
# source.transformers: the same weights as a transformers model repo (e.g. deepmind/language-perceiver),
# pinned: `perceiver-zoo-admin regenerate NAME --from-transformers` converts from it instead.
TRANSFORMERS_FIELDS = ("repo_id", "revision", "filename", "sha256")
TRANSFORMERS_FILES = ("model.safetensors", "pytorch_model.bin")
ARTIFACT_FIELDS = ("filename", "sha256", "size", "repo_id", "revision", "published_to", "card_sha256")
PARITY_FIELDS = ("date", "versions", "converter_version", "source_sha256", "runs", "known_checks")
REVERIFIED_FIELDS = ("date", "converter_version", "versions")
RUN_FIELDS = ("reference", "device", "dtype", "passed", "atol", "rtol", "outputs")  # required; more allowed
CHECK_FIELDS = ("name", "expected", "got", "passed")


class ManifestError(ValueError):
    """The manifest does not follow the schema; the message names the entry and field."""


def _fail(name: str, field: str, message: str):
    raise ManifestError(f"zoo manifest: entry {short_repr(name)}, field {short_repr(field)}: {message}")


def _check_keys(name: str, prefix: str, value, allowed, required=()):
    if not isinstance(value, dict):
        _fail(name, prefix, f"must be a mapping, found {type(value).__name__}")
    for key in value:
        if key not in allowed:
            _fail(name, f"{prefix}.{key}", f"unknown field; allowed: {list(allowed)}")
    for key in required:
        if key not in value:
            _fail(name, f"{prefix}.{key}", "is required")


def _check_sha(name, field, value):
    if not isinstance(value, str) or not _SHA256.match(value):
        _fail(name, field, f"must be 64 lowercase hex digits, found {short_repr(value)}")


def _check_size(name, field, value):
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        _fail(name, field, f"must be a positive integer byte count, found {short_repr(value)}")


def is_model_name(value) -> TypeGuard[str]:
    """What a zoo model's name may be: lowercase letters, digits and hyphens (never a dot or a separator)."""
    return isinstance(value, str) and bool(_NAME.match(value))


def is_repo_id(value) -> bool:
    """A Hub repo id 'namespace/name' (also what the Hub stand-in accepts)."""
    return (isinstance(value, str) and bool(_REPO_ID.match(value)) and "--" not in value and ".." not in value
            and not value.endswith(".git"))


def is_repo_name(value) -> bool:
    """A Hub repo's name without its namespace: what 'owner/' completes to a repo id (huggingface_hub puts such a
    name in the token owner's namespace)."""
    return isinstance(value, str) and "/" not in value and is_repo_id(f"owner/{value}")


def is_relative_path(value) -> bool:
    """A relative POSIX path of plain components: no absolute path, no '.' or '..', no backslash or empty part."""
    if not isinstance(value, str) or not value or len(value) > 1024:
        return False
    parts = value.split("/")
    return all(p not in (".", "..") and _PATH_PART.match(p) for p in parts)


def check_repo_id(name, field, value):
    if not is_repo_id(value):
        _fail(name, field, f"must be a Hub repo id 'namespace/name' (letters, digits, '.', '_', '-'; no '--' "
                           f"or '..'), found {short_repr(value)}")


def check_relative_path(name, field, value):
    if not is_relative_path(value):
        _fail(name, field, f"must be a relative path of plain names (letters, digits, '.', '_', '-'; no '..'), "
                           f"found {short_repr(value)}")


def _check_transformers_source(name: str, value) -> None:
    _check_keys(name, "source.transformers", value, TRANSFORMERS_FIELDS, TRANSFORMERS_FIELDS)
    check_repo_id(name, "source.transformers.repo_id", value["repo_id"])
    if not isinstance(value["revision"], str) or not _REVISION.match(value["revision"]):
        _fail(name, "source.transformers.revision",
              f"must be a 40-hex commit id, found {short_repr(value['revision'])}")
    if value["filename"] not in TRANSFORMERS_FILES:
        _fail(name, "source.transformers.filename", f"must be one of {list(TRANSFORMERS_FILES)}, "
                                                     f"found {short_repr(value['filename'])}")
    _check_sha(name, "source.transformers.sha256", value["sha256"])


def _check_config(name: str, task: str, config: dict) -> None:
    """The task's config schema, size caps included: a manifest's config is as untrusted as a file's."""
    problems = config_problems(task, config)
    if problems:
        path, _, detail = problems[0].partition(": ")
        also = "".join(f"; also config.{p}" for p in problems[1:])
        _fail(name, "config" + (f".{path}" if path else ""), detail + also)


def validate_entry(name: str, entry, tasks=TASKS, presets=None) -> None:
    """Raise ManifestError naming `name` and the field at the first problem."""
    presets = preset_names() if presets is None else presets
    if not is_model_name(name):
        _fail(str(name), "name", "must be 1-96 lowercase letters, digits and dashes")
    _check_keys(name, "entry", entry, ENTRY_FIELDS, [k for k, req in ENTRY_FIELDS.items() if req])
    if entry["kind"] not in KINDS:
        _fail(name, "kind", f"must be one of {list(KINDS)}, found {short_repr(entry['kind'])}")
    if entry["task"] not in tasks:
        _fail(name, "task", f"must be one of {list(tasks)}, found {short_repr(entry['task'])}")
    has_preset, has_config = entry.get("preset") is not None, entry.get("config") is not None
    if has_preset == has_config:
        _fail(name, "preset", "exactly one of 'preset' and 'config' must be set")
    if has_config and not isinstance(entry["config"], dict):
        _fail(name, "config", f"must be a mapping (the golden config.json layout), found "
                              f"{type(entry['config']).__name__}")
    if has_config:
        _check_config(name, entry["task"], entry["config"])
    if has_preset and entry["preset"] not in presets:
        _fail(name, "preset", f"unknown preset {short_repr(entry['preset'])}; known: {list(presets)}")
    if entry["status"] not in STATUSES:
        _fail(name, "status", f"must be one of {list(STATUSES)}, found {short_repr(entry['status'])}")
    if not isinstance(entry["regenerate"], str) or not entry["regenerate"].strip():
        _fail(name, "regenerate", "must be a non-empty string")
    check_repo_id(name, "publish_repo", entry["publish_repo"])

    source = entry["source"]
    _check_keys(name, "source", source, SOURCE_FIELDS, ("size", "sha256", "licence", "attribution"))
    if not source.get("url") and not source.get("path"):
        _fail(name, "source.url", "one of source.url and source.path must be set")
    _check_size(name, "source.size", source["size"])
    _check_sha(name, "source.sha256", source["sha256"])
    for field in ("path", "reference_io"):
        if source.get(field) is not None:
            check_relative_path(name, f"source.{field}", source[field])
    if source.get("url") is not None and not (isinstance(source["url"], str)
                                              and source["url"].startswith(("https://", "http://"))):
        _fail(name, "source.url", f"must be an http(s) URL, found {short_repr(source['url'])}")
    if source.get("transformers") is not None:
        _check_transformers_source(name, source["transformers"])

    artifact, parity, status = entry.get("artifact"), entry.get("parity"), entry["status"]
    if status == "not-produced":
        if artifact is not None:
            _fail(name, "artifact", "must be null while status is 'not-produced'")
        if parity is not None:
            _fail(name, "parity", "must be null while status is 'not-produced'")
    else:
        if artifact is None:
            _fail(name, "artifact", f"is required when status is {short_repr(status)}")
        if parity is None:
            _fail(name, "parity", f"is required when status is {short_repr(status)}")
        _check_keys(name, "artifact", artifact, ARTIFACT_FIELDS, ("filename", "sha256", "size"))
        _check_sha(name, "artifact.sha256", artifact["sha256"])
        _check_size(name, "artifact.size", artifact["size"])
        check_relative_path(name, "artifact.filename", artifact["filename"])
        if artifact.get("repo_id") is not None:
            check_repo_id(name, "artifact.repo_id", artifact["repo_id"])
        if status == "published":
            for key in ("repo_id", "revision", "published_to"):
                if not artifact.get(key):
                    _fail(name, f"artifact.{key}", "is required when status is 'published'")
            if not isinstance(artifact["revision"], str) or not _REVISION.match(artifact["revision"]):
                _fail(name, "artifact.revision",
                      f"must be a pinned 40-hex revision, found {short_repr(artifact['revision'])}")
            if artifact["published_to"] not in PUBLISHED_TO:
                _fail(name, "artifact.published_to", f"must be one of {list(PUBLISHED_TO)}")
        _check_keys(name, "parity", parity, (*PARITY_FIELDS, "reverified"), PARITY_FIELDS)
        if parity.get("reverified") is not None:
            _check_keys(name, "parity.reverified", parity["reverified"], REVERIFIED_FIELDS, REVERIFIED_FIELDS)
            if status != "published":
                _fail(name, "parity.reverified", "records a re-verification of a published artifact; it must be "
                                                 f"absent while status is {short_repr(status)}")
        runs = parity["runs"]
        if not isinstance(runs, list) or not runs:
            _fail(name, "parity.runs", "must be a non-empty list")
        for i, run in enumerate(runs):
            _check_keys(name, f"parity.runs[{i}]", run, run, RUN_FIELDS)
            if run["passed"] is not True:
                _fail(name, f"parity.runs[{i}].passed", "a produced artifact must have passed parity")
            if not isinstance(run["outputs"], dict) or not run["outputs"]:
                _fail(name, f"parity.runs[{i}].outputs", "must map each output name to its error figures")
            for out, figures in run["outputs"].items():
                _check_keys(name, f"parity.runs[{i}].outputs.{out}", figures, figures, ("max_abs", "max_rel"))
        if not isinstance(parity["known_checks"], list):
            _fail(name, "parity.known_checks", "must be a list (empty when none are known)")
        for i, check in enumerate(parity["known_checks"]):
            _check_keys(name, f"parity.known_checks[{i}]", check, CHECK_FIELDS, CHECK_FIELDS)
            if check["passed"] is not True:
                _fail(name, f"parity.known_checks[{i}].passed", "a produced artifact must pass its known checks")
    if not isinstance(entry["preprocessing"], dict):
        _fail(name, "preprocessing", "must be a mapping")


def validate_manifest(data) -> dict:
    """Validate a loaded manifest; returns its ``models`` mapping."""
    if not isinstance(data, dict):
        raise ManifestError("zoo manifest: top level must be a mapping with 'schema_version' and 'models'")
    if type(data.get("schema_version")) is not int or data["schema_version"] != SCHEMA_VERSION:  # True == 1
        raise ManifestError(
            f"zoo manifest: field 'schema_version' must be {SCHEMA_VERSION}, "
            f"found {short_repr(data.get('schema_version'))}"
        )
    extra = set(data) - {"schema_version", "models"}
    if extra:
        raise ManifestError(f"zoo manifest: unknown top-level fields {sorted(map(repr, extra))}")
    models = data.get("models")
    if not isinstance(models, dict) or not models:
        raise ManifestError("zoo manifest: field 'models' must be a non-empty mapping of name -> entry")
    for name, entry in models.items():
        validate_entry(name, entry)
    return models
