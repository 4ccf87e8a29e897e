"""Conversion is strict: a missing, extra or mis-shaped parameter fails, naming it, writing nothing."""

import pickle
import sys

import numpy as np
import pytest

import converters
from converters import ConversionError, load_haiku_checkpoint
from converters.rules import LINEAR, ModuleRule, strict_merge

from .conftest import golden_dir


def _write_variant(tmp_path, mutate):
    ckpt = load_haiku_checkpoint(golden_dir("language") / "checkpoint.pickle")
    params = {m: dict(leaves) for m, leaves in ckpt.params.items()}
    mutate(params)
    path = tmp_path / "variant.pickle"
    path.write_bytes(pickle.dumps(params))
    return path


def _convert_expecting_failure(tmp_path, mutate, *patterns):
    src = _write_variant(tmp_path, mutate)
    out = tmp_path / "out.safetensors"
    with pytest.raises(ConversionError) as info:
        converters.convert("language", src, golden_dir("language") / "config.json", out)
    for pattern in patterns:
        assert pattern in str(info.value), str(info.value)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == [src], "no temp or partial output may be left behind"
    return info.value


def test_missing_parameter(tmp_path):
    def drop(p):
        del p["perceiver_encoder/~/self_attention_1/mlp/linear"]["w"]
    _convert_expecting_failure(
        tmp_path, drop,
        "missing in checkpoint: params:perceiver_encoder/~/self_attention_1/mlp/linear/w",
        "encoder.self_attends.1.mlp.dense1.weight",
    )


def test_extra_parameter(tmp_path):
    def add(p):
        p["perceiver_encoder/~/self_attention_9/mlp/linear"] = {"w": np.zeros((48, 48), np.float32)}
    _convert_expecting_failure(
        tmp_path, add, "unused in checkpoint: params:perceiver_encoder/~/self_attention_9/mlp/linear/w"
    )


def test_misshaped_parameter(tmp_path):
    def reshape(p):
        p["basic_decoder/cross_attention/attention/linear"]["w"] = np.zeros((32, 31), np.float32)
    _convert_expecting_failure(
        tmp_path, reshape,
        "shape mismatch: checkpoint params:basic_decoder/cross_attention/attention/linear/w (32, 31)",
        "decoder.cross_attend.attention.query.weight",
    )


def test_every_problem_is_listed_at_once(tmp_path):
    def several(p):
        del p["embed"]
        p["embedding_decoder"]["bias"] = np.zeros(3, np.float32)
    error = _convert_expecting_failure(tmp_path, several, "params:embed/embeddings", "params:embedding_decoder/bias")
    assert len(error.problems) == 2


def test_config_that_disagrees_with_checkpoint_fails(tmp_path):
    config = converters.load_config(golden_dir("language") / "config.json")
    config["encoder"]["num_self_attends_per_block"] = 2
    out = tmp_path / "o.safetensors"
    with pytest.raises(ConversionError, match="unused in checkpoint: params:perceiver_encoder/~/self_attention_2/"):
        converters.convert("language", golden_dir("language") / "checkpoint.pickle", config, out)
    assert not out.exists()


def test_unsupported_or_unknown_task_is_named(tmp_path):
    from perceiver_torch.registry import UnsupportedTaskError

    with pytest.raises(UnsupportedTaskError, match="unknown task 'speech'"):
        converters.convert("speech", golden_dir("language") / "checkpoint.pickle", {}, tmp_path / "x")


def test_malformed_layout_leaves_are_listed_together_with_path_shape_and_expectation(tmp_path):
    # Each used to stop the merge with numpy's words only: an IndexError (0-d scale), "cannot reshape array
    # of size 6 into shape (3,)", "axes don't match array" (1-d kernel). The 1-d kernel here is larger than
    # DEFER_BYTES, so it takes the StoredArray path (the layout planned on the file's array).
    ckpt = load_haiku_checkpoint(golden_dir("imagenet_conv") / "checkpoint.pickle")
    stem = "image_preprocessor/~/conv2_d_downsample/~"
    params = {m: dict(leaves) for m, leaves in ckpt.params.items()}
    state = {m: dict(leaves) for m, leaves in ckpt.state.items()}
    params[f"{stem}/batchnorm"].update(scale=np.float32(1.0).reshape(()), offset=np.zeros((2, 3), np.float32))
    params[f"{stem}/conv"]["w"] = np.zeros(20_000, np.float32)
    state[f"{stem}/batchnorm/~/mean_ema"]["average"] = np.zeros((1, 64, 1, 1), np.float32)
    src = tmp_path / "malformed.pickle"
    src.write_bytes(pickle.dumps({"params": params, "state": state}))
    out = tmp_path / "out.safetensors"
    with pytest.raises(ConversionError) as info:
        converters.convert("imagenet", src, golden_dir("imagenet_conv") / "config.json", out)
    message = str(info.value)
    assert str(src) in message.splitlines()[0]
    for expected in (
        f"checkpoint params:{stem}/batchnorm/scale () -> input_preprocessor.convnet.batchnorms.0.weight: "
        "squeeze_to_channels takes [1, ..., 1, C], model expects (64,)",
        f"checkpoint params:{stem}/batchnorm/offset (2, 3) -> input_preprocessor.convnet.batchnorms.0.bias",
        f"checkpoint params:{stem}/conv/w (20000,) -> input_preprocessor.convnet.convs.0.weight: conv_hwio_to_oihw "
        "takes [*spatial, in, out] (rank 3 or more), model expects (64, 3, 7, 7)",
        f"checkpoint state:{stem}/batchnorm/~/mean_ema/average (1, 64, 1, 1) -> "
        "input_preprocessor.convnet.batchnorms.0.running_mean",
    ):
        assert expected in message, message
    assert len(info.value.problems) == 4, message
    assert list(tmp_path.iterdir()) == [src]


