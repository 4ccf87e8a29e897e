"""Thin wrapper: `python scripts/publish.py NAME ...` is `perceiver-zoo-admin publish NAME ...`."""

import sys

from converters.zoo.cli import main

if __name__ == "__main__":
    sys.exit(main(["publish", *sys.argv[1:]]))
