"""Reduced-precision error budgets: Torch in bfloat16 / float16 / TF32 against JAX in float32, golden fixtures.

The budgets (converters/parity/budgets.json) are measured figures times a
margin (benchmarks/measure_precision.py); these tests check that every task
stays within them, that they are tight enough to catch a real precision bug
(Fourier features computed in bfloat16), and that the harness reports them.
bfloat16, float16 and emulated TF32 (converters.parity.tf32_emulation, both
roundings) run on the CPU in the default run (the golden models are small, so
float16 is quick even where the CPU has no native float16 arithmetic); float16
and real TF32 run again on a GPU under the `cuda` marker.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from converters.parity import run_parity
from converters.parity.budgets import all_budgets, budget
from converters.parity.cli import main as parity_main
from converters.parity.precision import agreement, normalised_error
from converters.parity.tf32_emulation import ROUNDINGS
from perceiver_torch.layers.precision import fp32_islands

from .conftest import GOLDEN_TASKS as FAMILIES
from .conftest import golden_config, golden_dir


def _run(family: str, device: str, dtype: str, mode: str = "cast", **kwargs):
    return run_parity(FAMILIES[family], golden_config(family), checkpoint=golden_dir(family) / "checkpoint.pickle",
                      inputs=golden_dir(family) / "io.npz", device=device, dtype=dtype, mode=mode, **kwargs)


def _assert_within_budget(report, dtype: str, mode: str) -> None:
    assert report.budget is not None, "a reduced-precision run without atol/rtol must use the measured budget"
    assert report.budget["mode"] == mode and "measured" in report.budget["source"]
    assert set(report.budget["normalised_error"]) >= set(report.outputs), "an output has no budget"
    assert report.budget["agreement"], "the budget checks no task-level agreement"
    assert report.passed, f"{dtype}/{mode} outside its budget:\n{report.table()}"


@pytest.mark.parametrize("mode", ["cast", "autocast"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_bfloat16_within_budget(family, mode, device):
    _assert_within_budget(_run(family, device, "bfloat16", mode), "bfloat16", mode)


@pytest.mark.parametrize("mode", ["cast", "autocast"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_float16_within_budget(family, mode, cuda_device):
    _assert_within_budget(_run(family, cuda_device, "float16", mode), "float16", mode)


@pytest.mark.parametrize("mode", ["cast", "autocast"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_float16_within_budget_on_cpu(family, mode):
    """The float16 budgets were measured on the CPU, whose float16 matmuls accumulate in float32 as CUDA's do."""
    _assert_within_budget(_run(family, "cpu", "float16", mode), "float16", mode)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_tf32_within_budget(family, cuda_device):
    report = _run(family, cuda_device, "tf32")
    assert report.tf32.startswith("real TF32")
    _assert_within_budget(report, "tf32", "cast")


@pytest.mark.parametrize("rounding", ROUNDINGS)
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_tf32_emulated_within_budget(family, rounding):
    """Emulated TF32 on the CPU (the budget is the worse of both roundings, measured, times 2)."""
    report = _run(family, "cpu", "tf32", tf32_rounding=rounding)
    assert report.tf32.startswith("TF32 emulated on cpu") and f"rounding {rounding}" in report.tf32
    assert "emulated on CPU" in report.budget["source"]
    _assert_within_budget(report, "tf32", "cast")
    if rounding == "nearest":
        # The emulation was in force: every output is >10x further from JAX than plain float32 (measured: TF32
        # 0.8e-3 to 5e-3 of the peak, float32 3e-7 to 3e-6).
        plain = _run(family, "cpu", "float32")
        for name, error in report.outputs.items():
            assert error.max_abs > 10 * plain.outputs[name].max_abs, (name, error, plain.outputs[name])


