"""save_model: every task model round-trips through load_model; what load_model would refuse is refused first."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import perceiver_torch as pt
from converters.tasks import run_upstream_layout
from perceiver_torch.registry import TASK_MODELS
from perceiver_torch.serialization import read_metadata

from .conftest import GOLDEN_TASKS, golden_config, golden_io, seeded_model

# One golden family per registered task (ImageNet's conv variant: it alone has buffers, its batch norm's).
FAMILIES = {"language": "language", "imagenet": "imagenet_conv", "optical_flow": "optical_flow",
            "video_autoencoding": "video_autoencoding"}


def test_every_registered_task_is_covered():
    assert set(FAMILIES) == set(TASK_MODELS) and all(GOLDEN_TASKS[f] == t for t, f in FAMILIES.items())


def _trained(task: str) -> torch.nn.Module:
    """A model of the golden config whose weights are not the initialiser's: what a fine-tune leaves."""
    model = seeded_model(FAMILIES[task])
    with torch.no_grad():
        for tensor in model.state_dict().values():
            tensor.add_(0.01 * torch.randn_like(tensor))
    return model


def _inputs(task: str) -> dict:
    io = golden_io(FAMILIES[task])
    return {k.removeprefix("input/"): v for k, v in io.items() if k.startswith("input/")}


@pytest.mark.parametrize("task", sorted(TASK_MODELS))
def test_a_saved_model_loads_back_bit_for_bit(task, tmp_path):
    model = _trained(task).eval()
    path = pt.save_model(model, tmp_path / "sub" / "model.safetensors", metadata={"note": "fine-tuned"})
    loaded = pt.load_model(path)
    assert type(loaded) is type(model) and loaded.config == model.config and not loaded.training
    saved, back = model.state_dict(), loaded.state_dict()
    assert list(saved) == list(back)
    for name in saved:
        assert torch.equal(saved[name], back[name]), name
    assert read_metadata(path)["note"] == "fine-tuned"
    expected = run_upstream_layout(task, model, _inputs(task), "cpu", torch.float32)
    for name, value in run_upstream_layout(task, loaded, _inputs(task), "cpu", torch.float32).items():
        np.testing.assert_array_equal(value, expected[name], err_msg=name)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_reduced_precision_weights_are_written_as_float32_and_come_back_exactly(dtype, tmp_path):
    model = _trained("imagenet").to(dtype)
    path = pt.save_model(model, tmp_path / "low.safetensors")
    as_float32, as_dtype = pt.load_model(path), pt.load_model(path, dtype=dtype)
    for name, tensor in model.state_dict().items():
        assert as_float32.state_dict()[name].dtype == torch.float32, name
        assert torch.equal(as_dtype.state_dict()[name], tensor), name


def test_float64_is_refused_not_rounded(tmp_path):
    path = tmp_path / "wide.safetensors"
    with pytest.raises(ValueError, match=r"save_model writes float32, which would round 89 tensor\(s\) "
                                         r"\(input_preprocessor.embed.weight \(float64\), .* and 86 more\)\. Cast"):
        pt.save_model(_trained("language").double(), path)
    assert list(tmp_path.iterdir()) == []


