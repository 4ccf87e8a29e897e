"""Converted checkpoints: safetensors files whose metadata rebuilds the model."""

from __future__ import annotations

import json
import os
import secrets
import stat
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import overload

import torch
from safetensors import safe_open
from torch.overrides import TorchFunctionMode

from . import class_names
from .config_schema import MAX_PARAMETERS, ConfigError, check_parameter_count, parse_config_json, validate_config
from .foreign_checkpoints import missing_metadata, transformers_path
from .message_text import printable, problem_lines
from .models.named_classes import NamedClasses
from .registry import build_model
from .safetensors_io import (
    CODES,
    MAX_HEADER_BYTES,
    CheckpointFormatError,
    Header,
    file_identity,
    read_header,
    write_safetensors,
)

FORMAT = "perceiver-torch"
# The largest file load_model could ever accept: its header is at most MAX_HEADER_BYTES, and its tensors must
# be exactly the state dict of a model of at most MAX_PARAMETERS parameters (build_on_meta refuses more), with
# nothing between or after them (read_header). Every tensor of a task model's state dict is float32 (4 bytes),
# and its only buffers are BatchNorm statistics, no more elements than the BatchNorm's own parameters: at most
# 2 * MAX_PARAMETERS elements (parity_tests/test_user_hub.py checks both facts on every released config). A
# download announced as larger is refused before its body is fetched.
MAX_CHECKPOINT_BYTES = 8 + MAX_HEADER_BYTES + 4 * 2 * MAX_PARAMETERS

__all__ = ["FORMAT", "MAX_CHECKPOINT_BYTES", "MODEL_DTYPES", "CheckpointConfigError", "CheckpointFormatError",
           "atomic_write", "load_model", "model_dtype", "read_metadata", "save_checkpoint"]


class CheckpointConfigError(CheckpointFormatError):
    """A checkpoint's task or config (in its metadata) is invalid; `problems` lists each one."""

    def __init__(self, message: str, problems: list[str] | None = None):
        self.problems = list(problems or [])
        super().__init__(message)


def check_output_path(path: str | os.PathLike) -> Path:
    """`path` as a Path if `atomic_write` can write a file there (it creates missing folders), else an OSError
    saying why. For checking an output before a long run (a pull, a trace, a parity run), so a bad location
    costs nothing.
    """
    text = os.fspath(path)
    if not text:  # Path("") is ".", which would be reported as a directory
        raise FileNotFoundError("the output path is empty; give the output file's path.")
    if text == "-":  # what other tools read as standard output: a binary file is not written there
        raise OSError("'-' (standard output) is not supported: give the output file's path ('./-' for a file "
                      "named '-').")
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory; give the output file's path.")
    if text.endswith((os.sep, "/")):  # Path() drops the separator, which would write a file named as the folder
        raise IsADirectoryError(f"{text} ends in a path separator, naming a directory; give the output file's path.")
    check_not_special(path)
    folder = path.absolute().parent
    while not folder.exists():  # atomic_write creates the missing folders below the nearest one that exists
        folder = folder.parent
    if not folder.is_dir():
        raise NotADirectoryError(f"cannot write {path}: {folder} is not a directory.")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot write {path}: the folder {folder} is not writable.")
    return path


