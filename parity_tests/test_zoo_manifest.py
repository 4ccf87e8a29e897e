"""CI checks of zoo_manifest.yaml: schema, unique names, presets vs released_shapes.json, cited facts."""

from __future__ import annotations

import copy
import re
from importlib import resources
from pathlib import Path

import pytest
import torch
import yaml

import perceiver_torch as pt
from converters.zoo.manifest_edit import save_manifest
from parity_tests.conftest import released_shapes
from parity_tests.zoo_support import TEST_MANIFEST, golden_language_entry
from perceiver_torch.registry import COLAB_CONSTANTS, build_model, preset
from perceiver_torch.zoo import ManifestError, create_model, entries, load_manifest
from perceiver_torch.zoo.cli import main as zoo_cli
from perceiver_torch.zoo.hub import entry_config
from perceiver_torch.zoo.manifest import MAX_MANIFEST_BYTES, manifest_path
from perceiver_torch.zoo.schema import validate_entry

REPO = Path(__file__).resolve().parents[1]
MODELS = entries()
TEST_MODELS = entries(TEST_MANIFEST)
RELEASED = {  # the names users know from the Hugging Face Hub -> the golden released_shapes.json key
    "language-perceiver": "language_perceiver_io_bytes",
    "vision-perceiver-learned": "imagenet_learned_position_encoding",
    "vision-perceiver-fourier": "imagenet_fourier_position_encoding",
    "vision-perceiver-conv": "imagenet_conv_preprocessing",
    "optical-flow-perceiver": "optical_flow",
    "multimodal-perceiver": "video_autoencoding",
}


def test_product_manifest_lists_exactly_the_six_released_checkpoints():
    data = load_manifest()
    assert data["schema_version"] == 1
    assert manifest_path().resolve() == (REPO / "zoo_manifest.yaml").resolve()
    assert set(data["models"]) == set(RELEASED)
    for name, entry in data["models"].items():
        assert entry["kind"] == "released" and entry["source"]["licence"] == "CC BY 4.0", name
        assert entry["preset"] == RELEASED[name], name


def test_list_models_names_what_create_model_takes():
    assert pt.list_models() == sorted(RELEASED)  # the packaged manifest, sorted
    tiny = pt.list_models(TEST_MANIFEST)
    assert tiny == sorted(load_manifest(TEST_MANIFEST)["models"]) and "tiny-vision-perceiver-conv" in tiny
    for name in tiny:
        assert isinstance(create_model(name, pretrained=False, manifest=TEST_MANIFEST), torch.nn.Module), name


@pytest.mark.parametrize("manifest, error, message", [
    ("", ManifestError, r"zoo manifest \. is a directory"),  # a path, not a request for the packaged manifest
    (123, TypeError, r"manifest must be a path \(str or os.PathLike\); got int"),
])
def test_list_models_refuses_a_manifest_that_is_not_a_path(manifest, error, message):
    with pytest.raises(error, match=message):
        pt.list_models(manifest=manifest)


def test_pretrained_must_be_a_bool():
    with pytest.raises(TypeError, match=r"pretrained must be True or False; got 'False'"):
        create_model("language-perceiver", "False")  # truthy: it used to mean "download"


def test_test_entries_live_only_in_the_test_manifest():
    assert TEST_MODELS and all(e["kind"] == "test" for e in TEST_MODELS.values())
    assert not set(TEST_MODELS) & set(MODELS)


def test_release_facts_the_manifest_cites_are_shipped_and_agree():
    text = (REPO / "zoo_manifest.yaml").read_text()
    cited = set(re.findall(r"[\w/]+\.md", text))
    assert cited == {"perceiver_torch/data/upstream_release.md"}
    facts = resources.files("perceiver_torch").joinpath("data/upstream_release.md").read_text()
    for name, entry in MODELS.items():
        src = entry["source"]
        filename = src["url"].rsplit("/", 1)[-1]
        assert src["url"] == f"https://storage.googleapis.com/perceiver_io/{filename}", name
        row = next(line for line in facts.splitlines() if line.startswith(f"| `{filename}` |"))
        assert f"| {src['size']:,} |" in row and f"`{src['sha256']}`" in row, name


def test_duplicate_names_are_refused(tmp_path):
    text = tmp_path / "m.yaml"
    save_manifest(load_manifest(), text)
    lines = text.read_text().splitlines(keepends=True)
    start = lines.index("  language-perceiver:\n")
    end = next(i for i in range(start + 1, len(lines)) if lines[i].startswith("  ") and not lines[i].startswith("   "))
    text.write_text("".join(lines + lines[start:end]))
    with pytest.raises(ManifestError, match="duplicate key 'language-perceiver'"):
        load_manifest(text)


