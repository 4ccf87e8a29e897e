"""`--version` on every console script, and the package's version agreeing with the one it is installed as."""

from __future__ import annotations

import importlib
import importlib.metadata
import tomllib

import pytest
import torch

import perceiver_torch

from .sandbox import REPO

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
SCRIPTS = PYPROJECT["project"]["scripts"]


def test_the_package_version_is_pyprojects_and_the_installed_ones():
    assert perceiver_torch.__version__ == PYPROJECT["project"]["version"]
    assert importlib.metadata.version("perceiver-torch") == perceiver_torch.__version__


def test_every_console_script_is_checked():
    assert len(SCRIPTS) == 5, sorted(SCRIPTS)


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_version_prints_one_line_naming_the_tool_and_its_libraries_and_exits_zero(script, capsys):
    module, function = SCRIPTS[script].split(":")
    main = getattr(importlib.import_module(module), function)
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    out, err = capsys.readouterr()
    # One line, never wrapped to the terminal's width as argparse's own version action does: scripts parse it.
    assert out == f"{script} {perceiver_torch.__version__} (perceiver-torch; torch {torch.__version__}, " \
                  f"safetensors {importlib.metadata.version('safetensors')}, " \
                  f"huggingface_hub {importlib.metadata.version('huggingface_hub')})\n", out
    assert err == ""