def test_budget_catches_fourier_features_in_bfloat16():
    """Fourier features from bfloat16 positions (the island switched off) blow the video budget.

    Measured: the normalised audio error goes from ~1.5e-2 to ~1.1e-1 without the island (README,
    "Precision"), above the budget of 2x the worst measured case with it.
    """
    with fp32_islands(position_features=False):
        report = _run("video_autoencoding", "cpu", "bfloat16")
    assert not report.passed, report.table()
    assert "audio" in report.failures()


def test_float32_and_float64_keep_their_tolerances():
    """No budget is involved outside the reduced precisions: the fixed 1e-4 default stays."""
    report = _run("language", "cpu", "float32")
    assert report.budget is None and report.atol == report.rtol == 1e-4 and report.passed
    assert "budget" not in report.to_json()


def test_explicit_tolerance_replaces_the_budget():
    report = run_parity("language", golden_config("language"), checkpoint=golden_dir("language") / "checkpoint.pickle",
                        inputs=golden_dir("language") / "io.npz", dtype="bfloat16", atol=1e-6, rtol=0.0)
    # bfloat16 logits are ~1e-1 off (8-bit mantissa): a float32-grade tolerance must fail, with no budget.
    assert report.budget is None and not report.passed


def test_every_task_and_precision_has_a_sourced_budget():
    for task in ("language", "imagenet", "optical_flow", "video_autoencoding"):
        for key in ("bfloat16/cast", "bfloat16/autocast", "float16/cast", "float16/autocast", "tf32/cast"):
            entry = budget(task, *key.split("/"))
            assert entry["source"] and entry["error"] and entry["agreement"], (task, key)
            for name, bound in entry["error"].items():
                # Budgets are measured x 2: a bound at 0 or >= 1 (100% of the output's peak) means a broken file.
                assert 0 < bound < 0.5, (task, key, name, bound)
    assert set(all_budgets()) == {"language", "imagenet", "optical_flow", "video_autoencoding"}


def test_budget_unknown_key_is_a_clear_error():
    with pytest.raises(ValueError, match="no float64/cast budget for task 'language'"):
        budget("language", "float64", "cast")


@pytest.mark.parametrize("kwargs, match", [
    (dict(dtype="float32", mode="autocast"), "mode='autocast' needs dtype 'bfloat16' or 'float16'"),
    (dict(dtype="bfloat16", tf32_rounding="nearest"), "tf32_rounding is only used with precision 'tf32'"),
    (dict(dtype="tf32", tf32_rounding="up"), "tf32_rounding must be one of"),
    (dict(dtype="tf32", device="cuda", tf32_rounding="nearest"), "on CUDA, cuBLAS and cuDNN round"),
    (dict(dtype="bfloat16", mode="fast"), "mode must be one of"),
])
def test_run_parity_rejects_bad_precision_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        run_parity("language", golden_config("language"), **kwargs)


