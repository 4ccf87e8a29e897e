"""perceiver-parity on the golden language fixture: table, JSON, exit codes."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

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