def check_not_special(path: str | os.PathLike) -> None:
    """Refuse an existing `path` that is not a regular file (a device, FIFO or socket, or a link to one): writing
    a file there renames over it, which as root replaces a device node such as /dev/full with a plain file."""
    if os.path.exists(path) and not os.path.isfile(path) and not os.path.isdir(path):
        raise FileExistsError(f"{os.fspath(path)} exists and is not a regular file (a device, FIFO or socket); "
                              "give a file path.")


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether `a` and `b` name one file (the same path, or links to it). An unreadable path is not provably the
    same: the write that follows reports it."""
    if Path(a).resolve() == Path(b).resolve():
        return True
    try:
        return os.path.exists(a) and os.path.exists(b) and os.path.samefile(a, b)
    except OSError:
        return False


def temp_name(name: str, suffix: str = "tmp") -> str:
    """A hidden, unique name for a temp file or folder beside `name`: ".NAME.<16 hex>.SUFFIX", with NAME cut so
    that the whole fits the usual 255-byte limit on a file name (an output name of up to 255 bytes still works)."""
    while len(os.fsencode(name)) > 200:
        name = name[:-1]
    return f".{name}.{secrets.token_hex(8)}.{suffix}"


def atomic_write(path: str | os.PathLike, write) -> Path:
    """Call write(tmp_path) on a temp file beside `path`, then rename it into place.

    A failure leaves nothing at `path` (and no temp file behind, nor a parent directory it created).
    """
    path = Path(path)
    check_not_special(path)
    created = [p for p in path.absolute().parents if not p.exists()]  # deepest first, removed in that order
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = str(path.parent / temp_name(path.name))
        # Created with 0666 less the umask, the mode a plain open() gives (mkstemp's is owner-only 0600).
        # The kernel applies the umask, so the process-wide umask is never toggled to read it (other
        # threads may be creating files meanwhile).
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except BaseException:
        remove_empty_folders(created)
        raise
    mode = stat.S_IMODE(os.fstat(fd).st_mode)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, mode)  # a writer may recreate the file (e.g. safetensors' save_file, owner-only)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        remove_empty_folders(created)
        raise
    return path


def make_folders(folder: Path) -> list[Path]:
    """mkdir -p `folder`: the folders it created, deepest first, for `remove_empty_folders` after a failure
    (one that fails partway takes back what it made)."""
    folder = Path(folder).absolute()
    created = [p for p in (folder, *folder.parents) if not p.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except BaseException:
        remove_empty_folders(created)
        raise
    return created


def remove_empty_folders(folders: list[Path]) -> None:
    """Remove `folders` (deepest first) where still empty: another writer may have used one meanwhile."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:  # not empty: kept (and so are the folders holding it)
            continue


def save_checkpoint(state_dict: Mapping, path, task: str, config: dict,
                    metadata: dict[str, str] | None = None, *, consume: bool = False,
                    finish: Callable[[str], None] | None = None) -> Path:
    """Write `state_dict` (tensors or numpy arrays) atomically with the task and full config in the metadata.

    Same input, same bytes (a canonical header).
    The config is validated first (a file `load_model` would refuse is never written). Tensors
    are streamed into the file one at a time; with `consume=True` each entry is dropped from
    `state_dict` once written, so a caller handing over its only references frees memory as
    the file grows. `finish(temp_path)`, if given, runs once everything is written and before
    the file is moved into place: what it raises leaves nothing at `path`.
    """
    validate_config(task, config, source=f"config for {path}")
    meta = {"format": FORMAT, "task": task, "config": json.dumps(config, sort_keys=True)}
    meta.update(metadata or {})
    class_names.stored(path, meta, task, config)  # class names a load would refuse are never written

    def write(tmp: str) -> None:
        write_safetensors(tmp, state_dict, meta, consume=consume)
        if finish is not None:
            finish(tmp)

    return atomic_write(path, write)


def _metadata(path: str | Path, header: Header, transformers_source: str | None = None) -> dict[str, str]:
    meta = header.metadata
    if meta.get("format") != FORMAT or "task" not in meta or "config" not in meta:
        raise CheckpointFormatError(missing_metadata(path, meta, header.tensors,
                                                     transformers_source=transformers_source))
    return meta


def _header(path: Path) -> Header:
    """`read_header(path)`, a transformers save_pretrained directory or config.json refused first, saying what
    converts it."""
    refusal = transformers_path(path)
    if refusal is not None:
        raise CheckpointFormatError(refusal)
    return read_header(path)


def read_metadata(path) -> dict[str, str]:
    """The perceiver-torch metadata of a converted file (format, task, config, provenance)."""
    path = Path(path)
    return _metadata(path, _header(path))


def checked_metadata(where: str | Path, header: Header, *, transformers_source: str | None = None) -> dict[str, str]:
    """A parsed header's perceiver-torch metadata, its task and config checked as load_model checks them first
    (for a header read some other way, e.g. the first bytes of a download); refusals name `where`, and for a
    transformers Perceiver's file the command converting `transformers_source` (a Hub repo and its revision)."""
    meta = _metadata(where, header, transformers_source)
    checked_config(where, meta)
    return meta


def checked_config(path: str | Path, meta: dict[str, str]) -> tuple[str, dict]:
    """The task and config of a converted file's metadata (`read_metadata`), the config parsed and valid for the
    task; else a `CheckpointConfigError` naming `path`. Class names the metadata holds are checked against that
    config here too (a `CheckpointFormatError`), so that every reader of a header refuses what a load refuses."""
    source = f"{path} (metadata config)"
    try:
        config = parse_config_json(meta["config"], source)
        validate_config(meta["task"], config, source=source)
    except ConfigError as exc:
        raise CheckpointConfigError(str(exc), exc.problems) from None
    class_names.stored(path, meta, meta["task"], config)
    return meta["task"], config


