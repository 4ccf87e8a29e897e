"""CI checks of zoo_manifest.yaml: schema, unique names, presets vs released_shapes.json, recorded hashes."""

from __future__ import annotations

import copy

import pytest
import torch

from converters.convert import sha256_file
from parity_tests.conftest import released_shapes
from parity_tests.zoo_support import golden_language_entry
from perceiver_torch.registry import COLAB_CONSTANTS, TASK_MODELS, build_model, preset
from perceiver_torch.zoo import ManifestError, entries, load_manifest
from perceiver_torch.zoo.hub import entry_config
from perceiver_torch.zoo.manifest import save_manifest
from perceiver_torch.zoo.regenerate import artifact_candidates
from perceiver_torch.zoo.schema import validate_entry

MODELS = entries()
RELEASED = {  # the names users know from the Hugging Face Hub -> the golden released_shapes.json key
    "language-perceiver": "language_perceiver_io_bytes",
    "vision-perceiver-learned": "imagenet_learned_position_encoding",
    "vision-perceiver-fourier": "imagenet_fourier_position_encoding",
    "vision-perceiver-conv": "imagenet_conv_preprocessing",
    "optical-flow-perceiver": "optical_flow",
    "multimodal-perceiver": "video_autoencoding",
}


def test_manifest_is_valid_and_lists_every_released_checkpoint():
    data = load_manifest()
    assert data["schema_version"] == 1
    released = {n for n, e in data["models"].items() if e["kind"] == "released"}
    assert released == set(RELEASED)
    for name, entry in data["models"].items():
        assert entry["source"]["licence"] == "CC BY 4.0" or entry["kind"] == "tiny", name
        assert entry["preset"] == RELEASED.get(name, entry["preset"]), name


def test_duplicate_names_are_refused(tmp_path):
    text = (tmp_path / "m.yaml")
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
    (lambda e: e.update(preset="language_perceiver_io_bytes"), "'preset'"),  # both preset and config_file
])
def test_schema_errors_name_entry_and_field(mutate, field):
    entry = golden_language_entry()
    validate_entry("golden-language", copy.deepcopy(entry))  # the unmutated entry is valid
    mutate(entry)
    with pytest.raises(ManifestError, match=rf"entry 'golden-language', field {field}"):
        validate_entry("golden-language", entry)


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


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_entry_builds_with_the_released_parameter_count(name):
    entry = MODELS[name]
    if entry["task"] not in TASK_MODELS:
        pytest.skip(f"task {entry['task']!r} has no Torch model registered on this branch yet")
    with torch.device("meta"):
        model = build_model(entry["task"], entry_config(entry))
    count = sum(p.numel() for p in model.parameters())
    if entry["kind"] == "released":
        golden = released_shapes()[RELEASED[name]]
        expected = {**golden["config"], **COLAB_CONSTANTS.get(entry["preset"], {})}
        assert entry_config(entry) == expected == preset(entry["preset"])["config"]
        assert count == golden["num_params"], f"{name}: {count:,} parameters, the release has {golden['num_params']:,}"
    else:
        assert count > 0


@pytest.mark.parametrize("name", sorted(n for n, e in MODELS.items() if e["status"] != "not-produced"))
def test_produced_artifact_hash_matches_where_present(name):
    entry = MODELS[name]
    present = [p for p in artifact_candidates(name, entry) if p.is_file()]
    for path in present:
        assert path.stat().st_size == entry["artifact"]["size"], path
        assert sha256_file(path) == entry["artifact"]["sha256"], path
    if entry["artifact"].get("published_to") == "stand-in":
        assert present, f"{name} is recorded as published to the bundled stand-in, which lacks it"
