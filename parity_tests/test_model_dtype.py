"""`dtype=` at load: `load_model`, `create_model` and `perceiver-zoo export --dtype` give the model that
`.to(dtype)` gives, each tensor cast as it is read, and refuse a dtype no model runs in before reading anything."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

import perceiver_torch as pt
from converters.tasks import run_upstream_layout
from perceiver_torch.zoo.cli import main as zoo_cli

from .conftest import GOLDEN_TASKS as FAMILIES
from .conftest import convert_golden, golden_io
from .zoo_support import TEST_HUB, TEST_MANIFEST, cached_files, hub_env


def _tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return dict(model.named_parameters()) | dict(model.named_buffers())


def _assert_same_model(actual: torch.nn.Module, expected: torch.nn.Module) -> None:
    got, want = _tensors(actual), _tensors(expected)
    assert sorted(got) == sorted(want)
    for name, tensor in want.items():
        assert got[name].dtype == tensor.dtype, f"{name}: {got[name].dtype} != {tensor.dtype}"
        assert torch.equal(got[name], tensor), f"{name}: values differ"
    assert all(isinstance(p, torch.nn.Parameter) and p.requires_grad for p in actual.parameters())
    assert not actual.training


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_load_model_with_a_dtype_is_the_loaded_model_cast(tmp_path, family):
    task = FAMILIES[family]
    path = convert_golden(task, family, tmp_path)
    loaded = pt.load_model(path, dtype=torch.bfloat16)
    cast = pt.load_model(path).to(torch.bfloat16)
    _assert_same_model(loaded, cast)
    assert {t.dtype for t in loaded.parameters()} == {torch.bfloat16}
    # The same tensors give the same outputs (bit for bit: same kernels, same inputs).
    inputs = {k.removeprefix("input/"): v for k, v in golden_io(family).items() if k.startswith("input/")}
    with torch.no_grad():
        new, old = run_upstream_layout(task, loaded, inputs), run_upstream_layout(task, cast, inputs)
    for key in old:
        assert np.array_equal(np.asarray(new[key]), np.asarray(old[key])), key


@pytest.mark.parametrize("dtype", ["float16", torch.float64, "float32"])
def test_load_model_takes_each_dtype_by_name_or_torch_dtype(tmp_path, dtype):
    path = convert_golden("language", "language", tmp_path)
    expected = dtype if isinstance(dtype, torch.dtype) else getattr(torch, dtype)
    _assert_same_model(pt.load_model(path, dtype=dtype), pt.load_model(path).to(expected))


@pytest.mark.parametrize("dtype", [torch.int64, "bf16", "torch.bfloat16", 16, torch.complex64])
def test_a_dtype_no_model_runs_in_is_refused_before_the_file_is_read(tmp_path, dtype):
    missing = tmp_path / "not-there.safetensors"  # were the file read first, this would be FileNotFoundError
    with pytest.raises(ValueError, match=r"dtype must be one of float32, bfloat16, float16, float64 .*got "):
        pt.load_model(missing, dtype=dtype)
    with pytest.raises(ValueError, match=r"dtype must be one of"):
        pt.create_model("tiny-language-perceiver", dtype=dtype, manifest=TEST_MANIFEST)


@pytest.mark.parametrize("pretrained", [True, False])
def test_create_model_with_a_dtype_is_the_zoo_model_cast(tmp_path, monkeypatch, pretrained):
    name = "tiny-vision-perceiver-conv"
    with hub_env(monkeypatch, TEST_HUB, tmp_path / "cache"):
        torch.manual_seed(0)  # untrained weights are random: the same seed for both
        loaded = pt.create_model(name, pretrained, dtype="bfloat16", manifest=TEST_MANIFEST)
        torch.manual_seed(0)
        cast = pt.create_model(name, pretrained, manifest=TEST_MANIFEST).to(torch.bfloat16)
    _assert_same_model(loaded, cast)
    assert {t.dtype for t in loaded.parameters()} == {torch.bfloat16}


def test_cli_exports_a_zoo_model_in_bfloat16(tmp_path, monkeypatch, capsys):
    out = tmp_path / "lm-bf16.pt2"
    with hub_env(monkeypatch, TEST_HUB, tmp_path / "cache"):
        code = zoo_cli(["--manifest", str(TEST_MANIFEST), "export", "tiny-language-perceiver", "--dtype", "bfloat16",
                        "-o", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert f"tiny-language-perceiver: exported (pt2, bfloat16, dynamic batch) to {out}" in printed
    # The program keeps SDPA's flash kernel for lengths known only at run time, eager takes the narrow-key path
    # for short ones: two bf16 roundings of one attention, within 2% of the logits' range (test_export).
    found = re.search(r"max \|exported - eager\| / max \|eager\|: (\S+) at batch 1, (\S+) at batch 3", printed)
    assert found, printed
    assert all(0 <= float(e) < 2e-2 for e in found.groups()), printed
    program = torch.export.load(out)
    floating = {t.dtype for t in program.state_dict.values() if t.is_floating_point()}
    assert floating == {torch.bfloat16}
    ids = torch.randint(0, 262, (4, 9))
    logits = program.module()(ids, torch.ones_like(ids))
    assert logits.shape == (4, 9, 262) and logits.dtype == torch.float32  # the final projection's float32 island


def test_cli_refuses_a_reduced_precision_onnx_export_before_the_pull(tmp_path, monkeypatch, capsys):
    with hub_env(monkeypatch, TEST_HUB, tmp_path / "cache") as served:
        with pytest.raises(SystemExit) as exit_info:
            zoo_cli(["--manifest", str(TEST_MANIFEST), "export", "tiny-language-perceiver", "--dtype", "bfloat16",
                     "--format", "onnx", "-o", str(tmp_path / "lm.onnx")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--dtype bfloat16 applies to pt2 exports; ONNX is exported in float32" in err and "Traceback" not in err
    assert served.requests == 0 and cached_files(tmp_path / "cache") == []
    assert not (tmp_path / "lm.onnx").exists()
