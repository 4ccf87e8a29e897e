"""Read DeepMind's Haiku checkpoint pickles without Haiku, JAX, or arbitrary code.

The release files pickle Haiku `FlatMapping`s of numpy arrays (under numpy 1's
`numpy.core` module names). An allow-list unpickler maps exactly the globals
those files need onto safe constructors and refuses every other global,
naming it, so a crafted file cannot run code on load.
"""

from __future__ import annotations

import io
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

try:
    from numpy._core import multiarray as _multiarray
except ImportError:  # numpy < 2
    from numpy.core import multiarray as _multiarray


class CheckpointReadError(ValueError):
    """The file is not a readable Haiku checkpoint pickle."""


class UnsafePickleError(CheckpointReadError):
    """The pickle names a global outside the allow-list."""


def _mapping(*args, **kwargs) -> dict:
    # FlatMapping / FlatMap / frozendict are all rebuilt from a mapping (or items).
    return dict(*args, **kwargs)


def _jax_array(fun, args, arr_state, aval_state=None):
    # jax.Array pickles as (_reconstruct_array, (np reconstructor, args, state, aval)).
    array = fun(*args)
    array.__setstate__(arr_state)
    return array


def _numpy_globals() -> dict[tuple[str, str], object]:
    # numpy 2 names its core "numpy._core"; release files use numpy 1's "numpy.core".
    allowed = {}
    for prefix in ("numpy.core", "numpy._core"):
        allowed[(f"{prefix}.multiarray", "_reconstruct")] = _multiarray._reconstruct
        allowed[(f"{prefix}.multiarray", "scalar")] = _multiarray.scalar
    allowed[("numpy", "ndarray")] = np.ndarray
    allowed[("numpy", "dtype")] = np.dtype
    return allowed


_ALLOWED_GLOBALS: dict[tuple[str, str], object] = {
    **_numpy_globals(),
    ("haiku._src.data_structures", "FlatMapping"): _mapping,
    ("haiku._src.data_structures", "FlatMap"): _mapping,
    ("haiku.data_structures", "FlatMapping"): _mapping,
    ("haiku._src.data_structures", "frozendict"): _mapping,
    ("collections", "OrderedDict"): _mapping,
    ("jax._src.array", "_reconstruct_array"): _jax_array,
    ("jax._src.device_array", "reconstruct_device_array"): _jax_array,
}


class _AllowListUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if module.startswith("numpy.dtypes") and name.endswith("DType"):
            # numpy >= 1.25 may pickle dtype classes such as numpy.dtypes.Float32DType.
            return type(np.dtype(name[: -len("DType")].lower()))
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"refusing to unpickle global '{module}.{name}': checkpoints may only contain Haiku "
                "mappings and numpy arrays"
            ) from None


@dataclass
class HaikuCheckpoint:
    """`params` and `state` as {module_path: {param_name: np.ndarray}}."""

    params: dict[str, dict[str, np.ndarray]]
    state: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)

    def flat(self) -> dict[str, np.ndarray]:
        """{'params:module/path/name': array, 'state:module/path/name': array}."""
        out = {}
        for kind, tree in (("params", self.params), ("state", self.state)):
            for module, leaves in tree.items():
                for name, array in leaves.items():
                    out[f"{kind}:{module}/{name}"] = array
        return out


def loads_haiku_checkpoint(data: bytes, source: str = "<bytes>") -> HaikuCheckpoint:
    try:
        tree = _AllowListUnpickler(io.BytesIO(data)).load()
    except UnsafePickleError as exc:
        raise UnsafePickleError(f"{source}: {exc}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as exc:
        raise CheckpointReadError(
            f"{source} is not a readable checkpoint pickle (truncated or not a pickle?): "
            f"{type(exc).__name__}: {exc}"
        ) from None
    return _split_tree(tree, source)


def load_haiku_checkpoint(path: str | Path) -> HaikuCheckpoint:
    """Read an upstream `.pickle` / `.pystate` file; returns params and state (possibly empty)."""
    path = Path(path)
    return loads_haiku_checkpoint(path.read_bytes(), str(path))


def checkpoint_from_tree(tree, source: str = "<tree>") -> HaikuCheckpoint:
    """A checkpoint from an in-memory tree in a release pickle's layout (validated like a file)."""
    return _split_tree(tree, source)


def _split_tree(tree, source: str) -> HaikuCheckpoint:
    if not isinstance(tree, dict):
        raise CheckpointReadError(f"{source}: expected a mapping at the top level, found {type(tree).__name__}.")
    if set(tree) <= {"params", "state"} and "params" in tree:
        params, state = tree["params"], tree.get("state") or {}
    else:
        params, state = tree, {}
    return HaikuCheckpoint(_check_tree(params, source, "params"), _check_tree(state, source, "state"))


def _check_tree(tree, source: str, kind: str) -> dict[str, dict[str, np.ndarray]]:
    if not isinstance(tree, dict):
        raise CheckpointReadError(f"{source}: {kind} must be a mapping, found {type(tree).__name__}.")
    out = {}
    for module, leaves in tree.items():
        if not isinstance(leaves, dict):
            raise CheckpointReadError(f"{source}: {kind} entry {module!r} is not a mapping of arrays.")
        out[module] = {}
        for name, value in leaves.items():
            array = np.asarray(value)
            if array.dtype == object:
                raise CheckpointReadError(f"{source}: {kind} {module}/{name} is not a numeric array.")
            out[module][name] = array
    return out
