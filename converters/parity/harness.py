"""Run the JAX reference and the converted Torch model on the same inputs, and compare every output.

JAX and Haiku are imported lazily (the `jax` extra): importing this module
costs nothing without them, only `run_parity` needs them.
"""

from __future__ import annotations

import contextlib
import math
import platform
import zipfile
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

from perceiver_torch.config_schema import validate_config
from perceiver_torch.registry import build_model

from ..checkpoint_reader import HaikuCheckpoint, checkpoint_from_tree, load_haiku_checkpoint
from ..convert import convert_tree, load_config, target_shapes
from ..tasks import run_upstream_layout, task_spec
from . import inputs as parity_inputs
from .budgets import budget as precision_budget
from .precision import (
    MODES,
    PRECISIONS,
    agreement,
    check_tf32_rounding,
    exact_torch_matmuls,
    higher_is_better,
    model_dtype,
    precision_context,
    tf32_kind,
)
from .report import OutputError, ParityReport, compare

# float32 / float64: both frameworks in that dtype. The reduced precisions run Torch in them (cast or
# under autocast, see parity.precision) against JAX in float32, with the measured budget as tolerance.
DTYPES = {"float32": torch.float32, "float64": torch.float64, **PRECISIONS}
DEVICES = ("cpu", "cuda")
REFERENCES = ("ours", "upstream")


def _jax_reference():
    try:
        from converters import jax_reference
    except ImportError as exc:
        raise ImportError(f"the parity harness needs the JAX reference: {exc}") from exc
    return jax_reference


def load_inputs(inputs, task: str | None = None, config: dict | None = None
                ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(inputs, expected outputs) from an io.npz path or a dict in its layout.

    Keys `input/NAME` / `output/NAME` as in the golden io.npz; a dict with no
    prefixed keys at all is taken to be inputs only. With `task` and its validated `config`,
    every input is checked against the task (names, shapes, dtypes, id ranges), an io.npz's from
    its headers before any array is read; a file's arrays are capped in total size either way.
    """
    source = "inputs"
    if isinstance(inputs, (str, Path)):
        path = source = Path(inputs)
        try:
            arrays = parity_inputs.read_npz(path, task, config)
        except FileNotFoundError:
            raise FileNotFoundError(f"inputs file {path} does not exist") from None
        except parity_inputs.InputsError:
            raise
        except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
            raise ValueError(f"inputs file {path} is not a readable .npz of arrays: {exc}") from None
    elif isinstance(inputs, Mapping):
        arrays = {k: np.asarray(v) for k, v in inputs.items()}
    else:
        raise TypeError(f"inputs must be an io.npz path, a dict of arrays or None; got {type(inputs).__name__}.")
    if not any(k.startswith(("input/", "output/")) for k in arrays):
        found, expected = arrays, {}
    else:
        unknown = [k for k in arrays if not k.startswith(("input/", "output/"))]
        if unknown:
            raise ValueError(f"inputs keys must all start with 'input/' or 'output/' (the golden io.npz layout); "
                             f"found {unknown}.")
        found = {k.removeprefix("input/"): v for k, v in arrays.items() if k.startswith("input/")}
        if not found:
            raise ValueError(f"no 'input/...' arrays among {sorted(arrays)}.")
        expected = {k.removeprefix("output/"): v for k, v in arrays.items() if k.startswith("output/")}
    if task is not None:
        parity_inputs.check(task, config, found, expected, str(source))
    return found, expected


def _checkpoint(checkpoint):
    """A converters.HaikuCheckpoint from a pickle path or a release-layout tree."""
    if isinstance(checkpoint, HaikuCheckpoint):
        return checkpoint
    if isinstance(checkpoint, (str, Path)):
        return load_haiku_checkpoint(checkpoint)
    if isinstance(checkpoint, Mapping):
        return checkpoint_from_tree(dict(checkpoint), "<checkpoint tree>")
    raise TypeError(f"checkpoint must be a pickle path, a params tree, a HaikuCheckpoint or None; "
                    f"got {type(checkpoint).__name__}.")


def _cast_tree(tree: dict, dtype) -> dict:
    """Floating leaves to `dtype`, the rest (integer counters, ids) untouched."""
    return {m: {n: (v.astype(dtype) if np.issubdtype(v.dtype, np.floating) else v) for n, v in leaves.items()}
            for m, leaves in tree.items()}


def _cast_inputs(inputs: dict, dtype) -> dict:
    return {k: (v.astype(dtype) if np.issubdtype(v.dtype, np.floating) else v) for k, v in inputs.items()}


def package_versions(dists) -> dict[str, str]:
    """Python's version and each distribution's installed version ("not installed" when absent)."""
    out = {"python": platform.python_version()}
    for dist in dists:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def versions() -> dict[str, str]:
    out = package_versions(("perceiver-torch", "torch", "numpy", "jax", "jaxlib", "dm-haiku"))
    out["torch"] = str(torch.__version__)  # a str subclass otherwise, which YAML writers refuse
    return out


class DeviceUnavailable(RuntimeError):
    """The device asked for is not usable here (no CUDA for torch, no GPU backend for JAX): a bad invocation,
    unlike a RuntimeError met while running (CUDA out of memory, an XLA runtime error)."""


def _jax_context(stack: contextlib.ExitStack, device: str, dtype: str):
    """Enter JAX's device, x64 and highest-matmul-precision settings; they end with `stack`."""
    import jax

    if device == "cuda":
        try:
            gpus = jax.devices("gpu")
        except RuntimeError:
            gpus = []
        if not gpus:
            raise DeviceUnavailable("device='cuda' but JAX has no GPU backend (install jax with CUDA support, "
                               "e.g. pip install 'jax[cuda12]').")
        stack.enter_context(jax.default_device(gpus[0]))
    else:
        stack.enter_context(jax.default_device(jax.devices("cpu")[0]))
    stack.enter_context(jax.enable_x64(dtype == "float64"))
    stack.enter_context(jax.default_matmul_precision("highest"))


def _check_arguments(device, dtype, reference, upstream_path, atol, rtol, mode="cast", tf32_rounding=None):
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}.")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {tuple(DTYPES)}, got {dtype!r}.")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}.")
    if mode == "autocast" and dtype not in ("bfloat16", "float16"):
        raise ValueError(f"mode='autocast' needs dtype 'bfloat16' or 'float16', got {dtype!r}.")
    check_tf32_rounding(dtype, device, tf32_rounding)
    if reference not in REFERENCES:
        raise ValueError(f"reference must be one of {REFERENCES}, got {reference!r}.")
    if reference == "upstream" and upstream_path is None:
        raise ValueError("reference='upstream' needs upstream_path: a directory holding DeepMind's perceiver code.")
    if reference == "ours" and upstream_path is not None:
        raise ValueError("upstream_path is only used with reference='upstream'.")
    for name, value in (("atol", atol), ("rtol", rtol)):
        # Finite too: an infinite tolerance would pass any finite error.
        if value is not None and not (isinstance(value, (int, float)) and 0 <= value < math.inf):
            raise ValueError(f"{name} must be a finite non-negative number, got {value!r}.")
    if device == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailable("device='cuda' but torch.cuda.is_available() is False.")