def test_cli_bfloat16_reports_the_budget(tmp_path, capsys):
    out = tmp_path / "report.json"
    family = golden_dir("imagenet_conv")
    code = parity_main(["imagenet", "--checkpoint", str(family / "checkpoint.pickle"),
                        "--config", str(family / "config.json"), "--inputs", str(family / "io.npz"),
                        "--dtype", "bfloat16", "--autocast", "--json", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "budget (autocast): 2 x the worst of" in printed
    report = json.loads(out.read_text())
    assert report["dtype"] == "bfloat16" and report["passed"] is True and report["rtol"] == 0.0
    assert report["budget"]["agreement"]["top1_agreement"]["passed"] is True
    # The budget line compares like with like: the normalised error (max_abs over the reference's largest
    # magnitude, both printed) against the normalised budget.
    logits, scale = report["outputs"]["logits"], report["budget"]["reference_max_abs"]["logits"]
    assert f"  logits: normalised error {logits['max_abs'] / scale:.3e} (max_abs {logits['max_abs']:.3e} / " \
           f"max|reference| {scale:.3e}), budget {report['budget']['normalised_error']['logits']:.3e}: ok" in printed
    # The float32 report contract's keys are all still there.
    assert {"passed", "task", "reference", "outputs", "device", "dtype", "atol", "rtol", "versions"} <= set(report)


def test_cli_tf32_on_the_cpu_is_emulated(tmp_path, capsys):
    out = tmp_path / "report.json"
    family = golden_dir("language")
    code = parity_main(["language", "--checkpoint", str(family / "checkpoint.pickle"),
                        "--config", str(family / "config.json"), "--inputs", str(family / "io.npz"),
                        "--dtype", "tf32", "--tf32-rounding", "truncate", "--json", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "tf32: TF32 emulated on cpu (matmul/conv inputs rounded to TF32, rounding truncate" in printed
    assert "budget (cast): emulated on CPU (matmul/conv inputs rounded to TF32, both roundings, worst kept)" in printed
    report = json.loads(out.read_text())
    assert report["dtype"] == "tf32" and report["passed"] is True and "rounding truncate" in report["tf32"]


@pytest.mark.parametrize("argv, message", [
    (["--dtype", "float32", "--autocast"], "--autocast needs --dtype bfloat16 or float16"),
    (["--dtype", "float32", "--tf32-rounding", "truncate"], "--tf32-rounding is for emulated TF32"),
    (["--dtype", "tf32", "--device", "cuda", "--tf32-rounding", "nearest"], "--tf32-rounding is for emulated TF32"),
    (["--dtype", "bfloat16", "--atol", "0.1"], "give both --atol and --rtol"),
])
def test_cli_rejects_bad_precision_flags(argv, message, capsys):
    family = golden_dir("language")
    with pytest.raises(SystemExit) as exit_info:
        parity_main(["language", "--checkpoint", str(family / "checkpoint.pickle"),
                     "--config", str(family / "config.json"), *argv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_agreement_measures():
    logits = np.array([[[0.0, 2.0, 1.0], [3.0, 0.0, 1.0]]])
    flipped = np.array([[[0.0, 2.0, 1.0], [0.0, 3.0, 1.0]]])
    mask = np.array([[1, 1]])
    assert agreement("language", {"logits": flipped}, {"logits": logits}, {"input_mask": mask}) == \
        {"greedy_byte_agreement": 0.5}
    # A padded position does not count.
    assert agreement("language", {"logits": flipped}, {"logits": logits},
                     {"input_mask": np.array([[1, 0]])})["greedy_byte_agreement"] == 1.0
    classes = np.arange(10.0)[None].repeat(2, 0)
    other = classes.copy()
    other[1, 0] = 100.0  # example 1's top-1 changes to class 0, and class 5 leaves its top-5
    got = agreement("imagenet", {"logits": other}, {"logits": classes}, {})
    assert got == {"top1_agreement": 0.5, "top5_overlap": 0.9}
    flow = np.zeros((1, 2, 2, 2))
    moved = flow.copy()
    moved[0, 0, 0] = (3.0, 4.0)
    assert agreement("optical_flow", {"flow": moved}, {"flow": flow}, {}) == {"mean_epe": 1.25, "max_epe": 5.0}
    assert normalised_error(np.array([1.0, 2.5]), np.array([1.0, 2.0])) == 0.25
    assert normalised_error(np.array([np.nan, 2.0]), np.array([1.0, 2.0])) == float("inf")


@pytest.mark.parametrize("argv, message", [
    (["--only", "nope"], "--only nope: no such case (released ones need --released); known: language "),
    (["--write-budgets"], "--write-budgets derives the budgets from every case, golden and released"),
])
def test_measure_precision_refuses_a_run_that_would_measure_nothing_or_half(tmp_path, argv, message):
    """`--only` with an unknown name measured nothing and still wrote --out; `--write-budgets` without the released
    cases derived the budgets from the golden ones alone. Both are refused before anything runs or is written."""
    out = tmp_path / "results.json"
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "measure_precision.py"
    done = subprocess.run([sys.executable, str(script), *argv, "--out", str(out)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert not out.exists()
