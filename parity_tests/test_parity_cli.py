"""perceiver-parity on the golden language fixture: table, JSON, exit codes."""

import contextlib
import io
import json
import os
import signal
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
    (["--atol", "inf"], "expected a finite non-negative number"),  # would pass any finite error
    (["--seed", "-1"], "argument --seed: expected an integer from 0 to 4294967295"),  # was unnamed, after the imports
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
    ("empty", "input/inputs: shape (2, 0); expected (B, 64) (B the batch)\n"),  # was "..., N any length" (no N)
    # Were run, reported as "jax inf torch inf" and PASSED (exit 0).
    ("output_batch", "output/logits: shape (1, 64, 262); the models give (2, 64, 262) for these inputs"),
    ("output_nan", "output/logits: 1 of 33536 values NaN or infinite; expected outputs must be finite"),
])
def test_inputs_are_checked_against_the_task_before_they_are_run(tmp_path, capsys, case, message):
    ids, mask, logits = np.zeros((2, 64), np.int32), np.ones((2, 64), np.int32), np.zeros((2, 64, 262), np.float32)
    nan_logits = logits.copy()
    nan_logits[1, 5, 7] = np.nan
    arrays = {"missing": {"input/inputs": ids}, "short": {"input/inputs": ids[:, :10], "input/input_mask": mask},
              "batch": {"input/inputs": ids, "input/input_mask": np.ones((3, 64), np.int32)},
              "float_ids": {"input/inputs": ids.astype(np.float32), "input/input_mask": mask},
              "out_of_vocab": {"input/inputs": ids + np.eye(2, 64, dtype=np.int32) * 100_000,
                               "input/input_mask": mask},
              "unknown": {"input/inputs": ids, "input/input_mask": mask, "input/tokens": ids},
              "bomb": {"input/inputs": ids},
              "empty": {"input/inputs": ids[:, :0], "input/input_mask": mask[:, :0]},
              "output_batch": {"input/inputs": ids, "input/input_mask": mask, "output/logits": logits[:1]},
              "output_nan": {"input/inputs": ids, "input/input_mask": mask, "output/logits": nan_logits}}[case]
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


def _report(passed=True):
    from converters.parity.report import ParityReport, compare

    logits = compare(np.zeros(3), np.zeros(3) + (0 if passed else 1), 1e-4, 1e-4)
    return ParityReport("language", {"logits": logits}, "cpu", "float32", 1e-4, 1e-4)


def test_the_report_file_is_written_before_the_table_and_a_closed_stdout_ends_quietly(tmp_path):
    """`perceiver-parity ... --json r.json | head -1`: exit 141 and no traceback (was BrokenPipeError, exit 1,
    "Torch and JAX disagree"), and the report written (was not: the table came first)."""
    out = tmp_path / "parity.json"
    read_end, write_end = os.pipe()
    os.close(read_end)  # closed before the CLI writes a byte: every write meets a closed pipe
    with subprocess.Popen([sys.executable, "-m", "converters.parity", *ARGS, "--json", str(out)], stdout=write_end,
                          stderr=subprocess.PIPE, cwd=REPO) as cli:
        os.close(write_end)
        err = cli.stderr.read() if cli.stderr else b""
    assert (cli.returncode, err) == (141, b"")
    assert json.loads(out.read_text())["passed"] is True


def _stubbed_cli(body: str, stdout=subprocess.PIPE) -> subprocess.CompletedProcess:
    """perceiver-parity run as the program (main() reading sys.argv), its run_parity replaced by `body`."""
    code = "\n".join(["import os, signal, sys, time", "import converters.parity.cli as cli",
                      "from parity_tests.test_parity_cli import ARGS, _report", "def run(*args, **kwargs):",
                      f"    {body}", "cli.run_parity = run", "sys.argv = ['perceiver-parity', *ARGS]",
                      "sys.exit(cli.main())"])
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, stdout=stdout, stderr=subprocess.PIPE, text=True)


def test_a_full_stdout_is_one_error_line_and_exit_2():
    with open("/dev/full", "w") as full:  # was an OSError traceback and exit 1 ("Torch and JAX disagree")
        result = _stubbed_cli("return _report()", stdout=full)
    assert (result.returncode, result.stderr) == (2, "perceiver-parity: error: cannot write to stdout: "
                                                      "No space left on device\n")


def test_ctrl_c_is_one_line_and_exit_130():
    # A real SIGINT, in the program itself (which ends with os._exit: XLA threads can crash the teardown).
    result = _stubbed_cli("os.kill(os.getpid(), signal.SIGINT); time.sleep(30)")
    assert (result.returncode, result.stderr) == (130, "perceiver-parity: interrupted; nothing was written.\n")


def _main_interruptible(argv):
    try:
        return main(argv)
    except KeyboardInterrupt:  # would end the whole pytest session
        pytest.fail("the KeyboardInterrupt escaped main(): a traceback and exit 1 from the program")


def test_an_interrupt_says_whether_the_report_was_written(tmp_path, capsys, monkeypatch):
    import converters.parity.cli as cli

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    out = tmp_path / "parity.json"
    monkeypatch.setattr(cli, "run_parity", interrupted)
    assert _main_interruptible([*ARGS, "--json", str(out)]) == 130 and not out.exists()  # was a traceback
    assert capsys.readouterr().err == "perceiver-parity: interrupted; nothing was written.\n"
    monkeypatch.setattr(cli, "run_parity", lambda *a, **k: _report())
    monkeypatch.setattr(cli, "print_out", interrupted)  # Ctrl-C while the table is printed
    assert _main_interruptible([*ARGS, "--json", str(out)]) == 130 and json.loads(out.read_text())["passed"]
    assert capsys.readouterr().err == f"perceiver-parity: interrupted; {out} was written.\n"


def test_an_interrupt_swallowed_inside_the_run_still_ends_it_with_130(capsys, monkeypatch):
    """JAX's garbage-collector callback can receive the KeyboardInterrupt, which Python then only prints
    ("Exception ignored in _xla_gc_callback"); the run went on and exited 0."""
    import converters.parity.cli as cli

    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler

    def swallowing(*args, **kwargs):
        with contextlib.suppress(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
        return _report(passed=False)
    monkeypatch.setattr(cli, "run_parity", swallowing)
    assert main(ARGS) == 130
    assert capsys.readouterr().err == "perceiver-parity: interrupted; nothing was written.\n"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back
