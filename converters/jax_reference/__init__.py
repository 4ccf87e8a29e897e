"""A JAX/Haiku reference of Perceiver IO with upstream's modules and parameter paths.

It reproduces DeepMind's `perceiver/` package (same classes, constructor arguments and Haiku
module paths), so a release checkpoint loads into it unchanged, and builds the four task
models as the upstream colabs do. The parity harness runs it against the Torch port; a
maintainer with DeepMind's code can swap that in via `upstream_modules(path)`.
"""

try:
    import haiku  # noqa: F401
    import jax  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        f"converters.jax_reference needs JAX and Haiku ({exc.name or exc} is missing): "
        'pip install "perceiver-torch[jax]"'
    ) from exc

from .api import TASKS, abstract_init, apply, build, checkpoint_tree, example_inputs, init, video_subsampling
from .modules import default_modules, upstream_modules

__all__ = [
    "TASKS", "abstract_init", "apply", "build", "checkpoint_tree", "default_modules", "example_inputs", "init",
    "upstream_modules", "video_subsampling",
]
