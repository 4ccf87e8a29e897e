"""The config schema: every shipped config passes; each kind of mistake is named with its path, found and expected."""

from __future__ import annotations

import copy

import pytest

from perceiver_torch.config_schema import (
    MAX_PARAMETERS,
    ConfigError,
    config_problems,
    parse_config_json,
    validate_config,
)
from perceiver_torch.registry import TASKS, preset, preset_names
from perceiver_torch.serialization import build_on_meta
from perceiver_torch.zoo.hub import entry_config
from perceiver_torch.zoo.manifest import entries

from .conftest import golden_config
from .tiny_sources import TEST_MANIFEST

GOLDEN = {"language": "language", "imagenet_conv": "imagenet", "imagenet_fourier": "imagenet",
          "imagenet_learned": "imagenet", "optical_flow": "optical_flow", "video_autoencoding": "video_autoencoding"}


def _shipped_configs():
    for name in preset_names():
        yield f"preset {name}", preset(name)["task"], preset(name)["config"]
    for family, task in GOLDEN.items():
        yield f"golden {family}", task, golden_config(family)
    for manifest in (None, TEST_MANIFEST):
        for name, entry in entries(manifest).items():
            yield f"zoo {name}", entry["task"], entry_config(entry)


SHIPPED = list(_shipped_configs())


def test_every_shipped_config_is_valid_and_builds():
    assert {task for _, task, _ in SHIPPED} == set(TASKS)
    assert sum(what.startswith("zoo ") for what, _, _ in SHIPPED) >= 4  # the tiny zoo models at least
    for what, task, config in SHIPPED:
        assert config_problems(task, config) == [], what
        assert sum(p.numel() for p in build_on_meta(task, config).parameters()) <= MAX_PARAMETERS, what


def _language(**changes) -> dict:
    config = copy.deepcopy(golden_config("language"))
    for path, value in changes.items():
        *parents, key = path.split("__")
        section = config
        for p in parents:
            section = section[p]
        if value is ...:
            del section[key]
        else:
            section[key] = value
    return config


@pytest.mark.parametrize("changes, expected", [
    ({"d_model": True}, "d_model: found True (bool); expected an integer >= 1 and <= 8192"),
    ({"d_model": 32.0}, "d_model: found 32.0 (float); expected an integer >= 1"),
    ({"d_model": "32"}, "d_model: found '32' (str); expected an integer"),
    ({"encoder__z_index_dim": -1}, "encoder.z_index_dim: found -1 (int); expected an integer >= 1"),
    ({"decoder__num_heads": ...}, "decoder.num_heads: missing; expected an integer >= 1"),
    ({"decoder__final_project": "no"}, "decoder.final_project: found 'no' (str); expected true or false"),
    ({"decoder__position_encoding_type": "learned"},
     "decoder.position_encoding_type: found 'learned' (str); expected one of ['trainable', 'fourier']"),
    ({"encoder__dropout_prob": float("nan")}, "encoder.dropout_prob: found nan (float); expected a finite number"),
    ({"decoder__trainable_position_encoding_kwargs__num_channels": 0},
     "decoder.trainable_position_encoding_kwargs.num_channels: found 0 (int)"),
    ({"encoder": [1]}, "encoder: found [1] (list); expected a mapping with keys from ["),
    ({"decoder__heads": 8}, "decoder.heads: unknown key; known keys here: ['final_project', "),
    # One step past each kind of bound: a cap, an open maximum, a closed maximum; null and a bool for a number.
    ({"decoder__output_index_dims": 0},  # a scalar where a scalar or a list may be: checked as an integer
     "decoder.output_index_dims: found 0 (int); expected an integer >= 1 and <= 65536 or a list of 1 integers"),
    ({"encoder__num_blocks": 65}, "encoder.num_blocks: found 65 (int); expected an integer >= 1 and <= 64"),
    ({"encoder__num_blocks": None}, "encoder.num_blocks: found None (NoneType); expected an integer >= 1 and <= 64"),
    ({"encoder__z_pos_enc_init_scale": True},
     "encoder.z_pos_enc_init_scale: found True (bool); expected a finite number >= 0.0 and <= 10.0"),
    ({"encoder__dropout_prob": 1.0}, "encoder.dropout_prob: found 1.0 (float); expected a finite number >= 0.0 and "
                                     "< 1.0"),
    ({"encoder__z_pos_enc_init_scale": 10.5},
     "encoder.z_pos_enc_init_scale: found 10.5 (float); expected a finite number >= 0.0 and <= 10.0"),
])
def test_each_mistake_is_named_with_path_found_and_expected(changes, expected):
    problems = config_problems("language", _language(**changes))
    assert len(problems) == 1 and problems[0].startswith(expected), problems


