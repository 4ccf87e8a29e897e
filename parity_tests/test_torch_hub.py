"""hubconf.py: `torch.hub.load(REPO, NAME)` gives what `create_model` gives, for every zoo model, read from a
local checkout (`source="local"`, torch.hub's code path after it has downloaded a GitHub repository)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest
import torch

from perceiver_torch import PerceiverForImageClassification, list_models
from perceiver_torch.zoo import create_model

from .sandbox import REPO
from .zoo_support import TEST_HUB, TEST_MANIFEST, golden_language_entry, hub_env, scratch_manifest


def _hub_module():
    """hubconf.py imported afresh, as torch.hub imports it (by file location, each time)."""
    spec = importlib.util.spec_from_file_location("hubconf", REPO / "hubconf.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _listed(module) -> set[str]:
    """What torch.hub.list offers: the module's public callables."""
    return {f for f in dir(module) if callable(getattr(module, f)) and not f.startswith("_")}


def test_every_zoo_model_is_an_entry_point_named_with_underscores(monkeypatch):
    monkeypatch.delenv("PERCEIVER_ZOO_MANIFEST", raising=False)
    names = list_models()
    assert len(names) == 6, names  # the packaged manifest's released entries
    module = _hub_module()
    assert _listed(module) == {"create_model", *(n.replace("-", "_") for n in names)}
    assert sorted(module.__all__) == sorted(_listed(module))
    for name in names:  # torch.hub.help shows the docstring
        assert f"create_model({name!r}, pretrained, **kwargs)" in getattr(module, name.replace("-", "_")).__doc__


def test_the_entry_points_follow_perceiver_zoo_manifest_and_skip_names_that_are_not_identifiers(tmp_path, monkeypatch):
    manifest = scratch_manifest(tmp_path / "manifest.yaml", {"7b-golden": golden_language_entry()})
    monkeypatch.setenv("PERCEIVER_ZOO_MANIFEST", str(manifest))
    listed = _listed(_hub_module())
    assert "vision_perceiver_fourier" in listed and not any(n.startswith("7b") for n in listed)
    assert "7b-golden" in list_models()  # still reachable: torch.hub.load(REPO, "create_model", "7b-golden")


def test_dependencies_import_and_the_hub_file_imports_nothing_of_the_producer_side():
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import hubconf, importlib\n"
            "[importlib.import_module(m) for m in hubconf.dependencies]\n"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('converters', 'jax', 'haiku', 'parity_tests')]\n"
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code, str(REPO)], check=True, cwd=REPO.parent, timeout=300)


def test_untrained_entry_takes_create_models_keywords():
    model = torch.hub.load(str(REPO), "vision_perceiver_fourier", source="local", pretrained=False, num_classes=10)
    assert isinstance(model, PerceiverForImageClassification) and not model.training
    assert model.num_classes == 10 and model.get_classifier().weight.shape[0] == 10


@pytest.mark.parametrize("by_name", [False, True], ids=["entry-point", "create_model-entry"])
def test_pretrained_entry_is_create_models_verified_download(tmp_path, monkeypatch, by_name):
    monkeypatch.setenv("PERCEIVER_ZOO_MANIFEST", str(TEST_MANIFEST))
    with hub_env(monkeypatch, TEST_HUB, tmp_path / "cache") as hub:
        args = ("create_model", "tiny-language-perceiver") if by_name else ("tiny_language_perceiver",)
        loaded = torch.hub.load(str(REPO), *args, source="local")
        assert hub.requests >= 1  # downloaded over HTTP from the stand-in
        expected = create_model("tiny-language-perceiver")
    assert type(loaded) is type(expected) and not loaded.training
    got, want = loaded.state_dict(), expected.state_dict()
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)


def test_a_manifest_that_cannot_be_read_leaves_create_model_with_a_warning(tmp_path, monkeypatch):
    monkeypatch.setenv("PERCEIVER_ZOO_MANIFEST", str(tmp_path / "missing.yaml"))
    with pytest.warns(UserWarning, match="hubconf: no zoo entry points: .*missing.yaml"):
        module = _hub_module()
    assert _listed(module) == {"create_model"}


def test_zoo_names_never_replace_the_modules_own(tmp_path, monkeypatch):
    manifest = scratch_manifest(tmp_path / "manifest.yaml", {name: golden_language_entry()
                                                             for name in ("create-model", "dependencies")})
    monkeypatch.setenv("PERCEIVER_ZOO_MANIFEST", str(manifest))
    module = _hub_module()
    assert module.create_model is create_model and isinstance(module.dependencies, list)
    assert "vision_perceiver_fourier" in _listed(module)
