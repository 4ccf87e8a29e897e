"""Which implementation of upstream's module API the task builders use: ours, or DeepMind's own code."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import SimpleNamespace

UPSTREAM_FILES = ("perceiver.py", "io_processors.py", "position_encoding.py")


def default_modules() -> SimpleNamespace:
    """This package's port: `.perceiver`, `.io_processors`, `.position_encoding`."""
    from . import io_processors, perceiver, position_encoding

    return SimpleNamespace(perceiver=perceiver, io_processors=io_processors, position_encoding=position_encoding,
                           origin="converters.jax_reference")


def _package_dir(path: Path) -> Path:
    """The `perceiver/` package directory, given it or the deepmind-research checkout holding it."""
    for candidate in (path, path / "perceiver"):
        if all((candidate / name).is_file() for name in UPSTREAM_FILES):
            return candidate
    raise FileNotFoundError(
        f"{path} holds no upstream Perceiver package: expected {', '.join(UPSTREAM_FILES)} in it or in "
        f"{path / 'perceiver'} (pass the deepmind-research checkout or its perceiver/ directory)."
    )


def upstream_modules(path) -> SimpleNamespace:
    """DeepMind's `perceiver` package from `path` (deepmind-research/ or deepmind-research/perceiver/).

    Upstream's files import each other as `from perceiver import ...`, so the package is
    imported under the name `perceiver` with its parent first on sys.path; any `perceiver`
    modules imported before are set aside during the import and put back afterwards, so
    loading two checkouts, or one next to an unrelated `perceiver` package, gives each its own code.
    """
    package = _package_dir(Path(path).expanduser().resolve())
    if not (package / "__init__.py").is_file():
        raise FileNotFoundError(f"{package} has no __init__.py; upstream's modules import as the package "
                                "`perceiver` (add an empty __init__.py, as the colabs do).")
    if package.name != "perceiver":
        raise ValueError(f"the upstream package directory must be named 'perceiver' (its files import "
                         f"`from perceiver import ...`); got {package}.")
    saved = {name: sys.modules.pop(name) for name in list(sys.modules)
             if name == "perceiver" or name.startswith("perceiver.")}
    sys.path.insert(0, str(package.parent))
    try:
        loaded = {name: importlib.import_module(f"perceiver.{name}")
                  for name in ("position_encoding", "io_processors", "perceiver")}
    except ImportError as exc:
        raise ImportError(f"could not import the upstream Perceiver code from {package}: {exc} "
                          "(upstream's io_processors needs einops: pip install einops)") from exc
    finally:
        sys.path.remove(str(package.parent))
        for name in [n for n in sys.modules if n == "perceiver" or n.startswith("perceiver.")]:
            del sys.modules[name]
        sys.modules.update(saved)
    return SimpleNamespace(origin=str(package), **loaded)