@pytest.mark.parametrize("mutate, field", [
    (lambda e: e.update(task="speech"), "'task'"),
    (lambda e: e["source"].update(sha256="abc"), "'source.sha256'"),
    (lambda e: e["source"].pop("licence"), "'source.licence'"),
    (lambda e: e.update(status="published"), "'artifact'"),
    (lambda e: e.update(colour="blue"), "'entry.colour'"),
    (lambda e: e.update(preset="language_perceiver_io_bytes"), "'preset'"),  # both preset and config
    (lambda e: e.update(publish_repo="../../evil"), "'publish_repo'"),
    (lambda e: e["source"].update(path="/etc/passwd"), "'source.path'"),
    (lambda e: e["source"].update(reference_io="../golden/io.npz"), "'source.reference_io'"),
])
def test_schema_errors_name_entry_and_field(mutate, field):
    entry = golden_language_entry()
    validate_entry("golden-language", copy.deepcopy(entry))  # the unmutated entry is valid
    mutate(entry)
    with pytest.raises(ManifestError, match=rf"entry 'golden-language', field {field}"):
        validate_entry("golden-language", entry)


def test_a_hostile_value_is_shown_cut_short_not_expanded(tmp_path):
    """A YAML alias bomb: nine levels of nine references to the level below are a few hundred bytes of YAML and
    shared objects in memory, but 9**9 strings once repr'd. Before, the schema's message repr'd the value in full
    (2 GB and a MemoryError traceback); now it is cut short and the field named."""
    text = tmp_path / "m.yaml"
    save_manifest(load_manifest(TEST_MANIFEST), text)
    data = yaml.safe_load(text.read_text())
    name = next(n for n, e in data["models"].items() if e.get("artifact"))
    levels = ["&a0 [" + ", ".join(["lol"] * 9) + "]"]
    levels += [f"&a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)]
    lines = text.read_text().splitlines()
    at = next(i for i, line in enumerate(lines) if line == f"  {name}:")
    sha = next(i for i in range(at, len(lines)) if lines[i].strip().startswith("sha256:") and
               lines[i - 1].strip() != "source:" and "artifact" in "".join(lines[at:i]))
    indent = lines[sha][:len(lines[sha]) - len(lines[sha].lstrip())]
    lines[sha] = f"{indent}sha256: [{', '.join(levels)}]"
    text.write_text("\n".join(lines) + "\n")
    with pytest.raises(ManifestError) as info:
        load_manifest(text)
    message = str(info.value)
    assert f"entry '{name}', field 'artifact.sha256': must be 64 lowercase hex digits, found [" in message
    assert len(message) < 400, message


def test_published_entry_needs_a_pinned_revision_and_passing_figures():
    entry = golden_language_entry()
    run = {"reference": "x", "device": "cpu", "dtype": "float32", "passed": True, "atol": 1e-4, "rtol": 1e-4,
           "outputs": {"logits": {"max_abs": 1e-5, "max_rel": 1e-3}}}
    entry.update(status="published", parity={"date": "2026-11-25", "versions": {}, "converter_version": "1",
                                             "source_sha256": entry["source"]["sha256"], "runs": [run],
                                             "known_checks": []},
                 artifact={"filename": "model.safetensors", "sha256": "0" * 64, "size": 10, "repo_id": "a/b",
                           "revision": "main", "published_to": "hub"})
    with pytest.raises(ManifestError, match="field 'artifact.revision': must be a pinned 40-hex revision"):
        validate_entry("golden-language", entry)
    entry["artifact"]["revision"] = "f" * 40
    validate_entry("golden-language", entry)
    run["passed"] = False
    with pytest.raises(ManifestError, match=r"field 'parity.runs\[0\].passed'"):
        validate_entry("golden-language", entry)


@pytest.mark.parametrize("name", sorted(RELEASED))
def test_every_released_entry_builds_with_the_released_parameter_count(name):
    entry = MODELS[name]
    with torch.device("meta"):
        model = build_model(entry["task"], entry_config(entry))
    count = sum(p.numel() for p in model.parameters())
    golden = released_shapes()[RELEASED[name]]
    expected = {**golden["config"], **COLAB_CONSTANTS.get(entry["preset"], {})}
    assert entry_config(entry) == expected == preset(entry["preset"])["config"]
    assert count == golden["num_params"], f"{name}: {count:,} parameters, the release has {golden['num_params']:,}"


def _with_test_config(tmp_path, change):
    data = load_manifest(TEST_MANIFEST)
    change(data["models"]["tiny-language-perceiver"]["config"])
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))  # by hand: save_manifest would refuse it
    return path