def run_parity(task: str, config, checkpoint=None, inputs=None, seed: int = 0, device: str = "cpu",
               dtype: str = "float32", reference: str = "ours", upstream_path=None,
               torch_model: torch.nn.Module | None = None, atol: float | None = None, rtol: float | None = None,
               mode: str = "cast", atol_per_unit_range: bool = False,
               tf32_rounding: str | None = None) -> ParityReport:
    """Compare the JAX reference with the Torch model of `task`, output by output.

    config: dict or config.json path (golden layout). checkpoint: a Haiku pickle
    path, a release-layout tree, or None to initialise one with the JAX
    reference from `seed` (perturbed, so zero-initialised layers matter).
    inputs: io.npz path or dict in its layout, or None for the reference's
    `example_inputs(seed)`; `output/...` arrays in it are reported against
    too. The Torch model is `torch_model` if given (moved to device/dtype in
    place), else built from `config` and loaded with `converters.convert_tree`.
    float64 runs JAX with x64 and Torch in double; on CUDA, TF32 is off and
    JAX matmuls use the highest precision, both frameworks on the GPU.

    dtype 'bfloat16' / 'float16' runs Torch in that precision (mode 'cast':
    `model.to(dtype)` and inputs cast; 'autocast': the float32 model under
    `torch.autocast`), 'tf32' a float32 Torch model with TF32 matmuls: real
    ones on CUDA, emulated on the CPU (`parity.tf32_emulation`: matmul and
    convolution inputs rounded to TF32, `tf32_rounding` 'nearest' by default
    or 'truncate'; the report's `tf32` says which). JAX runs in float32.
    Without atol/rtol the tolerance is then the measured budget
    (`parity.budgets`): per output, budget x max|jax output| (rtol 0), and the
    task-level agreement must stay within its bound; the report says where the
    budget comes from. atol/rtol default to 1e-4 otherwise.

    atol_per_unit_range=True scales atol per output by max(1, max|jax output|): float32 rounding
    grows with the activations' scale (a released-size language model with large weights gives logits
    of magnitude ~250 and float32 differences of ~1e-3 on both sides of an exact port, whose float64
    difference is 2e-12), so an absolute 1e-4 only fits outputs of order one.
    """

    _check_arguments(device, dtype, reference, upstream_path, atol, rtol, mode, tf32_rounding)
    task_spec(task)
    # Validated and built on the meta device (sizes and parameter count bounded) before anything real is
    # built, as perceiver-convert does.
    source = str(config) if isinstance(config, (str, Path)) else f"{task} config"
    config = validate_config(task, load_config(config), source=source)
    target_shapes(task, config)
    ref = _jax_reference()
    np_dtype = np.float64 if dtype == "float64" else np.float32
    reduced = dtype in PRECISIONS
    budget = precision_budget(task, dtype, mode) if reduced and atol is None and rtol is None else None
    atol = 1e-4 if atol is None else atol
    rtol = 1e-4 if rtol is None else rtol
    torch_dtype = model_dtype(dtype, mode) if reduced else DTYPES[dtype]
    if inputs is None:
        inputs, expected = ref.example_inputs(task, config, seed=seed), {}
    else:
        inputs, expected = load_inputs(inputs, task, config)
    modules = ref.upstream_modules(upstream_path) if reference == "upstream" else None

    if checkpoint is None:
        # Initialised in float32 whatever the run's dtype, so both dtypes see the same parameters.
        params, state = ref.init(task, config, inputs, seed=seed, perturb=True)
        checkpoint = ref.checkpoint_tree(task, params, state)
    haiku = _checkpoint(checkpoint)

    if torch_model is None:
        torch_model = build_model(task, config)
        arrays = convert_tree(task, haiku, config)
        torch_model.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()},
                                    strict=True)
    torch_model = torch_model.to(device=device, dtype=torch_dtype).eval()

    run_inputs = _cast_inputs(inputs, np_dtype)
    with contextlib.ExitStack() as stack:
        _jax_context(stack, device, "float32" if reduced else dtype)
        jax_out = ref.apply(task, config, _cast_tree(haiku.params, np_dtype), _cast_tree(haiku.state, np_dtype),
                            run_inputs, modules=modules)
    with exact_torch_matmuls(device), \
            (precision_context(dtype, mode, device, tf32_rounding) if reduced else contextlib.nullcontext()):
        torch_out = run_upstream_layout(task, torch_model, run_inputs, device, torch_dtype)

    both = [name for name in jax_out if name in torch_out]
    if budget is not None:
        tolerances = {name: budget["error"][name] * float(np.abs(jax_out[name]).max()) for name in both}
        atol, rtol = max(tolerances.values(), default=0.0), 0.0
        outputs = {name: compare(torch_out[name], jax_out[name], tolerances[name], 0.0) for name in both}
    elif atol_per_unit_range:
        tolerances = {name: atol * max(1.0, float(np.abs(jax_out[name]).max(initial=0.0))) for name in both}
        atol = max(tolerances.values(), default=atol)
        outputs = {name: compare(torch_out[name], jax_out[name], tolerances[name], rtol) for name in both}
    else:
        outputs = {name: compare(torch_out[name], jax_out[name], atol, rtol) for name in both}
    for name in sorted(set(jax_out) ^ set(torch_out)):
        side = "Torch" if name not in torch_out else "JAX"
        outputs[name] = OutputError(math.inf, math.inf, (), False, (), f"{side} gave no output {name!r}")
    missing = sorted(set(expected) - (set(jax_out) & set(torch_out)))
    if missing:
        raise ValueError(f"inputs hold expected outputs {missing} that the {task!r} models do not produce "
                         f"(they produce {sorted(jax_out)}).")
    expected_errors = {
        name: {"jax": compare(jax_out[name], want, atol, rtol), "torch": compare(torch_out[name], want, atol, rtol)}
        for name, want in expected.items()
    }
    budget_report = None
    if budget is not None:
        budget_report = _budget_report(task, budget, torch_out, jax_out, run_inputs, both, mode)
        budget_report["reference_max_abs"] = {name: float(np.abs(jax_out[name]).max()) for name in both}
    return ParityReport(task=task, outputs=outputs, device=device, dtype=dtype, atol=float(atol), rtol=float(rtol),
                        reference=reference, versions=versions(), expected=expected_errors, budget=budget_report,
                        atol_per_unit_range=atol_per_unit_range,
                        tf32=tf32_kind(device, tf32_rounding) if dtype == "tf32" else None)


def _budget_report(task, budget, torch_out, jax_out, inputs, names, mode) -> dict:
    """Measured figures against the budget: normalised errors per output and the task-level agreement."""
    measured = agreement(task, {n: torch_out[n] for n in names}, {n: jax_out[n] for n in names}, inputs)
    checks = {}
    for metric, bound in budget["agreement"].items():
        value = measured[metric]
        ok = value >= bound if higher_is_better(metric) else value <= bound
        checks[metric] = {"measured": value, "bound": bound, "passed": bool(ok),
                          "direction": ">=" if higher_is_better(metric) else "<="}
    return {"mode": mode, "source": budget["source"], "normalised_error": dict(budget["error"]),
            "agreement": checks}
