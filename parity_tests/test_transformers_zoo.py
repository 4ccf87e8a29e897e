"""A zoo entry regenerated from its pinned transformers repo gives the tensors its Haiku file gives."""

from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import load_file

from converters import to_transformers
from converters.zoo.manifest_edit import update_entry
from converters.zoo.regenerate import regenerate
from parity_tests.transformers_support import haiku_checkpoint, standin_repo
from parity_tests.zoo_support import golden_language_entry, hub_env, scratch_manifest
from perceiver_torch.hashing import sha256_file
from perceiver_torch.zoo import ZooError, get_entry
from perceiver_torch.zoo.schema import ManifestError, validate_entry

NAME, REPO = "hf-language", "deepmind-test/language-perceiver"


@pytest.fixture
def two_routes(tmp_path, monkeypatch):
    """(manifest, the Haiku route's artifact); the entry pins a stand-in transformers repo of the same weights."""
    manifest = tmp_path / "zoo_manifest.yaml"
    _, config = haiku_checkpoint("PerceiverForMaskedLM", tmp_path / NAME, reference_io=True)
    entry = golden_language_entry()
    entry.update(config=config, publish_repo=f"tests/{NAME}", regenerate=f"perceiver-zoo-admin regenerate {NAME}")
    checkpoint = tmp_path / NAME / "checkpoint.pickle"
    entry["source"].update(path=f"{NAME}/checkpoint.pickle", size=checkpoint.stat().st_size,
                           sha256=sha256_file(checkpoint), reference_io=f"{NAME}/io.npz")
    scratch_manifest(manifest, {NAME: entry})
    haiku_route = regenerate(NAME, work_dir=tmp_path / "haiku_route", manifest=manifest)["artifact"]
    exported = to_transformers(haiku_route, tmp_path / "exported")
    commit = standin_repo(tmp_path / "hub", REPO, exported)
    entry = get_entry(NAME, manifest)
    entry["source"]["transformers"] = {"repo_id": REPO, "revision": commit, "filename": "model.safetensors",
                                       "sha256": sha256_file(exported / "model.safetensors")}
    update_entry(NAME, entry, manifest)
    with hub_env(monkeypatch, tmp_path / "hub", tmp_path / "cache"):
        yield manifest, haiku_route


def test_both_routes_give_identical_tensors(two_routes, tmp_path):
    manifest, haiku_route = two_routes
    result = regenerate(NAME, work_dir=tmp_path / "hf_route", manifest=manifest, from_transformers_repo=True)
    want, got = load_file(str(haiku_route)), load_file(result["artifact"])
    assert want.keys() == got.keys() and [k for k in want if not torch.equal(want[k], got[k])] == []
    parity = get_entry(NAME, manifest)["parity"]
    assert parity["source_sha256"] == get_entry(NAME, manifest)["source"]["transformers"]["sha256"]
    assert parity["runs"] and all(run["passed"] for run in parity["runs"])  # the stored reference outputs


def test_pinned_sha256_that_does_not_match_is_refused(two_routes, tmp_path):
    manifest, _ = two_routes
    entry = get_entry(NAME, manifest)
    entry["source"]["transformers"]["sha256"] = "0" * 64
    update_entry(NAME, entry, manifest)
    with pytest.raises(ZooError, match="the manifest pins model.safetensors with 0000"):
        regenerate(NAME, work_dir=tmp_path / "hf_route", manifest=manifest, from_transformers_repo=True)
    assert not (tmp_path / "hf_route" / NAME / "model.safetensors").exists()
    assert [p.name for p in (tmp_path / "hf_route" / NAME).iterdir()] == []


@pytest.mark.parametrize(("field", "value", "needle"), [
    ("revision", "main", "must be a 40-hex commit id"),
    ("filename", "model.bin", "must be one of"),
    ("repo_id", "../x", "must be a Hub repo id"),
])
def test_schema_checks_the_transformers_source(field, value, needle):
    entry = copy.deepcopy(golden_language_entry())
    entry["source"]["transformers"] = {"repo_id": REPO, "revision": "a" * 40, "filename": "model.safetensors",
                                       "sha256": "b" * 64, field: value}
    with pytest.raises(ManifestError, match=needle):
        validate_entry(NAME, entry)
