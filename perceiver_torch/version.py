"""The package's version (pyproject.toml's `version`, checked equal by a test) and the `--version` flag that every
command-line tool reports it with."""

from __future__ import annotations

import argparse

import huggingface_hub
import safetensors
import torch

from .cli_exit import print_out

__version__ = "0.1.0"


def version_line(prog: str) -> str:
    """`prog`'s version, with those of the libraries whose behaviour a bug report needs."""
    return (f"{prog} {__version__} (perceiver-torch; torch {torch.__version__}, safetensors {safetensors.__version__}, "
            f"huggingface_hub {huggingface_hub.__version__})")


class _PrintVersion(argparse.Action):
    """argparse's own `version` action re-wraps the line to the terminal's width; this prints it whole, on one line
    for scripts that parse it, and exits quietly when the reader has gone (`| head -c 10`)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        parser.exit(print_out(version_line(parser.prog)) or 0)


def add_version_flag(parser: argparse.ArgumentParser) -> None:
    """`PROG --version`."""
    parser.add_argument("--version", action=_PrintVersion,
                        help="print the version (with torch's, safetensors' and huggingface_hub's) and exit")
