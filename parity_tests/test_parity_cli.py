"""perceiver-parity on the golden language fixture: table, JSON, exit codes."""

import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from converters.parity.cli import main

from .conftest import golden_dir

REPO = Path(__file__).resolve().parents[1]
GOLDEN = golden_dir("language")
ARGS = ["language", "--checkpoint", str(GOLDEN / "checkpoint.pickle"), "--config", str(GOLDEN / "config.json"),
        "--inputs", str(GOLDEN / "io.npz")]


def test_golden_language_prints_table_and_writes_json(tmp_path, capsys):
    out = tmp_path / "report" / "parity.json"
    assert main([*ARGS, "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    header = next(line for line in printed.splitlines() if line.startswith("output"))
    assert header.split() == ["output", "shape", "max_abs", "max_rel", "worst_index", "ok"]
    assert any(line.startswith("logits ") and line.rstrip().endswith("ok") for line in printed.splitlines())
    assert "PASSED" in printed
    report = json.loads(out.read_text())
    assert report["passed"] is True
    logits = report["outputs"]["logits"]
    assert 0 < logits["max_abs"] < 1e-4 and logits["max_rel"] >= 0 and len(logits["worst_index"]) == 3
    assert report["expected"]["logits"]["jax_max_abs"] < 1e-4
    assert report["expected"]["logits"]["torch_max_abs"] < 1e-4
    assert {"device", "dtype", "atol", "rtol", "versions"} <= set(report)
    assert not [p for p in out.parent.iterdir() if p.name != "parity.json"], "temp files left behind"


def test_impossible_tolerance_exits_non_zero(tmp_path, capsys):
    out = tmp_path / "parity.json"
    assert main([*ARGS, "--atol", "0", "--rtol", "0", "--json", str(out)]) == 1
    assert "FAIL" in capsys.readouterr().out
    assert json.loads(out.read_text())["passed"] is False


@pytest.mark.parametrize("extra, message", [
    (["--dtype", "float8_e4m3"], "invalid choice: 'float8_e4m3'"),  # float16 is a checked precision now
    (["--device", "tpu"], "invalid choice: 'tpu'"),
    (["--atol", "-1"], "non-negative"),
    (["--reference", "upstream"], "needs --upstream-path"),
    (["--upstream-path", "."], "only used with --reference upstream"),
])
def test_bad_arguments_exit_2_with_a_message(extra, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main([*ARGS, *extra])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_missing_file_and_unconvertible_checkpoint(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["language", "--checkpoint", str(tmp_path / "nope.pickle"), "--config", str(GOLDEN / "config.json")])
    assert "no such file" in capsys.readouterr().err
    # The optical-flow checkpoint does not fit the language config: a clear error, no JSON, exit 2.
    out = tmp_path / "parity.json"
    rc = main(["language", "--checkpoint", str(golden_dir("optical_flow") / "checkpoint.pickle"),
               "--config", str(GOLDEN / "config.json"), "--json", str(out)])
    assert rc == 2 and not out.exists()
    assert "perceiver-parity: error:" in capsys.readouterr().err


def test_console_script_is_registered_and_module_runs(tmp_path):
    assert 'perceiver-parity = "converters.parity.cli:main"' in (REPO / "pyproject.toml").read_text()
    # The in-process tests above run the comparison; this checks the module entry point only.
    result = subprocess.run([sys.executable, "-m", "converters.parity", "--help"], cwd=REPO,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: perceiver-parity") and "--upstream-path" in result.stdout


def test_float64_uses_its_own_default_tolerance(tmp_path, capsys):
    out = tmp_path / "parity64.json"
    assert main([*ARGS, "--dtype", "float64", "--json", str(out)]) == 0, capsys.readouterr().out
    report = json.loads(out.read_text())
    assert (report["dtype"], report["atol"], report["rtol"]) == ("float64", 1e-9, 1e-9)
    assert report["passed"] and report["outputs"]["logits"]["max_abs"] < 1e-9
    # The fixture's expected outputs are float32: informational at this tolerance, not the verdict.
    assert report["expected"]["logits"]["torch_max_abs"] < 1e-4


def _golden_config(**changes):
    config = json.loads((GOLDEN / "config.json").read_text())
    for dotted, value in changes.items():
        *parents, key = dotted.split(".")
        node = config
        for parent in parents:
            node = node[parent]
        node[key] = value
    return config


@pytest.mark.parametrize("changes, message", [
    ({"d_model": "32"}, "d_model: found '32' (str)"),  # was a TypeError traceback (exit 1)
    ({"encoder.bogus": 1}, "encoder.bogus: unknown key"),  # was a TypeError traceback
    ({"vocab_size": 2_000_000}, "vocab_size: found 2000000"),  # built a 1.4 GB model before refusing
])
def test_config_is_validated_before_anything_is_built(tmp_path, capsys, monkeypatch, changes, message):
    import converters.parity.harness as harness

    def no_build(*args, **kwargs):
        raise AssertionError("a model was built before the config was checked")
    monkeypatch.setattr(harness, "build_model", no_build)
    monkeypatch.setattr(harness, "_jax_reference", no_build)
    config = tmp_path / "config.json"
    config.write_text(json.dumps(_golden_config(**changes)))
    assert main(["language", "--checkpoint", str(GOLDEN / "checkpoint.pickle"), "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"perceiver-parity: error: {config} is not a valid config") and message in err, err


def _npz(path, arrays, claimed=None):
    np.savez(path, **arrays)
    if claimed is not None:  # a member whose header claims `claimed` (an int32 array) and holds no data
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(header, {"descr": "<i4", "fortran_order": False, "shape": claimed})
        with zipfile.ZipFile(path, "a") as archive:
            archive.writestr("input/input_mask.npy", header.getvalue())  # magic and header
    return path


@pytest.mark.parametrize("case, message", [
    ("missing", "input/input_mask: missing (a language model needs ['inputs', 'input_mask'])"),  # was KeyError
    ("short", "input/inputs: shape (2, 10); expected (B, 64)"),  # was a TypeError inside JAX
    ("batch", "batch sizes differ: 2 in input/inputs, 3 in input/input_mask"),
    ("float_ids", "input/inputs: float32 data; expected integer values"),
    ("out_of_vocab", "input/inputs: values from 0 to 100000; expected 0 to 261"),
    ("unknown", "input/tokens: not an input of 'language'"),
    ("bomb", "(all arrays): 800,000,512 bytes once read; at most 536,870,912"),  # was read: 2 GB allocated
])
def test_inputs_are_checked_against_the_task_before_they_are_run(tmp_path, capsys, case, message):
    ids, mask = np.zeros((2, 64), np.int32), np.ones((2, 64), np.int32)
    arrays = {"missing": {"input/inputs": ids}, "short": {"input/inputs": ids[:, :10], "input/input_mask": mask},
              "batch": {"input/inputs": ids, "input/input_mask": np.ones((3, 64), np.int32)},
              "float_ids": {"input/inputs": ids.astype(np.float32), "input/input_mask": mask},
              "out_of_vocab": {"input/inputs": ids + np.eye(2, 64, dtype=np.int32) * 100_000,
                               "input/input_mask": mask},
              "unknown": {"input/inputs": ids, "input/input_mask": mask, "input/tokens": ids},
              "bomb": {"input/inputs": ids}}[case]
    path = _npz(tmp_path / "io.npz", arrays, claimed=(3_125_000, 64) if case == "bomb" else None)
    assert main([*ARGS[:-1], str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"perceiver-parity: error: {path}:") and message in err and "Traceback" not in err, err


def test_a_json_path_that_cannot_be_written_is_refused_before_the_run(tmp_path, capsys, monkeypatch):
    import converters.parity.cli as cli

    monkeypatch.setattr(cli, "run_parity", lambda *a, **k: pytest.fail("ran before the --json path was checked"))
    (tmp_path / "a_file").write_text("x")
    for path, message in ((tmp_path / "a_file" / "parity.json", f"{tmp_path / 'a_file'} is not a directory"),
                          (tmp_path, "is a directory")):
        with pytest.raises(SystemExit) as info:
            main([*ARGS, "--json", str(path)])
        assert info.value.code == 2 and message in capsys.readouterr().err


def test_failures_writing_the_report_exit_2_and_internal_errors_exit_3(tmp_path, capsys, monkeypatch):
    import converters.parity.cli as cli

    def refuse(path, write):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(cli, "atomic_write", refuse)
    assert main([*ARGS, "--json", str(tmp_path / "parity.json")]) == 2
    assert f"cannot write {tmp_path / 'parity.json'}: Permission denied" in capsys.readouterr().err

    def bug(*args, **kwargs):
        raise TypeError("a bug")
    monkeypatch.setattr(cli, "run_parity", bug)
    assert main(ARGS) == 3  # never 1, which means "Torch and JAX disagree"
    assert "internal error" in capsys.readouterr().err


def test_an_unusable_device_exits_2_but_a_failure_while_running_exits_3(capsys, monkeypatch):
    # CUDA out of memory and XLA runtime errors are RuntimeErrors: failures of the run (exit 3, with the
    # traceback), not bad input (exit 2, one line) as "no GPU here" is.
    import converters.parity.cli as cli
    from converters.parity.harness import DeviceUnavailable

    def no_gpu(*args, **kwargs):
        raise DeviceUnavailable("device='cuda' but torch.cuda.is_available() is False.")
    monkeypatch.setattr(cli, "run_parity", no_gpu)
    assert main(ARGS) == 2
    assert "is_available() is False" in capsys.readouterr().err

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    monkeypatch.setattr(cli, "run_parity", out_of_memory)
    assert main(ARGS) == 3
    err = capsys.readouterr().err
    assert "Traceback" in err and "CUDA out of memory" in err and "the run failed (above)" in err
