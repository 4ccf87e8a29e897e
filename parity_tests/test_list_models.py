"""`list_models(filter, *, exclude_filters, manifest)`: timm's wildcard filter over the zoo's names, the manifest
still given by keyword or, as before, as a path in the first place; what is neither is refused by name."""

from __future__ import annotations

import pytest

import perceiver_torch as pt
from perceiver_torch.zoo import entries
from perceiver_torch.zoo.cli import main as zoo_cli

from .zoo_support import TEST_MANIFEST

RELEASED = ["language-perceiver", "multimodal-perceiver", "optical-flow-perceiver", "vision-perceiver-conv",
            "vision-perceiver-fourier", "vision-perceiver-learned"]


@pytest.mark.parametrize("args, kwargs, expected", [
    (("vision*",), {}, ["vision-perceiver-conv", "vision-perceiver-fourier", "vision-perceiver-learned"]),
    (("*-perceiver",), {}, ["language-perceiver", "multimodal-perceiver", "optical-flow-perceiver"]),
    (("vision-perceiver-[cf]*",), {}, ["vision-perceiver-conv", "vision-perceiver-fourier"]),
    ((["language*", "optical*"],), {}, ["language-perceiver", "optical-flow-perceiver"]),
    (("vision*",), {"exclude_filters": "*learned"}, ["vision-perceiver-conv", "vision-perceiver-fourier"]),
    ((), {"exclude_filters": ["vision*", "multi*"]}, ["language-perceiver", "optical-flow-perceiver"]),
    (("",), {}, RELEASED),
    ((), {}, RELEASED),
    (("resnet*",), {}, []),  # matches nothing: an empty list, not an error
    (("VISION*",), {}, []),  # case matters, as in timm on Linux
])
def test_a_wildcard_filter_keeps_the_names_it_matches(args, kwargs, expected):
    assert pt.list_models(*args, **kwargs) == expected


def test_the_manifest_is_given_by_keyword_or_as_a_path_in_the_first_place():
    tiny = pt.list_models(manifest=TEST_MANIFEST)
    assert tiny and all(name.startswith("tiny-") for name in tiny)
    assert pt.list_models(TEST_MANIFEST) == tiny  # the earlier positional use
    assert pt.list_models("tiny-vision*", manifest=TEST_MANIFEST) == [n for n in tiny if n.startswith("tiny-vision")]
    assert pt.list_models("tiny-vision*", manifest=str(TEST_MANIFEST)) == pt.list_models("tiny-vision*",
                                                                                        manifest=TEST_MANIFEST)


def test_a_manifest_file_named_without_a_suffix_or_folder_is_refused_not_matched(tmp_path, monkeypatch):
    """list_models('mymanifest') read that manifest before filters existed; then it matched no model name: []."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mymanifest").write_bytes(TEST_MANIFEST.read_bytes())
    with pytest.raises(ValueError, match="filter 'mymanifest' looks like a manifest path"):
        pt.list_models("mymanifest")
    assert pt.list_models(manifest="mymanifest") == pt.list_models(manifest=TEST_MANIFEST)
    assert pt.list_models("mymanifest*") == []  # a pattern: a file of that name does not matter


@pytest.mark.parametrize("args, kwargs, error, message", [
    ((str(TEST_MANIFEST),), {}, ValueError, r"list_models: filter '.*zoo_test_manifest.yaml' looks like a manifest "
                                            r"path, which no model name matches; pass a manifest as manifest=\.\.\."),
    (("my-zoo.yml",), {}, ValueError, "looks like a manifest path"),
    ((123,), {}, TypeError, r"list_models: filter must be a wildcard pattern \(str, e.g. 'vision\*'\) or a list of "
                            r"them; got int \(a manifest is passed as manifest=\.\.\.\)"),
    ((["vision*", None],), {}, TypeError, "filter must be a wildcard pattern"),
    ((), {"exclude_filters": 1.5}, TypeError, "exclude_filters must be a wildcard pattern"),
    ((TEST_MANIFEST,), {"manifest": TEST_MANIFEST}, TypeError, "a manifest path was given both as the first "
                                                               "argument and as manifest="),
])
def test_what_is_neither_a_pattern_nor_a_manifest_is_refused(args, kwargs, error, message):
    with pytest.raises(error, match=message):
        pt.list_models(*args, **kwargs)


def test_the_cli_lists_the_models_its_patterns_match(capsys):
    """`perceiver-zoo list` listed every entry; it takes list_models' patterns, and exits 1 (as grep) on none."""
    assert zoo_cli(["--manifest", str(TEST_MANIFEST), "list", "tiny-*", "--exclude", "*flow*"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()[1:]]
    in_order = [n for n in entries(TEST_MANIFEST) if "flow" not in n]  # the manifest's order, as before
    assert listed == in_order and len(listed) == 3
    assert zoo_cli(["--manifest", str(TEST_MANIFEST), "list"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1 + len(pt.list_models(manifest=TEST_MANIFEST))
    assert zoo_cli(["--manifest", str(TEST_MANIFEST), "list", "resnet*"]) == 1
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == ("", "perceiver-zoo: no zoo model matches 'resnet*'\n")


def test_a_manifest_suffix_in_capitals_is_refused_too():
    with pytest.raises(ValueError, match="filter 'MODELS.YAML' looks like a manifest path"):
        pt.list_models("MODELS.YAML")
