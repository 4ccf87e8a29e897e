"""Every registered task is complete on both sides of the one-way architecture (loops over the registries).

A task is registered once in the runtime (`perceiver_torch.registry.TASK_MODELS`) and once on the producer
side (`converters.tasks.TASKS`); these tests hold the two equal and check that each registration leads to
every piece: model class, released preset, conversion table, upstream-layout runner, JAX builder, a golden
fixture, and a parity test configuration.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from converters import convert_tree, load_haiku_checkpoint
from converters.jax_reference import example_inputs
from converters.tasks import TASKS, run_upstream_layout, task_spec
from perceiver_torch import ConfigError
from perceiver_torch.registry import (
    TASK_MODELS,
    UnsupportedTaskError,
    build_model,
    build_preset,
    model_class,
    preset,
    preset_names,
)

from .conftest import GOLDEN, GOLDEN_TASKS, golden_config

TESTS = Path(__file__).parent
# The golden fixture family each task's golden tests use (more than one for ImageNet's three variants).
GOLDEN_FAMILIES = {task: [f for f, t in GOLDEN_TASKS.items() if t == task] for task in GOLDEN_TASKS.values()}


def test_every_golden_fixture_family_is_mapped_to_its_task():
    # Tests parametrized over GOLDEN_TASKS cover every fixture directory, none silently left out.
    assert set(GOLDEN_TASKS) == {p.name for p in GOLDEN.iterdir() if p.is_dir()}


def test_both_sides_register_the_same_tasks():
    assert list(TASKS) == list(TASK_MODELS) == list(GOLDEN_FAMILIES)


def test_unknown_tasks_are_refused_by_name_on_both_sides():
    for lookup in (model_class, task_spec):
        with pytest.raises(UnsupportedTaskError, match=r"unknown task 'speech'; expected one of \['language'"):
            lookup("speech")


def test_a_task_or_preset_that_is_not_a_string_is_named():
    with pytest.raises(TypeError, match=r"^task must be a str, one of \['language'.*; got list \['imagenet'\]\.$"):
        build_model(["imagenet"], golden_config("imagenet_fourier"))
    with pytest.raises(TypeError, match=r"^preset name must be a str, one of \[.*; got dict \{\}\.$"):
        build_preset({})


@pytest.mark.parametrize("task", list(TASKS))
def test_each_task_has_every_piece(task):
    spec = task_spec(task)
    assert spec.model_class is TASK_MODELS[task]
    assert callable(spec.table.rules) and isinstance(spec.table.IGNORED, (tuple, list, frozenset, set))
    assert callable(spec.jax_build_fn())
    assert any(preset(name)["task"] == task for name in preset_names())
    assert (TESTS / f"test_parity_{task}.py").is_file(), "each task has a JAX-vs-Torch parity test configuration"


@pytest.mark.parametrize("task, family", [(t, f) for t, fams in GOLDEN_FAMILIES.items() for f in fams])
def test_each_golden_fixture_converts_and_runs_through_the_registered_pieces(task, family):
    config = golden_config(family)
    checkpoint = load_haiku_checkpoint(GOLDEN / family / "checkpoint.pickle")
    model = build_model(task, config).eval()
    model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in convert_tree(task, checkpoint, config).items()})
    outputs = run_upstream_layout(task, model, example_inputs(task, config, batch=1, seed=0))
    assert outputs and all(torch.isfinite(torch.from_numpy(v)).all() for v in outputs.values())


@pytest.mark.parametrize("change, problem", [
    # Each was built silently (int() took 2.7 as 2 classes and True as 1)
    # or failed deep inside torch or Python ("'NoneType' object is not subscriptable", KeyError 'image_size').
    (lambda c: {**c, "num_classes": 2.7}, r"num_classes: found 2\.7 \(float\); expected an integer >= 0"),
    (lambda c: {**c, "num_classes": True}, r"num_classes: found True \(bool\)"),
    (lambda c: {**c, "num_classes": -1}, r"num_classes: found -1 \(int\)"),
    (lambda c: {**c, "encoder": {**c["encoder"], "num_blocks": 0}}, r"encoder\.num_blocks: found 0 \(int\)"),
    (lambda c: None, r"config: found None \(NoneType\); expected a mapping"),
    (lambda c: {k: v for k, v in c.items() if k != "image_size"}, r"image_size: missing"),
])
def test_build_model_checks_the_config_against_its_schema(change, problem):
    with pytest.raises(ConfigError, match=rf"(?s)^build_model\('imagenet'\) config is not a valid config.*{problem}"):
        build_model("imagenet", change(golden_config("imagenet_fourier")))


@pytest.mark.parametrize("task", sorted(TASK_MODELS))
def test_a_task_class_built_directly_checks_its_config_as_build_model_does(task, monkeypatch):
    """`PerceiverForX(config)` without build_model: a bad config is named before anything is built (it used to
    fail deep inside torch: "empty(): argument 'size' ... must be tuple of ints")."""
    cls, config = TASK_MODELS[task], golden_config(GOLDEN_FAMILIES[task][0])
    size_key = {"language": "d_model", "imagenet": "num_classes", "optical_flow": "num_bands",
                "video_autoencoding": "num_frames"}[task]  # an integer the model's shapes follow
    monkeypatch.setattr(torch.nn.Module, "register_parameter", _never_registered)
    for bad, problem in ((None, r"config: found None \(NoneType\); expected a mapping"),
                         ({**config, size_key: 2.5}, rf"{size_key}: found 2\.5 \(float\)"),
                         ({**config, size_key: True}, rf"{size_key}: found True \(bool\)"),
                         ({k: v for k, v in config.items() if k != "encoder"}, r"encoder: missing")):
        with pytest.raises(ConfigError, match=rf"(?s)^{cls.__name__}\(config\) is not a valid config.*{problem}"):
            cls(bad)
    monkeypatch.undo()
    assert cls(config).config == build_model(task, config).config == config


def _never_registered(*args, **kwargs):
    raise AssertionError("a parameter was built before the config was checked")


def test_build_model_does_not_cap_sizes_as_it_does_for_untrusted_files():
    config = golden_config("imagenet_fourier")
    assert build_model("imagenet", {**config, "num_classes": 200_000}).num_classes == 200_000  # the file cap: 131072
