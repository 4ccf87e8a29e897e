"""transformers interop: import and export are exact inverses, and match transformers where it agrees with upstream."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import transformers
from safetensors.torch import load_file

from converters import convert, from_transformers, to_transformers
from converters.convert import target_shapes
from converters.rules import strict_merge
from converters.transformers import divergence
from converters.transformers.config_map import ConfigMismatchError, from_hf, to_hf
from converters.transformers.exporter import export_state
from converters.transformers.importer import import_state
from converters.transformers.tables import export_rules, hf_only, import_rules, torch_key
from parity_tests.conftest import golden_config, golden_dir
from parity_tests.transformers_support import SMALL, agree_atol, golden_magnitude, save_small, small_hf_model
from perceiver_torch.registry import preset, preset_names
from perceiver_torch.serialization import load_model, read_metadata

ARCHITECTURES = sorted(SMALL)


def _tensors_equal(a: dict, b: dict) -> list[str]:
    """Keys whose tensors differ in name set, dtype, shape or any bit."""
    diff = sorted(set(a) ^ set(b))
    diff += [k for k in sorted(set(a) & set(b)) if a[k].dtype != b[k].dtype or not torch.equal(a[k], b[k])]
    return diff


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_import_then_export_is_bit_exact_and_loads_in_transformers(architecture, tmp_path):
    task = SMALL[architecture][0]
    src = save_small(architecture, tmp_path / "hf")
    converted = from_transformers(task, src, tmp_path / "ours.safetensors")
    assert read_metadata(converted)["source_format"] == f"transformers:{architecture}"
    out = to_transformers(converted, tmp_path / "exported")
    assert _tensors_equal(load_file(str(src / "model.safetensors")), load_file(str(out / "model.safetensors"))) == []
    model, info = getattr(transformers, architecture).from_pretrained(str(out), output_loading_info=True)
    assert {k: v for k, v in info.items() if v} == {}
    config = json.loads((out / "config.json").read_text())
    assert config["hidden_act"] == "gelu_pytorch_tanh" and config["architectures"] == [architecture]
    assert architecture in (out / "README.md").read_text()
    assert (out / "preprocessor_config.json").exists() == (task == "imagenet")  # transformers has no other processor
    assert (out / "tokenizer_config.json").exists() == (task == "language")
    # ... and importing the export gives back the converted tensors, bit for bit.
    again = from_transformers(task, out, tmp_path / "again.safetensors")
    assert _tensors_equal(load_file(str(converted)), load_file(str(again))) == []


@pytest.mark.parametrize("name", preset_names())
def test_released_configs_map_both_ways_and_every_released_tensor_is_in_the_table(name):
    entry = preset(name)
    task, config = entry["task"], entry["config"]
    architecture, fields = to_hf(task, config)
    hf = transformers.PerceiverConfig(**fields, architectures=[architecture]).to_dict()
    assert from_hf(task, hf) == (architecture, config)
    # Shapes only: zero-stride views stand in for the released tensors (no memory).
    with torch.device("meta"):
        hf_shapes = {k: tuple(v.shape) for k, v in getattr(transformers, architecture)(
            transformers.PerceiverConfig(**fields)).state_dict().items()}
    views = {k: np.broadcast_to(np.float32(0), s) for k, s in hf_shapes.items()}
    ours = strict_merge(views, target_shapes(task, config), import_rules(task, config), hf_only(task, config),
                        key=torch_key)
    assert sum(v.size for v in ours.values()) == entry["num_params"] + _buffers(task, config)
    back = strict_merge(ours, {k: s for k, s in hf_shapes.items() if k not in {i.key for i in hf_only(task, config)}},
                        export_rules(task, config), key=torch_key)
    assert {k: v.shape for k, v in back.items()} == {k: s for k, s in hf_shapes.items() if k in back}


def _buffers(task: str, config: dict) -> int:
    """Batch-norm running statistics: state, not parameters, in the released count."""
    prep = config.get("input_preprocessor", {}) if task == "imagenet" else {}
    return 2 * 64 if prep.get("prep_type") == "conv" else 0




@pytest.mark.parametrize("architecture", ["PerceiverForMaskedLM", "PerceiverForImageClassificationFourier",
                                          "PerceiverForImageClassificationConvProcessing",
                                          "PerceiverForOpticalFlow", "PerceiverForMultimodalAutoencoding"])
def test_outputs_equal_transformers_where_it_agrees_with_upstream(architecture, tmp_path):
    task = SMALL[architecture][0]
    hf = small_hf_model(architecture, hidden_act="gelu_pytorch_tanh")
    hf.save_pretrained(str(tmp_path / "hf"))
    ours = load_model(from_transformers(task, tmp_path / "hf", tmp_path / "ours.safetensors"))
    meta = read_metadata(tmp_path / "ours.safetensors")
    config = json.loads(meta["config"])
    inputs = divergence.random_inputs(task, config, batch=2, seed=1)
    if task == "language":
        inputs["mask"] = torch.ones_like(inputs["mask"])  # no padding: transformers drops the query mask
        inputs["ids"] = inputs["ids"].clamp(min=6)
    # Switched to upstream's behaviour where transformers' code fixes another: the conv stem's padding
    # and kernel orientation, the video's Fourier resolution (the tanh GELU is already in the config).
    divergence.hf_model.switch_off(hf, task, config, {"gelu", "conv_padding", "conv_kernel", "video_positions"})
    got = divergence.output_side(task, divergence.run_hf(task, hf, inputs, on=set()), set())
    want = divergence.run_ours(task, ours, inputs)
    for key, value in want.items():
        assert (got[key] - value).abs().max() <= agree_atol(value.abs().max()), key


GOLDEN = {"language": "language", "imagenet_conv": "imagenet", "imagenet_fourier": "imagenet",
          "imagenet_learned": "imagenet", "optical_flow": "optical_flow", "video_autoencoding": "video_autoencoding"}


@pytest.mark.parametrize("family", sorted(GOLDEN))
def test_golden_fixture_export_names_what_transformers_fixes(family, tmp_path):
    """transformers' classes fix sizes the small golden configs change (Fourier bands, decoder heads, ...)."""
    converted = convert(GOLDEN[family], golden_dir(family) / "checkpoint.pickle", golden_dir(family) / "config.json",
                        tmp_path / "golden.safetensors")
    with pytest.raises(ConfigMismatchError, match="transformers fixes it at") as info:
        to_transformers(converted, tmp_path / "out")
    assert info.value.problems and not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["golden.safetensors"]


@pytest.mark.parametrize("family", sorted(GOLDEN))
def test_golden_fixture_round_trips_through_transformers_classes_sized_like_it(family, tmp_path):
    """Golden Haiku -> convert -> transformers' own class (sized like the fixture) -> import back: bit-exact,
    and with every divergence switched off transformers computes upstream's outputs."""
    task, config = GOLDEN[family], golden_config(family)
    source = golden_dir(family)
    converted = load_file(str(convert(task, source / "checkpoint.pickle", source / "config.json",
                                      tmp_path / "golden.safetensors")))
    _, _, hf_state = export_state(task, config, converted, strict=False)
    model = divergence.hf_model.load(task, config, hf_state, strict=False)  # loads strictly: every key, every shape
    back = {k: torch.from_numpy(v) for k, v in import_state(task, config, model.state_dict()).items()}
    assert _tensors_equal(converted, back) == []
    rows = divergence.report(divergence.golden_case(golden_dir(family)))
    none = rows[0]
    assert none["setting"] == "none"
    for output, metrics in none["outputs"].items():
        if "query_mask" not in output:  # padded positions: transformers drops the mask (catalog.py)
            assert metrics["max_abs"] <= agree_atol(golden_magnitude(family)), (output, metrics)