@pytest.mark.parametrize("changes", [
    {"encoder__num_blocks": 64}, {"encoder__dropout_prob": 0.999}, {"encoder__z_pos_enc_init_scale": 10},
    {"encoder__z_pos_enc_init_scale": 10.0}, {"encoder__z_pos_enc_init_scale": 0},
], ids=["at-cap", "below-open-max", "int-at-closed-max", "float-at-closed-max", "int-at-min"])
def test_values_at_each_bound_are_accepted(changes):
    # The other side of the refusals above: the bounds themselves are where they are documented to be.
    assert config_problems("language", _language(**changes)) == []


@pytest.mark.parametrize("image_size, valid", [
    ([224, 224], True), ([224], False), ([224, 224, 3], False), (224, False),
], ids=["two", "one", "three", "scalar"])
def test_an_imagenet_image_size_is_exactly_two_numbers(image_size, valid):
    config = dict(golden_config("imagenet_conv"), image_size=image_size)
    expected = [] if valid else [f"image_size: found {image_size!r} ({type(image_size).__name__}); expected a list "
                                 "of 2 integers, each an integer >= 1 and <= 2048"]
    assert config_problems("imagenet", config) == expected


def test_all_problems_are_reported_together():
    config = _language(d_model="x", vocab_size=0, encoder__num_blocks=..., extra=1)
    with pytest.raises(ConfigError) as info:
        validate_config("language", config, source="my.json")
    assert [p.split(":")[0] for p in info.value.problems] == ["extra", "d_model", "vocab_size", "encoder.num_blocks"]
    assert str(info.value).startswith("my.json is not a valid config: 4 problem(s)")


def test_sizes_are_capped_only_when_bounded():
    config = _language(encoder__num_blocks=1000)
    assert config_problems("language", config) == [
        "encoder.num_blocks: found 1000 (int); expected an integer >= 1 and <= 64"]
    assert config_problems("language", config, bounded=False) == []


def test_unknown_task_and_non_mapping_config():
    assert config_problems("speech", {}) == [
        "task: found 'speech' (str); expected one of ['language', 'imagenet', 'optical_flow', 'video_autoencoding']"]
    assert config_problems("language", [1, 2])[0].startswith("config: found [1, 2] (list); expected a mapping")


def test_a_huge_value_is_shown_cut_short():
    problem = config_problems("language", _language(d_model="x" * 10**6))[0]
    assert len(problem) < 200, problem


@pytest.mark.parametrize("text, expected", [
    ('{"d_model": NaN}', "non-standard JSON constant NaN"),
    ('{"d_model": 8, "d_model": 32}', "duplicate key 'd_model'"),  # json.loads alone keeps the 32
    ('{"d_model": 1', "not valid JSON"),
    ("[" * 100_000 + "]" * 100_000, "not valid JSON"),
    (b"\xff\xfe", "not valid JSON"),
    ("3", "found 3 (int); expected a JSON object"),
])
def test_config_json_is_parsed_strictly(text, expected):
    with pytest.raises(ConfigError, match="src.json") as info:
        parse_config_json(text, "src.json")
    assert expected in info.value.problems[0]


def test_an_integer_beyond_floats_range_is_no_finite_number():
    """JSON allows any number of digits; math.isfinite(10**400) raised a bare OverflowError out of every reader."""
    config = golden_config("optical_flow")
    config["flow_scale_factor"] = 10**400
    with pytest.raises(ConfigError, match=r"flow_scale_factor: found 1000.*; expected a finite number"):
        validate_config("optical_flow", config, source="m.json")


def test_constructor_refusals_become_config_errors():
    """What no single key shows (a width the heads do not divide) is refused when the model is built on meta."""
    with pytest.raises(ConfigError, match=r"\(model\): num_z_channels \(48\) must be divisible"):
        build_on_meta("language", _language(encoder__num_self_attend_heads=5))


def test_an_imagenet_classifier_must_project_to_its_classes():
    config = golden_config("imagenet_conv")
    config["decoder"]["final_project"] = False
    problems = config_problems("imagenet", config)
    assert problems == ["decoder.final_project: found false; expected true (or left out): without the final "
                        "projection the logits would be the decoder query's channels, not num_classes"]
    config["decoder"]["final_project"] = True
    assert config_problems("imagenet", config) == []


def test_a_language_decoder_queries_every_text_position():
    """Fewer queries than max_seq_len would have forward return fewer positions than the text has, silently."""
    config = golden_config("language")
    for dims in (32, [32], 65):
        config["decoder"]["output_index_dims"] = dims
        assert config_problems("language", config) == [
            f"decoder.output_index_dims: found {dims}; expected 64, the max_seq_len (one query per text position), "
            "or left out"]
    for dims in (64, [64]):
        config["decoder"]["output_index_dims"] = dims
        assert config_problems("language", config) == []
    del config["decoder"]["output_index_dims"]
    assert config_problems("language", config) == []
