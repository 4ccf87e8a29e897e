"""Thin wrapper: `python scripts/regenerate.py NAME ...` is `perceiver-zoo-admin regenerate NAME ...`."""

import sys

from converters.zoo.cli import main

if __name__ == "__main__":
    sys.exit(main(["regenerate", *sys.argv[1:]]))