class _NoInitOnMeta(TorchFunctionMode):
    """Skip `torch.nn.init`'s initialisers (and a tensor's own normal_/uniform_/fill_/zero_) on meta tensors.

    They have no data to fill there; on the first call, torch would import its symbolic-shape
    machinery (sympy) for their meta kernels: 1-3 s of a conversion's or a load's time.
    """

    _TENSOR_INITS = frozenset({"normal_", "uniform_", "fill_", "zero_"})

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        target = args[0] if args else kwargs.get("tensor")
        is_init = getattr(func, "__module__", None) == "torch.nn.init" or \
            getattr(func, "__name__", None) in self._TENSOR_INITS
        if is_init and isinstance(target, torch.Tensor) and target.is_meta:
            return target
        return func(*args, **kwargs)


def build_on_meta(task: str, config: dict, source: str = "config") -> torch.nn.Module:
    """The model of a validated config on the meta device: its tensors' names, shapes and dtypes, no memory.

    Raises `ConfigError` when the constructors refuse the combination of values, or when the
    model would have more parameters than any plausible config gives.
    """
    try:
        with torch.device("meta"), _NoInitOnMeta():
            # Checkpoints hold float32 (save_model writes it): a default dtype set to float64 or bfloat16 by the
            # user's script must not make every file mismatch. On the meta device the cast costs nothing.
            model = build_model(task, config).float()
    except (ValueError, TypeError, NotImplementedError) as exc:
        raise ConfigError([f"(model): {exc}"], source) from None
    check_parameter_count(sum(p.numel() for p in model.parameters()), source)
    return model


def tensor_problems(model: torch.nn.Module, found: Mapping[str, tuple[tuple[int, ...], str]]) -> list[str]:
    """Every difference between `model`'s state dict and `found` ({name: (shape, safetensors dtype code)}).

    Both sides are named: tensors missing or unexpected, shapes and dtypes that differ (no implicit casts).
    """
    expected = {name: (tuple(t.shape), t.dtype) for name, t in model.state_dict().items()}
    problems = [f"missing tensor {name} {list(shape)} {CODES.get(dtype, dtype)}"
                for name, (shape, dtype) in sorted(expected.items()) if name not in found]
    problems += [f"unexpected tensor {name} {list(shape)} {code}"
                 for name, (shape, code) in sorted(found.items()) if name not in expected]
    for name, (shape, code) in sorted(found.items()):
        if name not in expected:
            continue
        want_shape, want_dtype = expected[name]
        if shape != want_shape:
            problems.append(f"tensor {name}: shape {list(shape)}; the model expects {list(want_shape)}")
        if code != CODES.get(want_dtype):
            problems.append(f"tensor {name}: dtype {code}; the model holds {CODES.get(want_dtype, want_dtype)} "
                            "(no implicit casts)")
    return problems


def all_finite(tensor: torch.Tensor) -> bool:
    # A sum is finite only if every element is (one NaN or Inf makes it NaN or Inf): one pass, no
    # temporary. Only when it is not (a real NaN/Inf, or large finite values overflowing) does the
    # exact elementwise check decide. isfinite().all() alone is 3-6x slower here, and a float64 sum
    # converts the tensor first (memory that the allocator keeps).
    return bool(torch.isfinite(tensor.sum())) or bool(torch.isfinite(tensor).all())


def usable_device(device: str | torch.device) -> torch.device:
    """`device` as a torch.device, checked to work here (an empty tensor on it), else a ValueError naming it.

    Checked before any file is read, so that a missing GPU is never reported as a problem of the file.
    """
    try:
        device = torch.device(device)
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError, TypeError) as exc:  # torch without CUDA asserts
        # The first line: for a backend this build lacks (mps, xla) torch appends its dispatcher's 50-line table.
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ValueError(f"device {str(device)!r} cannot be used here: {printable(reason, 200)}") from None
    # 'cpu:0' is the CPU, as torch treats it; safetensors refuses an index on it, which would blame the file.
    return torch.device("cpu") if device.type == "cpu" else device


def loading_device(device: str | torch.device) -> torch.device:
    """`usable_device(device)`, refusing the meta device: weights read from a file need one that holds data."""
    device = usable_device(device)
    if device.type == "meta":
        raise ValueError("device 'meta' holds no data, so no weights can be loaded onto it: give cpu or cuda; for the "
                         "architecture alone, create_model(name, pretrained=False, device='meta') or build_on_meta")
    return device


# The floating dtypes a model runs in (README, "Precision"), by the names perceiver-parity --dtype uses.
MODEL_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
                "float64": torch.float64}


