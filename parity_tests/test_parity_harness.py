"""The parity harness itself: it reports real mismatches, on the right output, with usable figures."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import converters
from converters.parity import compare, load_inputs, run_parity
from converters.parity.inputs import InputsError
from perceiver_torch.registry import build_model

from .conftest import _cuda_missing, golden_config, golden_dir, golden_io


def _golden_model(task: str, mutate=None) -> torch.nn.Module:
    """A golden checkpoint converted through convert_tree, optionally with its state dict mutated."""
    checkpoint = converters.load_haiku_checkpoint(golden_dir(task) / "checkpoint.pickle")
    state = {k: torch.from_numpy(np.ascontiguousarray(v))
             for k, v in converters.convert_tree(task, checkpoint, golden_config(task)).items()}
    if mutate is not None:
        mutate(state)
    model = build_model(task, golden_config(task))
    model.load_state_dict(state, strict=True)
    return model


def _golden_language_model(mutate=None) -> torch.nn.Module:
    return _golden_model("language", mutate)


def _drop_transpose(state):
    # A square weight (48 -> 48 at widening factor 1), so a missing transpose still loads.
    key = "encoder.self_attends.0.mlp.dense1.weight"
    assert state[key].shape[0] == state[key].shape[1]
    state[key] = state[key].T.contiguous()


def _swap_query_key(state):
    prefix = "encoder.self_attends.1.attention"
    for leaf in ("weight", "bias"):
        q, k = f"{prefix}.query.{leaf}", f"{prefix}.key.{leaf}"
        state[q], state[k] = state[k], state[q]


def _run_golden(model):
    return run_parity("language", golden_config("language"), checkpoint=golden_dir("language") / "checkpoint.pickle",
                      inputs=golden_dir("language") / "io.npz", torch_model=model)


def test_correct_conversion_passes():
    report = _run_golden(_golden_language_model())
    assert report.passed, report.table()
    assert report.outputs["logits"].max_abs < 1e-4
    assert report.expected["logits"]["torch"].max_abs < 1e-4


def test_atol_per_unit_range_scales_the_tolerance_by_each_outputs_range():
    kwargs = dict(checkpoint=golden_dir("language") / "checkpoint.pickle", inputs=golden_dir("language") / "io.npz",
                  torch_model=_golden_language_model(), rtol=0.0)
    scale = max(1.0, float(np.abs(golden_io("language")["output/logits"]).max()))  # logits reach ~22 here
    assert scale > 10
    # 1e-6 absolute is below float32 rounding on these logits; 1e-6 per unit of their range is above it.
    plain = run_parity("language", golden_config("language"), atol=1e-6, **kwargs)
    scaled = run_parity("language", golden_config("language"), atol=1e-6, atol_per_unit_range=True, **kwargs)
    assert not plain.passed and scaled.passed, (plain.table(), scaled.table())
    # The tolerance is the JAX reference's range (within float32 of the stored upstream outputs) times atol.
    assert scaled.atol == pytest.approx(1e-6 * scale, rel=1e-4)
    assert scaled.to_json()["atol_per_unit_range"] is True and "atol_per_unit_range" not in plain.to_json()


@pytest.mark.parametrize("mutate", [_drop_transpose, _swap_query_key], ids=["missing_transpose", "swapped_q_k"])
def test_broken_conversion_is_still_caught_with_the_scaled_tolerance(mutate):
    model = _golden_language_model(mutate)
    report = run_parity("language", golden_config("language"), checkpoint=golden_dir("language") / "checkpoint.pickle",
                        inputs=golden_dir("language") / "io.npz", torch_model=model, atol_per_unit_range=True)
    assert not report.passed


@pytest.mark.parametrize("mutate", [_drop_transpose, _swap_query_key], ids=["missing_transpose", "swapped_q_k"])
def test_broken_conversion_is_reported(mutate):
    report = _run_golden(_golden_language_model(mutate))
    assert not report.passed
    assert report.failures() == ["logits"]
    error = report.outputs["logits"]
    assert error.max_abs > 1e-2, error  # far beyond float32 noise (~1e-6)
    assert not report.to_json()["passed"]
    # The expected outputs of the io.npz convict the Torch side, not the reference.
    assert report.expected["logits"]["jax"].max_abs < 1e-4
    assert report.expected["logits"]["torch"].max_abs > 1e-2


def _reverse_audio_projection(state):
    # A wrong output-channel order (say, samples within an audio patch reversed) in one modality's head.
    for leaf in ("weight", "bias"):
        key = f"output_postprocessor.modalities.audio.linear.{leaf}"
        state[key] = state[key].flip(0)


def test_broken_conversion_is_reported_on_the_right_output():
    """Video autoencoding has three outputs: a broken audio head fails 'audio' only, and says so."""
    task = "video_autoencoding"
    report = run_parity(task, golden_config(task), checkpoint=golden_dir(task) / "checkpoint.pickle",
                        inputs=golden_dir(task) / "io.npz", torch_model=_golden_model(task, _reverse_audio_projection))
    assert set(report.outputs) == {"image", "audio", "label"}
    assert report.failures() == ["audio"], report.table()
    assert report.outputs["audio"].max_abs > 1e-2
    assert report.outputs["image"].max_abs < 1e-4 and report.outputs["label"].max_abs < 1e-4
    assert "FAILED (audio)" in report.table()


def test_video_inputs_without_query_indices_decode_every_point_as_the_reference_does():
    """An io.npz without subsample_image/subsample_audio: the reference decodes every point as subsampled ones
    (arange); Torch used to return the whole clip in its own layout and grid, failing on shape (then by 0.25)."""
    task = "video_autoencoding"
    arrays = np.load(golden_dir(task) / "io.npz")
    inputs = {name: arrays[name] for name in ("input/images", "input/audio")}
    report = run_parity(task, golden_config(task), checkpoint=golden_dir(task) / "checkpoint.pickle", inputs=inputs)
    assert report.passed, report.table()
    frames, size = golden_config(task)["num_frames"], golden_config(task)["image_size"]
    assert report.outputs["image"].shape == (2, frames * size * size, 3)
    assert report.outputs["audio"].shape == (2, inputs["input/audio"].shape[1])


def test_report_json_layout():
    report = _run_golden(_golden_language_model())
    data = json.loads(json.dumps(report.to_json(), allow_nan=False))
    assert {"passed", "outputs", "expected", "device", "dtype", "atol", "rtol", "versions"} <= set(data)
    logits = data["outputs"]["logits"]
    assert {"max_abs", "max_rel", "worst_index"} <= set(logits)
    assert len(logits["worst_index"]) == 3
    assert set(data["expected"]["logits"]) >= {"jax_max_abs", "torch_max_abs"}
    assert data["versions"]["torch"] == torch.__version__ and "jax" in data["versions"]
    assert (data["device"], data["dtype"], data["atol"], data["rtol"]) == ("cpu", "float32", 1e-4, 1e-4)


def test_report_json_stays_json_when_a_budget_figure_overflows():
    # A float16 run that overflows measures NaN / inf agreement figures: strict JSON has no such numbers.
    report = _run_golden(_golden_language_model())
    report.budget = {"mode": "cast", "source": "test", "normalised_error": {"logits": 1e-2},
                     "agreement": {"greedy_byte_agreement": {"measured": float("nan"), "bound": 0.9, "passed": False},
                                   "max_epe": {"measured": float("inf"), "bound": 2e-3, "passed": False}}}
    data = json.loads(json.dumps(report.to_json(), allow_nan=False))
    agreement = data["budget"]["agreement"]
    assert agreement["greedy_byte_agreement"] == {"measured": "nan", "bound": 0.9, "passed": False}
    assert agreement["max_epe"]["measured"] == "inf" and data["budget"]["normalised_error"] == {"logits": 1e-2}


def test_compare_figures_and_worst_index():
    reference = np.array([[1.0, 2.0], [0.0, -4.0]])
    actual = reference + np.array([[0.0, 0.1], [0.0, -1.0]])
    err = compare(actual, reference, atol=1e-3, rtol=1e-3)
    assert not err.within_tolerance
    assert err.max_abs == pytest.approx(1.0) and err.max_rel == pytest.approx(0.25)
    assert err.worst_index == (1, 1)
    assert compare(reference, reference, atol=0, rtol=0).within_tolerance


def test_compare_flags_shape_mismatch_and_nan():
    shape = compare(np.zeros((2, 3)), np.zeros((3, 2)), 1e-4, 1e-4)
    assert not shape.within_tolerance and "shape" in shape.problem
    nan = compare(np.array([1.0, np.nan]), np.array([1.0, 1.0]), 1e-4, 1e-4)
    assert not nan.within_tolerance and nan.worst_index == (1,) and "NaN" in nan.problem
    relative_to_zero = compare(np.array([1e-6]), np.array([0.0]), 1e-4, 1e-4)
    assert relative_to_zero.within_tolerance and math.isinf(relative_to_zero.max_rel)
    # np.allclose holds inf == inf; an error that is not finite is never within tolerance, whatever the atol.
    both_inf = compare(np.array([1.0, np.inf]), np.array([1.0, np.inf]), 1e-4, 1e-4)
    assert not both_inf.within_tolerance
    assert not compare(np.array([np.inf]), np.array([0.0]), math.inf, 1e-4).within_tolerance


def test_load_inputs_splits_golden_layout():
    inputs, expected = load_inputs(golden_dir("language") / "io.npz")
    assert set(inputs) == {"inputs", "input_mask"} and set(expected) == {"logits"}
    plain, none = load_inputs({"inputs": golden_io("language")["input/inputs"]})
    assert set(plain) == {"inputs"} and none == {}
    with pytest.raises(ValueError, match="must all start with 'input/' or 'output/'"):
        load_inputs({"input/inputs": np.zeros(2), "stray": np.zeros(2)})
    # Expected outputs given in code are checked as an io.npz's are: shape for these inputs, finite values.
    io = golden_io("language")
    for logits, message in ((io["output/logits"][:1], r"output/logits: shape \(1, 64, 262\); the models give \(2,"),
                            (io["output/logits"] * np.inf, "values NaN or infinite")):
        with pytest.raises(InputsError, match=message):
            load_inputs({**io, "output/logits": logits}, "language", golden_config("language"))


@pytest.mark.parametrize("kwargs, message", [
    ({"device": "tpu"}, "device must be one of"),
    ({"dtype": "float8_e4m3"}, "dtype must be one of"),  # float16 and bfloat16 are reduced precisions now
    ({"reference": "upstream"}, "needs upstream_path"),
    ({"atol": -1.0}, "atol must be a finite non-negative number"),
    ({"rtol": math.inf}, "rtol must be a finite non-negative number"),  # would pass any finite error
])
def test_bad_arguments_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        run_parity("language", golden_config("language"), **kwargs)


def test_device_fixture_gives_a_device_both_frameworks_use(device):
    import jax

    assert torch.zeros(1, device=device).device.type == device
    assert jax.devices("gpu" if device == "cuda" else "cpu")


def test_require_cuda_turns_the_skip_into_a_failure():
    """PERCEIVER_REQUIRE_CUDA=1: a CUDA variant fails where no GPU is usable (so a GPU CI job cannot pass empty)."""
    repo = Path(__file__).resolve().parents[1]
    test = "parity_tests/test_parity_harness.py::test_device_fixture_gives_a_device_both_frameworks_use[cuda]"
    env = {**os.environ, "PERCEIVER_REQUIRE_CUDA": "1", "PYTHONPATH": str(repo)}
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test], cwd=repo,
                            env=env, capture_output=True, text=True)
    if _cuda_missing():
        assert result.returncode == 1, result.stdout
        assert "PERCEIVER_REQUIRE_CUDA=1 but no usable CUDA device" in result.stdout
    else:
        assert result.returncode == 0, result.stdout


def _upstream_checkout(root: Path, edit=None) -> Path:
    """A `perceiver/` package made of the reference's module files (upstream's module API), optionally edited."""
    import shutil

    import converters.jax_reference as ours

    package = root / "perceiver"
    package.mkdir()
    (package / "__init__.py").write_text("")
    for name in ("perceiver.py", "io_processors.py", "position_encoding.py"):
        shutil.copy(Path(ours.__file__).parent / name, package / name)
    if edit is not None:
        edit(package)
    return root


def _halve_attention_scale(package: Path):
    source = package / "perceiver.py"
    text = source.read_text()
    assert "(1.0 / math.sqrt(head_dim))" in text
    source.write_text(text.replace("(1.0 / math.sqrt(head_dim))", "(0.5 / math.sqrt(head_dim))"))


@pytest.mark.parametrize("edit, passes", [(None, True), (_halve_attention_scale, False)], ids=["same", "edited"])
def test_reference_upstream_runs_the_code_at_upstream_path(tmp_path, edit, passes):
    report = run_parity("language", golden_config("language"), checkpoint=golden_dir("language") / "checkpoint.pickle",
                        inputs=golden_dir("language") / "io.npz", reference="upstream",
                        upstream_path=_upstream_checkout(tmp_path, edit))
    assert report.reference == "upstream" and report.to_json()["reference"] == "upstream"
    assert report.passed is passes, report.table()
    # The golden outputs convict whichever side was edited: here the reference.
    assert (report.expected["logits"]["jax"].max_abs < 1e-4) is passes
    assert report.expected["logits"]["torch"].max_abs < 1e-4


def test_defaults_initialise_in_jax_and_use_example_inputs():
    """checkpoint=None, inputs=None: a perturbed JAX init from `seed` and the reference's example inputs."""
    config = golden_config("language")
    report = run_parity("language", config, seed=3)
    assert report.passed and report.expected == {}, report.table()
    exact = run_parity("language", config, seed=3, dtype="float64", atol=1e-9, rtol=1e-9)
    assert exact.passed and exact.dtype == "float64", exact.table()
    assert exact.outputs["logits"].max_abs < report.outputs["logits"].max_abs