@pytest.mark.parametrize("change, field, expected", [
    (lambda c: c.update(d_model=200_000), "config.d_model", "<= 8192"),  # would build ~160 GB
    (lambda c: c.update(d_model="32"), "config.d_model", "(str)"),  # was a TypeError inside the model
    (lambda c: c.pop("encoder"), "config.encoder", "missing"),  # was a KeyError
    (lambda c: c.update(colour="blue"), "config.colour", "unknown"),
])
def test_an_entry_config_is_checked_by_the_config_schema_at_load(tmp_path, change, field, expected):
    path = _with_test_config(tmp_path, change)
    with pytest.raises(ManifestError) as err:
        load_manifest(path)
    message = str(err.value)
    assert message.startswith(f"{path}: ") and "entry 'tiny-language-perceiver'" in message, message
    assert f"field {field!r}" in message and expected in message, message
    with pytest.raises(ManifestError, match="entry 'tiny-language-perceiver'"):  # before anything is built
        create_model("tiny-language-perceiver", pretrained=False, manifest=path)


def test_an_untrained_model_is_built_through_the_checked_path(tmp_path):
    # Valid field by field, but the constructors refuse the combination (heads must divide the width):
    # found by building on the meta device, before anything is allocated.
    path = _with_test_config(tmp_path, lambda c: c["encoder"].update(num_self_attend_heads=5))
    load_manifest(path)  # the schema alone accepts it
    with pytest.raises(ManifestError, match=rf"{path}: .*entry 'tiny-language-perceiver', field 'config'"):
        create_model("tiny-language-perceiver", pretrained=False, manifest=path)
    model = create_model("tiny-language-perceiver", pretrained=False, manifest=TEST_MANIFEST)
    assert not model.training and sum(p.numel() for p in model.parameters()) > 0


_HOSTILE_YAML = {
    "list-key": ("schema_version: 1\nmodels:\n  ? [a, b]\n  : 1\n",
                 r"a mapping key must be a plain value.*list.*line 3"),
    "dict-key": ("schema_version: 1\nmodels:\n  x: {kind: test}\n  ? {a: 1}\n  : 1\n",
                 r"a mapping key must be a plain value.*dict.*line 4"),
    "deep": ("schema_version: 1\nmodels: " + "[" * 100_000 + "]" * 100_000 + "\n", "nests deeper than 32 levels"),
    "merge": ("base: &b {kind: test}\nschema_version: 1\nmodels:\n  x:\n    <<: *b\n",
              r"merge keys \('<<'\) are not supported \(line 5\)"),
    "bool-version": ("schema_version: true\nmodels: {}\n", "field 'schema_version' must be 1, found True"),
    # Python refuses int() of more than 4300 digits with a bare ValueError that named neither file nor line.
    "long-int": ("schema_version: 1\nmodels:\n  x:\n    kind: test\n    size: " + "9" * 5000 + "\n",
                 r"an integer of 5000 characters \(line 5\) is too long to read"),
    # sorted() of unknown keys of two types raised a bare TypeError that named neither file nor field.
    "mixed-keys": ("schema_version: 1\nmodels: {}\n1: x\nextra: y\n", r"unknown top-level fields \[\"'extra'\", '1'\]"),
}


@pytest.mark.parametrize("case", sorted(_HOSTILE_YAML))
def test_malformed_yaml_is_a_manifest_error_naming_the_file(tmp_path, capsys, case):
    text, refusal = _HOSTILE_YAML[case]
    path = tmp_path / f"{case}.yaml"
    path.write_text(text)
    with pytest.raises(ManifestError, match=refusal) as err:
        load_manifest(path)
    assert str(err.value).startswith(f"{path}: ")
    assert zoo_cli(["--manifest", str(path), "list"]) == 1  # one line, no traceback
    assert capsys.readouterr().err.startswith(f"perceiver-zoo: error: {path}: ")