def test_non_finite_weights_are_refused_by_name(tmp_path):
    model = _trained("optical_flow")
    name, tensor = next(iter(model.state_dict().items()))
    tensor.view(-1)[0] = float("nan")
    with pytest.raises(ValueError, match=rf"non-finite values \(NaN or Inf\) in 1 tensor\(s\): {name}; load_model"):
        pt.save_model(model, tmp_path / "nan.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_a_model_its_config_no_longer_describes_is_refused_with_both_sides(tmp_path):
    model = _trained("imagenet")
    head = next(name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)
                and module.out_features == model.config["num_classes"])
    old = model.get_submodule(head)
    parent, _, leaf = head.rpartition(".")
    setattr(model.get_submodule(parent), leaf, torch.nn.Linear(old.in_features, 3))  # a new 3-class head
    with pytest.raises(ValueError, match=rf"(?s)do not match the imagenet model its config builds.*tensor "
                                         rf"{head}.weight: shape \[3, {old.in_features}\]; the model expects "
                                         rf"\[{old.out_features}, {old.in_features}\]"):
        pt.save_model(model, tmp_path / "head.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_modules_that_are_not_task_models_are_refused():
    with pytest.raises(TypeError, match=r"save_model writes the task models \(PerceiverForMaskedLM, .*\); got "
                                        r"Linear\. For a PerceiverIO or any other module, save its state_dict"):
        pt.save_model(torch.nn.Linear(2, 2), "x.safetensors")


@pytest.mark.parametrize("metadata, error, message", [
    ({"task": "imagenet"}, ValueError, r"metadata keys \['task'\] are written by save_model itself"),
    ({"step": 3}, TypeError, r"metadata must map str to str"),
    ("note", TypeError, r"metadata must be a mapping of str to str; got str"),
    ({"n": "caf\udce9"}, ValueError, r"metadata key 'n': not encodable as UTF-8 \(surrogates not allowed\)"),
    ({"big": "a" * (17 << 20)}, ValueError, r"the safetensors header would be \d+ bytes, past the 16777216 a reader"),
])
def test_bad_metadata_is_refused(metadata, error, message, tmp_path):
    with pytest.raises(error, match=message):
        pt.save_model(_trained("language"), tmp_path / "m.safetensors", metadata=metadata)
    assert list(tmp_path.iterdir()) == []


def test_an_invalid_config_is_refused_before_anything_is_written(tmp_path):
    config = golden_config("language")
    config["comment"] = "fine-tuned"  # not a key of the schema: the constructor refuses it
    with pytest.raises(pt.ConfigError, match=r"(?s)^PerceiverForMaskedLM\(config\) is not a valid config.*comment"):
        pt.PerceiverForMaskedLM(config)
    model = pt.PerceiverForMaskedLM(golden_config("language"))
    model.config["comment"] = "fine-tuned"  # added after the build: save_model names it
    with pytest.raises(ValueError, match=r"comment: added \('fine-tuned'\)"):
        pt.save_model(model, tmp_path / "m.safetensors")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("change, listed", [
    (lambda c: c["encoder"].update(num_blocks=3), r"encoder\.num_blocks: 1 -> 3"),  # shared weights: no new shape
    (lambda c: c["encoder"].update(num_self_attend_heads=8), r"encoder\.num_self_attend_heads: 4 -> 8"),
    (lambda c: c["encoder"].update(use_query_residual=False), r"encoder\.use_query_residual: True -> False"),
    (lambda c: c["decoder"].pop("num_heads"), r"decoder\.num_heads: removed \(was 4\)"),
])
def test_a_config_changed_after_the_build_is_refused_with_each_change(change, listed, tmp_path):
    """Settings that change no tensor's shape would load back as another model: the config must be the built one."""
    model = _trained("language")
    change(model.config)
    with pytest.raises(ValueError, match=rf"(?s)PerceiverForMaskedLM\.config was changed after the model was built "
                                         rf"\(1 change\(s\)\).*{listed}"):
        pt.save_model(model, tmp_path / "m.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_the_callers_config_dict_can_be_reused(tmp_path):
    """A model keeps its own copy of the config it was built from: editing the caller's dict changes nothing."""
    config = golden_config("language")
    model = pt.PerceiverForMaskedLM(config)
    config["encoder"]["num_blocks"] = 4
    assert model.config["encoder"]["num_blocks"] == 1
    assert pt.load_model(pt.save_model(model, tmp_path / "m.safetensors")).config == model.config


def test_meta_tensors_are_refused_by_name(tmp_path):
    with pytest.raises(ValueError, match=r"tensor\(s\) are on the meta device, with no values to write"):
        pt.save_model(_trained("language").to("meta"), tmp_path / "m.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_a_compiled_model_is_saved_as_the_model_it_wraps(tmp_path):
    model = _trained("language")
    loaded = pt.load_model(pt.save_model(torch.compile(model), tmp_path / "m.safetensors"))  # nothing compiles
    assert all(torch.equal(t, model.state_dict()[n]) for n, t in loaded.state_dict().items())


def test_a_directory_is_not_a_file_name(tmp_path):
    with pytest.raises(IsADirectoryError):
        pt.save_model(_trained("language"), tmp_path)


def test_saving_over_the_file_a_model_was_loaded_from(tmp_path):
    """The fine-tune-in-place case: load_model maps the file, save_model replaces it (a new file, renamed in)."""
    path = pt.save_model(_trained("language"), tmp_path / "lm.safetensors")
    model = pt.load_model(path)
    original = {name: t.clone() for name, t in model.state_dict().items()}
    with torch.no_grad():
        for tensor in model.parameters():
            tensor.mul_(2)
    pt.save_model(model, path)
    for name, tensor in pt.load_model(path).state_dict().items():
        assert torch.equal(tensor, 2 * original[name]), name
    assert [p.name for p in tmp_path.iterdir()] == ["lm.safetensors"]  # no temp file left