def test_a_transform_without_a_declared_shape_still_reports_a_mismatch():
    from converters.rules import Leaf, ModuleRule, strict_merge

    def swap_last_axes(w):
        return w.swapaxes(2, 3)  # AxisError (a ValueError) on fewer than 4 axes

    rule = ModuleRule("conv", "conv", (Leaf("weight", "weight", swap_last_axes),))
    with pytest.raises(ConversionError, match=r"checkpoint conv.weight \(3,\) -> conv.weight: swap_last_axes takes "
                                              r"another shape, model expects \(2, 2, 3, 3\)"):
        strict_merge({"conv.weight": np.zeros(3, np.float32)}, {"conv.weight": (2, 2, 3, 3)}, [rule],
                     key=lambda collection, module, name: f"{module}.{name}")


def test_a_model_parameter_no_rule_fills_is_named(tmp_path, monkeypatch):
    """The model has one state-dict entry more than the table's rules fill: the conversion fails naming it (a
    model that grew a parameter its converter does not know would otherwise keep its random initialisation)."""
    convert_module = sys.modules["converters.convert"]  # `converters.convert` is the function
    real = convert_module.target_shapes

    def one_more(task, config):
        return {**real(task, config), "decoder.extra_scale": (3, 5)}

    monkeypatch.setattr(convert_module, "target_shapes", one_more)
    src = golden_dir("language") / "checkpoint.pickle"
    out = tmp_path / "out.safetensors"
    with pytest.raises(ConversionError) as info:
        converters.convert("language", src, golden_dir("language") / "config.json", out)
    assert info.value.problems == ["not filled in model: decoder.extra_scale (3, 5)"], str(info.value)
    assert not out.exists() and list(tmp_path.iterdir()) == []


_LIN = {"params:lin/w": np.zeros((3, 4), np.float32), "params:lin/b": np.zeros(4, np.float32)}
_LIN2 = {"params:lin2/w": np.ones((3, 4), np.float32), "params:lin2/b": np.ones(4, np.float32)}
_TARGET_A = {"a.weight": (4, 3), "a.bias": (4,)}


def _rules(*pairs):
    return [ModuleRule(haiku, torch, LINEAR) for haiku, torch in pairs]


@pytest.mark.parametrize("source, targets, pairs, problems", [
    # A rule table that reuses one leaf would silently copy it into two parameters.
    (_LIN, {**_TARGET_A, "b.weight": (4, 3), "b.bias": (4,)}, [("lin", "a"), ("lin", "b")],
     ["source params:lin/w used twice (for a.weight and b.weight)",
      "source params:lin/b used twice (for a.bias and b.bias)",
      "not filled in model: b.bias (4,)", "not filled in model: b.weight (4, 3)"]),
    # One that fills a parameter twice would silently keep the second leaf.
    ({**_LIN, **_LIN2}, _TARGET_A, [("lin", "a"), ("lin2", "a")],
     ["target a.weight filled twice (second time from params:lin2/w)",
      "target a.bias filled twice (second time from params:lin2/b)",
      "unused in checkpoint: params:lin2/b (4,)", "unused in checkpoint: params:lin2/w (3, 4)"]),
    # A rank-3 kernel is named as what the transform takes, not as the shape its transpose happens to give.
    ({**_LIN, "params:lin/w": np.zeros((1, 3, 4), np.float32)}, _TARGET_A, [("lin", "a")],
     ["shape mismatch: checkpoint params:lin/w (1, 3, 4) -> a.weight: transpose_linear takes [in, out] (rank 2), "
      "model expects (4, 3)"]),
    (_LIN, {}, [("lin", "nowhere")],
     ["checkpoint params:lin/w maps to nowhere.weight, which the model does not have",
      "checkpoint params:lin/b maps to nowhere.bias, which the model does not have"]),
], ids=["leaf-used-twice", "target-filled-twice", "kernel-rank-3", "target-missing"])
def test_a_rule_table_that_reuses_a_leaf_or_target_or_names_no_parameter_fails(source, targets, pairs, problems):
    with pytest.raises(ConversionError) as info:
        strict_merge(source, targets, _rules(*pairs))
    assert info.value.problems == problems