@pytest.mark.parametrize("mutate, field, refusal", [
    # `$` would match before a final newline: each value must be refused as a whole.
    (lambda e: e["source"].update(sha256=e["source"]["sha256"] + "\n"), "source.sha256", "64 lowercase hex digits"),
    (lambda e: e["source"].update(url="file:///etc/passwd"), "source.url", r"must be an http\(s\) URL, found 'file:///etc/passwd'"),
    (lambda e: e["source"].update(path="a" * 1025), "source.path", "must be a relative path"),
    (lambda e: e["source"].update(size=0), "source.size", "positive integer byte count, found 0"),
    (lambda e: e["source"].update(size=True), "source.size", "positive integer byte count, found True"),
    # '--' would make the cache folder models--a--b--c the same for 'a--b/c' and 'a/b--c'.
    (lambda e: e.update(publish_repo="a--b/c"), "publish_repo", "no '--'"),
    (lambda e: e.update(publish_repo="a/b--c"), "publish_repo", "no '--'"),
    (lambda e: e.update(publish_repo="ns/a..b"), "publish_repo", "or '..'"),
    (lambda e: e.update(publish_repo="ns/model.git"), "publish_repo", "must be a Hub repo id"),
    (lambda e: e.update(artifact={"filename": "m.safetensors", "sha256": "a" * 64, "size": 1}), "artifact",
     "must be null while status is 'not-produced'"),
], ids=["sha256-newline", "file-url", "path-1025", "size-0", "size-true", "repo-dashes-ns", "repo-dashes-name",
        "repo-dots", "repo-git", "artifact-not-produced"])
def test_values_just_past_what_the_schema_allows_are_refused(mutate, field, refusal):
    entry = golden_language_entry()
    assert entry["status"] == "not-produced"
    mutate(entry)
    with pytest.raises(ManifestError, match=rf"entry 'golden-language', field '{re.escape(field)}': .*{refusal}"):
        validate_entry("golden-language", entry)


def test_a_model_name_with_a_trailing_newline_is_refused():
    # A name becomes a cache folder and a CLI argument; `$` would accept 'golden-language\n'.
    with pytest.raises(ManifestError, match=r"entry 'golden-language\\n', field 'name': must be 1-96 lowercase"):
        validate_entry("golden-language\n", golden_language_entry())


def _published(mutate):
    name, entry = next((n, copy.deepcopy(e)) for n, e in TEST_MODELS.items() if e["status"] == "published")
    validate_entry(name, copy.deepcopy(entry))  # valid as it stands
    mutate(entry)
    return name, entry


@pytest.mark.parametrize("mutate, field, refusal", [
    (lambda e: e["artifact"].update(revision=e["artifact"]["revision"] + "\n"), "artifact.revision",
     "must be a pinned 40-hex revision"),
    (lambda e: e["artifact"].update(published_to="elsewhere"), "artifact.published_to",
     r"must be one of \['hub', 'stand-in'\]"),
    (lambda e: e["parity"]["runs"][0].update(passed="yes"), "parity.runs[0].passed",
     "a produced artifact must have passed parity"),  # truthy is not True
    (lambda e: e["parity"].update(known_checks=[{"name": "x", "expected": 1, "got": 2, "passed": False}]),
     "parity.known_checks[0].passed", "a produced artifact must pass its known checks"),
], ids=["revision-newline", "published-elsewhere", "passed-yes", "known-check-failed"])
def test_a_published_entry_is_refused_for_each_unproven_field(mutate, field, refusal):
    name, entry = _published(mutate)
    with pytest.raises(ManifestError, match=rf"entry '{name}', field '{re.escape(field)}': {refusal}"):
        validate_entry(name, entry)


@pytest.mark.parametrize("case", ["oversized", "not-utf8"])
def test_a_manifest_too_large_or_not_utf8_is_refused_naming_the_file(tmp_path, capsys, case):
    path = tmp_path / f"{case}.yaml"
    if case == "oversized":  # a valid manifest padded by a comment: refused before it is parsed
        path.write_text(TEST_MANIFEST.read_text() + "#" + "x" * MAX_MANIFEST_BYTES + "\n")
        refusal = rf"is {path.stat().st_size} bytes, more than the {MAX_MANIFEST_BYTES} a manifest may have"
    else:
        path.write_bytes(b"schema_version: 1\nmodels: {\xff: 1}\n")
        refusal = "is not valid YAML: 'utf-8' codec can't decode byte 0xff"
    with pytest.raises(ManifestError, match=rf"^zoo manifest {re.escape(str(path))} {refusal}"):
        load_manifest(path)
    assert zoo_cli(["--manifest", str(path), "list"]) == 1  # one line, no traceback
    assert capsys.readouterr().err.startswith(f"perceiver-zoo: error: zoo manifest {path} ")
