"""Conversion is strict: a missing, extra or mis-shaped parameter fails, naming it, writing nothing."""

import pickle

import numpy as np
import pytest

import converters
from converters import ConversionError, load_haiku_checkpoint

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
