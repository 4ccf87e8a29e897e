"""The exported model card: the divergences of its own class, a true source line, the licence and attribution."""

from __future__ import annotations

import re

import pytest
import yaml

from converters import from_transformers, to_transformers
from converters.transformers.card import model_card
from converters.transformers.catalog import CATALOG
from parity_tests.transformers_support import save_small
from parity_tests.zoo_support import TEST_MANIFEST
from perceiver_torch import load_model, save_model
from perceiver_torch.zoo import release_provenance

TITLES = {d.key: d.title for d in CATALOG}
# imagenet_conv_preprocessing.pystate's sha256 (perceiver_torch/data/upstream_release.md)
CONV_RELEASE_SHA256 = "7ed880e697f99b1957a1fd1fa1d9ac1f3f8a1d1d567abc3119060b9a81ae94ef"
ATTRIBUTION = ('DeepMind, "Perceiver IO: A General Architecture for Structured Inputs & Outputs" (Jaegle et al., '
               '2021, arXiv 2107.14795)')


def _front_matter(card: str) -> dict:
    match = re.match(r"---\n(.*?)\n---\n", card, re.S)
    assert match, card[:200]
    return yaml.safe_load(match.group(1))


@pytest.mark.parametrize(("architecture", "listed", "not_listed"), [
    ("PerceiverForImageClassificationLearned", {"query_residual", "image_preprocessing"},
     {"conv_padding", "conv_kernel"}),
    ("PerceiverForImageClassificationConvProcessing", {"conv_padding", "conv_kernel", "image_preprocessing"},
     {"query_residual"}),
    ("PerceiverForImageClassificationFourier", {"gelu", "image_preprocessing"},
     {"conv_padding", "conv_kernel", "query_residual"}),
])
def test_card_lists_only_its_own_variants_divergences(architecture, listed, not_listed):
    card = model_card("imagenet", architecture, {}, {})
    assert all(f"| {TITLES[key]} |" in card for key in listed)
    assert not [key for key in not_listed if TITLES[key] in card]


@pytest.mark.parametrize("meta", [
    {"source_name": "imagenet_conv_preprocessing.pystate", "source_sha256": CONV_RELEASE_SHA256},
    {"source_name": "model.safetensors", "source_sha256": "0" * 64, "source_repo": "deepmind/vision-perceiver-conv",
     "source_revision": "a" * 40},
])
def test_weights_from_deepminds_release_are_cc_by_with_attribution(meta):
    card = model_card("imagenet", "PerceiverForImageClassificationConvProcessing", {}, meta)
    assert _front_matter(card)["license"] == "cc-by-4.0"
    assert "## Licence and attribution" in card and f"CC BY 4.0, with attribution: {ATTRIBUTION}" in card
    assert "licensed Apache 2.0" in card  # DeepMind's code
    assert f"`{meta.get('source_repo', meta['source_name'])}`" in card and "unknown" not in card
    if "source_revision" in meta:
        assert f"at revision `{meta['source_revision']}`" in card


def test_a_repo_of_another_owner_named_like_deepmind_is_not_the_release():
    card = model_card("imagenet", "PerceiverForImageClassificationConvProcessing", {},
                      {"source_name": "model.safetensors", "source_repo": "deepmind-fan/vision-perceiver-conv"})
    assert _front_matter(card)["license"] == "other"


@pytest.mark.parametrize("manifest", ["test", "missing"])
def test_the_licence_comes_from_the_packaged_manifest_whatever_perceiver_zoo_manifest_says(manifest, monkeypatch,
                                                                                          tmp_path):
    """The release's sha256s were read from $PERCEIVER_ZOO_MANIFEST: the test manifest (as the README's commands set
    it) made a release file's card 'license: other', and a path that is gone made the export a traceback."""
    release_provenance.released_sha256s.cache_clear()
    monkeypatch.setenv("PERCEIVER_ZOO_MANIFEST", str(TEST_MANIFEST if manifest == "test" else tmp_path / "gone.yaml"))
    meta = {"source_name": "imagenet_conv_preprocessing.pystate", "source_sha256": CONV_RELEASE_SHA256}
    try:
        card = model_card("imagenet", "PerceiverForImageClassificationConvProcessing", {}, meta)
    finally:
        release_provenance.released_sha256s.cache_clear()
    assert _front_matter(card)["license"] == "cc-by-4.0"


def test_save_model_checkpoint_says_it_records_no_source(tmp_path):
    src = save_small("PerceiverForImageClassificationFourier", tmp_path / "hf")
    model = load_model(from_transformers("imagenet", src, tmp_path / "first.safetensors"))
    card = (to_transformers(save_model(model, tmp_path / "saved.safetensors"), tmp_path / "out") / "README.md"
            ).read_text()
    assert "unknown" not in card
    assert "Weights from a perceiver-torch checkpoint that records no source file" in card
    assert _front_matter(card)["license"] == "other"
    assert f"set `license: cc-by-4.0`: DeepMind's released Perceiver IO parameters are licensed CC BY 4.0, with " \
           f"attribution: {ATTRIBUTION}" in card


def test_hostile_metadata_cannot_break_the_card(tmp_path):
    src = save_small("PerceiverForImageClassificationFourier", tmp_path / "hf")
    model = load_model(from_transformers("imagenet", src, tmp_path / "first.safetensors"))
    name = "x`\n---\nlicense: mit\n" + "y" * 5000
    saved = save_model(model, tmp_path / "saved.safetensors", metadata={"source_name": name})
    card = (to_transformers(saved, tmp_path / "out") / "README.md").read_text()
    assert _front_matter(card) == {"library_name": "transformers", "license": "other",
                                   "tags": ["perceiver", "perceiver-io"]}
    line = next(line for line in card.splitlines() if "Weights converted from" in line)
    assert "x'\\n---\\nlicense: mit\\n" in line and len(line) < 600 and card.count("\n---\n") == 1
