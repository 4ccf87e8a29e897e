"""perceiver-convert: the command users and maintainers run."""

import subprocess
import sys
from pathlib import Path

import pytest

from converters.cli import main

from .conftest import golden_dir

REPO = Path(__file__).resolve().parents[1]


def test_convert_with_config_writes_loadable_file(tmp_path, capsys):
    out = tmp_path / "lm.safetensors"
    rc = main(["language", str(golden_dir("language") / "checkpoint.pickle"),
               "--config", str(golden_dir("language") / "config.json"), "-o", str(out)])
    assert rc == 0 and out.exists()
    assert str(out) in capsys.readouterr().out


def test_preset_mismatching_checkpoint_fails_cleanly(tmp_path, capsys):
    out = tmp_path / "lm.safetensors"
    rc = main(["language", str(golden_dir("language") / "checkpoint.pickle"),
               "--preset", "language_perceiver_io_bytes", "-o", str(out)])
    assert rc == 1 and not out.exists()
    assert "shape mismatch" in capsys.readouterr().err


def test_preset_of_another_task_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["language", str(golden_dir("language") / "checkpoint.pickle"),
              "--preset", "optical_flow", "-o", str(tmp_path / "x.safetensors")])
    assert exit_.value.code == 2  # argparse's usage error, as for every bad argument
    assert "preset 'optical_flow' is a 'optical_flow' model, not 'language'" in capsys.readouterr().err
    assert not (tmp_path / "x.safetensors").exists()


def test_python_dash_m_converters(tmp_path):
    out = tmp_path / "lm.safetensors"
    result = subprocess.run(
        [sys.executable, "-m", "converters", "language", str(golden_dir("language") / "checkpoint.pickle"),
         "--config", str(golden_dir("language") / "config.json"), "-o", str(out)],
        cwd=REPO, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr
    assert out.exists()


def test_missing_checkpoint_file_is_reported(tmp_path, capsys):
    rc = main(["language", str(tmp_path / "nope.pickle"),
               "--config", str(golden_dir("language") / "config.json"), "-o", str(tmp_path / "o")])
    assert rc == 1
    assert "nope.pickle" in capsys.readouterr().err


def test_interrupted_conversion_says_nothing_was_written(tmp_path, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("converters.cli.convert", interrupted)
    out = tmp_path / "lm.safetensors"
    rc = main(["language", str(golden_dir("language") / "checkpoint.pickle"),
               "--config", str(golden_dir("language") / "config.json"), "-o", str(out)])
    assert rc == 130 and not out.exists()
    assert capsys.readouterr().err.splitlines()[-1] == "perceiver-convert: interrupted; nothing was written."
