"""`perceiver-to-transformers CONVERTED.safetensors -o DIR`: write a transformers model directory.

DIR gets config.json, model.safetensors and a README.md model card listing what transformers
still computes differently (an image classifier also a preprocessor_config.json);
`transformers.PerceiverFor*.from_pretrained(DIR)` loads it.
"""

from __future__ import annotations

import argparse
import sys

from perceiver_torch.serialization import CheckpointFormatError

from ..cli_support import write_or_report
from ..rules import ConversionError
from .config_map import ConfigMismatchError
from .exporter import ExportError, to_transformers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="perceiver-to-transformers", description=__doc__)
    parser.add_argument("converted", help="a perceiver-torch .safetensors (from perceiver-convert)")
    parser.add_argument("-o", "--output", required=True, help="new (or empty) output directory")
    args = parser.parse_args(argv)
    return write_or_report(
        "perceiver-to-transformers", lambda: to_transformers(args.converted, args.output),
        (ConfigMismatchError, ConversionError, CheckpointFormatError, ExportError, OSError))


if __name__ == "__main__":
    sys.exit(main())
