"""`Model.from_pretrained(name_or_path)`: a zoo name through create_model, a file through load_model, one task."""

from __future__ import annotations

import re

import pytest
import torch

import perceiver_torch as pt
from perceiver_torch.registry import TASK_MODELS

from .conftest import GOLDEN_TASKS, assert_same_weights, seeded_model
from .zoo_support import TEST_HUB, TEST_MANIFEST, hub_env

TINY_NAMES = pt.list_models(TEST_MANIFEST)


def _task(name: str) -> str:
    return pt.zoo.get_entry(name, TEST_MANIFEST)["task"]


@pytest.mark.parametrize("name", TINY_NAMES)
def test_a_zoo_name_is_create_model(name, tmp_path, monkeypatch):
    with hub_env(monkeypatch, TEST_HUB, tmp_path / "cache"):
        model = TASK_MODELS[_task(name)].from_pretrained(name, manifest=TEST_MANIFEST)
        expected = pt.create_model(name, manifest=TEST_MANIFEST)
    assert_same_weights(model, expected)
    assert not model.training


@pytest.mark.parametrize("name", TINY_NAMES)
def test_another_tasks_zoo_name_is_refused_before_fetching(name, tmp_path, monkeypatch):
    others = [cls for task, cls in TASK_MODELS.items() if task != _task(name)]
    assert len(others) == len(TASK_MODELS) - 1
    with hub_env(monkeypatch, tmp_path / "no-hub", tmp_path / "cache"):
        for cls in others:
            with pytest.raises(ValueError, match=rf"{cls.__name__}.from_pretrained: zoo model '{name}' is a "
                                                 rf"{TASK_MODELS[_task(name)].__name__} \(task '{_task(name)}'\), "
                                                 rf"not a {cls.__name__}"):
                cls.from_pretrained(name, manifest=TEST_MANIFEST)
    assert not (tmp_path / "cache").exists()  # nothing was fetched


def test_zoo_keywords_reach_create_model(tmp_path, monkeypatch):
    name = "tiny-vision-perceiver-conv"
    with hub_env(monkeypatch, TEST_HUB, tmp_path / "cache"):
        model = pt.PerceiverForImageClassification.from_pretrained(name, num_classes=0, dtype="bfloat16",
                                                                   manifest=TEST_MANIFEST)
    assert model.num_classes == 0 and next(model.parameters()).dtype == torch.bfloat16


@pytest.mark.parametrize("family", sorted(GOLDEN_TASKS))
def test_a_file_is_load_model_and_another_tasks_file_is_refused(family, tmp_path):
    task = GOLDEN_TASKS[family]
    path = pt.save_model(seeded_model(family), tmp_path / f"{family}.safetensors")
    for given in (path, str(path)):
        assert_same_weights(TASK_MODELS[task].from_pretrained(given), pt.load_model(path))
    assert TASK_MODELS[task].from_pretrained(path, dtype=torch.bfloat16).get_submodule("encoder").latents \
        .embeddings.dtype == torch.bfloat16
    for other, cls in TASK_MODELS.items():
        if other != task:
            with pytest.raises(pt.CheckpointFormatError, match=rf"holds a {TASK_MODELS[task].__name__} \(task "
                                                               rf"'{task}'\), not a {cls.__name__}"):
                cls.from_pretrained(path)


def test_what_is_neither_a_zoo_name_nor_a_file_is_named(tmp_path, monkeypatch):
    cls = pt.PerceiverForMaskedLM
    manifest = re.escape(str(TEST_MANIFEST))
    with pytest.raises(ValueError, match=rf"from_pretrained: no zoo model 'not-in-the-zoo' in {manifest}; "
                                         r"available: \['tiny-language-perceiver'"):
        cls.from_pretrained("not-in-the-zoo", manifest=TEST_MANIFEST)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine").write_bytes(b"")  # a file named like a zoo model is never loaded by that name
    with pytest.raises(ValueError, match=r"no zoo model 'mine'.*named by its path, e.g. './mine' or "
                                         r"'./mine.safetensors'"):
        cls.from_pretrained("mine", manifest=TEST_MANIFEST)
    with pytest.raises(FileNotFoundError):
        cls.from_pretrained("missing.safetensors")
    with pytest.raises(FileNotFoundError):
        cls.from_pretrained(tmp_path / "missing")
    with pytest.raises(TypeError, match=r"from_pretrained: 'x.safetensors' is a file, which takes no manifest or "
                                        r"num_classes \(only device, dtype, their"):
        cls.from_pretrained("x.safetensors", num_classes=3, manifest=TEST_MANIFEST)
    with pytest.raises(TypeError, match=r"expected a zoo model's name or a file path; got int"):
        cls.from_pretrained(3)


def test_a_revision_for_a_zoo_model_is_refused_by_from_pretrained_before_fetching(tmp_path, monkeypatch):
    with hub_env(monkeypatch, tmp_path / "no-hub", tmp_path / "cache"):
        with pytest.raises(TypeError, match=r"^PerceiverForMaskedLM.from_pretrained: zoo model "
                                            r"'tiny-language-perceiver' is pinned by the manifest, which takes no "
                                            r"revision \('hf-hub:' repos only\)\.$"):
            pt.PerceiverForMaskedLM.from_pretrained("tiny-language-perceiver", revision="main", manifest=TEST_MANIFEST)
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("family", sorted(GOLDEN_TASKS))
def test_save_pretrained_writes_a_directory_from_pretrained_reads(family, tmp_path):
    """transformers' round trip: model.save_pretrained(directory), then Model.from_pretrained(directory)."""
    task, model = GOLDEN_TASKS[family], seeded_model(family)
    directory = tmp_path / "out" / family
    written = model.save_pretrained(directory)  # parents created
    assert written == directory / "model.safetensors" and sorted(p.name for p in directory.iterdir()) == [written.name]
    assert_same_weights(TASK_MODELS[task].from_pretrained(directory), model)
    assert_same_weights(TASK_MODELS[task].from_pretrained(str(directory)), model)
    assert model.save_pretrained(directory) == written  # again: replaced in place
    assert_same_weights(pt.load_model(written), model)
    with pytest.raises(pt.CheckpointFormatError, match=rf"is a directory, not a safetensors file \(a save_pretrained "
                                                       rf"directory: load it with from_pretrained, or name "
                                                       rf"{re.escape(str(written))}\)"):
        pt.load_model(directory)  # load_model reads files only: the error says what does read a directory
    other = next(cls for t, cls in TASK_MODELS.items() if t != task)
    with pytest.raises(pt.CheckpointFormatError, match=rf"{re.escape(str(written))} holds a "
                                                       rf"{TASK_MODELS[task].__name__}"):
        other.from_pretrained(directory)


def test_save_pretrained_and_a_directory_refusals(tmp_path, monkeypatch):
    model = seeded_model("language")
    with pytest.raises(FileNotFoundError, match=rf"^{re.escape(str(tmp_path))} is a directory without a "
                                                r"model.safetensors \(what save_pretrained writes into one\)$"):
        pt.PerceiverForMaskedLM.from_pretrained(tmp_path)
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(NotADirectoryError, match=r"save_pretrained: .*a-file exists and is not a directory"):
        model.save_pretrained(tmp_path / "a-file")
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] = float("nan")
    with pytest.raises(ValueError, match=r"non-finite values"):  # save_model's refusal: nothing is left behind,
        model.save_pretrained(tmp_path / "new" / "nested")  # not even the directories made for it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]
    with pytest.raises(OSError, match="File name too long"):  # mkdir fails after making the parents
        seeded_model("language").save_pretrained(tmp_path / "parent" / ("x" * 300))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]
