"""`perceiver-to-transformers CONVERTED.safetensors -o DIR`: write a transformers model directory.

DIR gets config.json, model.safetensors and a README.md model card listing what transformers
still computes differently; `transformers.PerceiverFor*.from_pretrained(DIR)` loads it.
"""

from __future__ import annotations

import argparse
import sys

from perceiver_torch.serialization import CheckpointFormatError

from ..rules import ConversionError
from .config_map import ConfigMismatchError
from .exporter import ExportError, to_transformers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="perceiver-to-transformers", description=__doc__)
    parser.add_argument("converted", help="a perceiver-torch .safetensors (from perceiver-convert)")
    parser.add_argument("-o", "--output", required=True, help="new (or empty) output directory")
    args = parser.parse_args(argv)
    try:
        out = to_transformers(args.converted, args.output)
    except (ConfigMismatchError, ConversionError, CheckpointFormatError, ExportError, FileNotFoundError) as exc:
        print(f"perceiver-to-transformers: error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