@overload
def model_dtype(dtype: None) -> None: ...


@overload
def model_dtype(dtype: str | torch.dtype) -> torch.dtype: ...


def model_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """`dtype` (a torch dtype or its name, e.g. 'bfloat16') as one of MODEL_DTYPES, else a ValueError naming it."""
    if dtype is None:
        return None
    found = MODEL_DTYPES.get(dtype) if isinstance(dtype, str) else dtype
    if found not in MODEL_DTYPES.values():
        raise ValueError(f"dtype must be one of {', '.join(MODEL_DTYPES)} (a name or the torch dtype); "
                         f"got {dtype!r}.")
    return found


def load_model(path, device: str | torch.device = "cpu", *, dtype: str | torch.dtype | None = None,
               check_metadata: Callable[[dict[str, str]], None] | None = None) -> torch.nn.Module:
    """Rebuild the model from a converted file's metadata and take its weights from the file, in eval mode.

    Nothing sized by the file is allocated before it is checked: the header is parsed and
    checked on its own, the metadata's config is validated (types, required keys, bounded
    sizes), the model is built on the meta device and every tensor's name, shape and dtype is
    compared with the header. Tensors are then memory-mapped from the file, checked to be
    finite and assigned to the model (no randomly initialised copy is ever made). Every
    refusal is a `CheckpointFormatError` naming the file; a missing file is `FileNotFoundError`; a
    device that cannot be used here (no CUDA) is a `ValueError` naming the device, before the file is read.

    `dtype` (e.g. `torch.bfloat16` or 'bfloat16') gives the model `model.to(dtype)` would, each
    floating tensor cast as it is read: on a GPU the file's float32 tensors are never all there at once
    (on the CPU they are pages of the file's memory map either way).

    On the CPU the weights stay mapped copy-on-write: training the model never writes to the
    file, but a file rewritten in place (rather than replaced, as `atomic_write` does) while the
    model lives would show through in pages the model has not written.

    `check_metadata`, if given, is called with the file's metadata once the header is parsed
    and its config checked (so `parse_config_json(meta["config"])` cannot fail), before
    anything is built; what it raises propagates. A caller that must refuse some files (the
    zoo: one converted for another entry) checks the header this call reads instead of
    reading it a second time.
    """
    device, dtype = loading_device(device), model_dtype(dtype)
    path = Path(path)
    header = _header(path)
    meta = _metadata(path, header)
    task, config = checked_config(path, meta)
    if check_metadata is not None:
        check_metadata(meta)
    try:
        model = build_on_meta(task, config, source=f"{path} (metadata config)")
    except ConfigError as exc:
        raise CheckpointConfigError(str(exc), exc.problems) from None
    problems = tensor_problems(model, {name: (entry.shape, entry.dtype) for name, entry in header.tensors.items()})
    if problems:
        raise CheckpointFormatError(f"{path} does not match its {task} model: {len(problems)} problem(s)"
                                    + problem_lines(problems))
    state: dict[str, torch.Tensor] = {}
    bad: list[str] = []
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            # Header and tensors come from two opens: a file replaced in between (save_model or perceiver-convert
            # --force meanwhile) would build the old file's config with the new one's weights.
            if file_identity(os.stat(path)) != header.identity:
                raise CheckpointFormatError(f"{path} was replaced while it was being read; load it again once "
                                            "whatever writes it has finished.")
            for name, entry in header.tensors.items():
                tensor = f.get_tensor(name)
                if tuple(tensor.shape) != entry.shape or CODES.get(tensor.dtype) != entry.dtype:
                    raise CheckpointFormatError(f"{path} changed while it was being read (tensor {name}).")
                if tensor.is_floating_point() and not all_finite(tensor):
                    bad.append(name)
                state[name] = tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor
    except CheckpointFormatError:
        raise
    except Exception as exc:  # safetensors' own error types
        raise CheckpointFormatError(f"{path}: safetensors could not read the tensors: {exc}") from None
    if bad:
        raise CheckpointFormatError(f"{path}: non-finite values (NaN or Inf) in {len(bad)} tensor(s): "
                                    + ", ".join(bad))
    model.load_state_dict(state, strict=True, assign=True)
    left = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:  # a tensor the state dict does not cover: a bug in the model, not in the file
        raise RuntimeError(f"{type(model).__name__} has tensors outside its state dict: {left}")
    names = class_names.stored(path, meta, task, config)  # checked above (checked_config): parsing it is all
    if names is not None and isinstance(model, NamedClasses):  # stored() refuses names for the other tasks
        model.class_names = names
    return model.to(device).eval()
