"""build / init / apply / example_inputs / checkpoint_tree: the JAX reference's contract with the harness.

Dtypes follow the arrays given: pass float64 params and inputs inside `jax.enable_x64(True)`
for a float64 run (nothing here pins float32).
"""

from __future__ import annotations

import contextlib
import json
from collections import OrderedDict

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

from ..tasks import TASKS as TASK_SPECS
from ..tasks import task_spec
from . import initialise
from .modules import default_modules

TASKS = tuple(TASK_SPECS)
# The models draw random keys only for rate-0 dropout and probability-0/1 masking: any key gives the same outputs.
_RNG_SEED = 0


def _check_task(task: str) -> None:
    task_spec(task)  # raises for an unknown task, naming the known ones


def build(task: str, config: dict, modules=None, *, _creating_state: bool = False) -> hk.TransformedWithState:
    """The task model as a Haiku transform: f(inputs dict) -> outputs dict, is_training=False."""
    return hk.transform_with_state(_forward(task, config, modules, _creating_state))


def _forward(task: str, config: dict, modules=None, creating_state: bool = False):
    _check_task(task)
    modules = modules or default_modules()
    build_fn = task_spec(task).jax_build_fn()

    def forward(inputs):
        if creating_state:
            return build_fn(modules, config, inputs, is_training=True)
        return build_fn(modules, config, inputs)

    return forward


def _as_jax_inputs(inputs: dict) -> dict:
    return {name: jnp.asarray(value) for name, value in inputs.items()}


def _to_numpy_tree(tree) -> dict[str, dict[str, np.ndarray]]:
    return {module: {name: np.asarray(value) for name, value in leaves.items()} for module, leaves in tree.items()}


def init(task: str, config: dict, inputs: dict, seed: int = 0, perturb: bool = True, *, haiku_rng: bool = False):
    """(params, state) as {module_path: {name: np.ndarray}}, with upstream's initializers.

    Values are drawn in numpy from each Haiku initializer's distribution (see `initialise`:
    seconds instead of XLA compiling the threefry draws); `haiku_rng=True` runs Haiku's own
    (jitted) init instead.

    `perturb` adds seeded noise to every float parameter (and sets the batch-norm statistics
    to plausible non-trivial values), so zero-initialised layers (the flow head, biases,
    layer-norm offsets) are exercised by parity checks, as they are in the golden fixtures.
    """
    rng, jax_inputs = jax.random.PRNGKey(seed), _as_jax_inputs(inputs)
    if haiku_rng:
        params, state = _compiled(task, config, None, "init")(rng, jax_inputs)
        params, state = _to_numpy_tree(params), _fresh_statistics(_to_numpy_tree(state))
    else:
        forward = _forward(task, config, creating_state=task_spec(task).stateful_release)
        records, abstract_state = initialise.record_parameters(forward, rng, jax_inputs)
        params = initialise.sampled_params(records, seed)
        state = _fresh_statistics({m: {n: np.zeros(x.shape, x.dtype) for n, x in leaves.items()}
                                   for m, leaves in abstract_state.items()})
    if perturb:
        params, state = _perturbed(params, state, seed)
    return params, state


def _fresh_statistics(state):
    """Moving averages as before any update: counter 0, hidden 0, mean 0 and variance 1 (identity)."""
    fresh = {}
    for module, leaves in state.items():
        fresh[module] = {name: np.zeros_like(x) for name, x in leaves.items()}
        if module.endswith("var_ema") and "average" in leaves:
            fresh[module]["average"] = np.ones_like(leaves["average"])
    return fresh


def _perturbed(params, state, seed):
    rng = np.random.default_rng(seed + 0x5EED)

    def noise(x, scale):
        return rng.normal(0.0, scale, size=x.shape).astype(x.dtype)

    params = {m: {n: x + noise(x, 0.05) for n, x in leaves.items()} for m, leaves in params.items()}
    new_state = {}
    for module, leaves in state.items():
        new_state[module] = dict(leaves)
        if "average" in leaves and np.issubdtype(leaves["average"].dtype, np.floating):
            avg = leaves["average"]
            # Moving variances must stay positive; means move around zero.
            new_state[module]["average"] = (1.0 + np.abs(noise(avg, 0.2)) if module.endswith("var_ema")
                                            else avg + noise(avg, 0.1)).astype(avg.dtype)
    return params, new_state


# Compiled applies by (task, config, implementation); jit itself keys on input shapes/dtypes and x64.
# Bounded, so that property-based runs over many configs do not keep every executable alive.
_COMPILED: OrderedDict = OrderedDict()
_MAX_COMPILED = 64


def _compiled(task: str, config: dict, modules, method: str):
    origin = getattr(modules, "origin", None) if modules is not None else "ours"
    key = (task, json.dumps(config, sort_keys=True), origin if origin is not None else id(modules), method)
    if key in _COMPILED:
        _COMPILED.move_to_end(key)
        return _COMPILED[key]
    # Haiku creates batch-norm moving averages only when updating them, i.e. in training mode.
    model = build(task, config, modules, _creating_state=method == "init" and task_spec(task).stateful_release)
    _COMPILED[key] = jax.jit(getattr(model, method))
    if len(_COMPILED) > _MAX_COMPILED:
        _COMPILED.popitem(last=False)
    return _COMPILED[key]


def apply(task: str, config: dict, params, state, inputs: dict, modules=None, jit: bool = True) -> dict:
    """Outputs (numpy, golden names) of the task model at `params`/`state` on `inputs` (upstream layout).

    Compiled once per (task, config, modules, input shapes and dtypes): repeated calls are cheap.
    float32 matmuls run at JAX's "highest" precision unless the caller chose one (`jax.default_matmul_precision`):
    JAX's default on a GPU is TF32, which would make the reference ~1e-3 off.
    """
    _check_task(task)
    state = state or {}
    fn = _compiled(task, config, modules, "apply") if jit else build(task, config, modules).apply
    chosen = jax.config.jax_default_matmul_precision is not None
    with contextlib.nullcontext() if chosen else jax.default_matmul_precision("highest"):
        outputs, _ = fn(params, state, jax.random.PRNGKey(_RNG_SEED), _as_jax_inputs(inputs))
    return {name: np.asarray(value) for name, value in outputs.items()}


def abstract_init(task: str, config: dict, batch: int = 1, modules=None):
    """(params, state) shapes as {module_path: {name: tuple}}, traced with jax.eval_shape: nothing is allocated.

    Cheap at the released sizes (201M parameters for language), so it checks a configuration's
    parameter paths and shapes against a release without its weights.
    """
    inputs = {name: jax.ShapeDtypeStruct(x.shape, jnp.asarray(x[:0]).dtype)
              for name, x in example_inputs(task, config, batch=batch).items()}
    model = build(task, config, modules, _creating_state=task_spec(task).stateful_release)
    params, state = jax.eval_shape(model.init, jax.random.PRNGKey(0), inputs)
    return _shape_tree(params), _shape_tree(state)


def _shape_tree(tree) -> dict[str, dict[str, tuple]]:
    return {module: {name: tuple(x.shape) for name, x in leaves.items()} for module, leaves in tree.items()}


def checkpoint_tree(task: str, params, state=None) -> dict:
    """The release pickle layout: {"params", "state"} for ImageNet, the params alone otherwise."""
    _check_task(task)
    params = _to_numpy_tree(params)
    if task_spec(task).stateful_release:
        return {"params": params, "state": _to_numpy_tree(state or {})}
    if state:
        raise ValueError(f"task {task!r} has no model state in its release layout, but state "
                         f"{sorted(state)} was given.")
    return params


def example_inputs(task: str, config: dict, batch: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
    """Valid random inputs in the golden io.npz layout (names without the `input/` prefix)."""
    _check_task(task)
    rng = np.random.default_rng(seed)
    return _EXAMPLES[task](config, batch, rng)


def _language_inputs(config, batch, rng):
    length = config["max_seq_len"]
    ids = rng.integers(6, config["vocab_size"], size=(batch, length)).astype(np.int32)  # bytes start at id 6
    ids[rng.random((batch, length)) < 0.15] = 3  # [MASK]
    mask = np.zeros((batch, length), np.int32)
    for row in range(batch):
        # At least one real and, where the length allows, at least one padded position per row.
        real = int(rng.integers(1, max(length, 2))) if length > 1 else 1
        mask[row, :real] = 1
    ids[mask == 0] = 0  # [PAD]
    return {"inputs": ids, "input_mask": mask}


def _imagenet_inputs(config, batch, rng):
    height, width = config["image_size"]
    return {"images": rng.normal(size=(batch, height, width, 3)).astype(np.float32)}


def _flow_inputs(config, batch, rng):
    height, width = config["train_size"]
    return {"images": rng.uniform(-1, 1, size=(batch, 2, height, width, 3)).astype(np.float32)}


def video_subsampling(config: dict, chunk: int) -> dict[str, np.ndarray]:
    """Query indices of decoding chunk `chunk` of `nchunks`, as the colab's autoencoding loop makes them."""
    frames, size, nchunks = config["num_frames"], config["image_size"], config["nchunks"]
    image_chunk = frames * size * size // nchunks
    audio_chunk = frames * config["audio_samples_per_frame"] // config["samples_per_patch"] // nchunks
    return {"image": np.arange(image_chunk * chunk, image_chunk * (chunk + 1)),
            "audio": np.arange(audio_chunk * chunk, audio_chunk * (chunk + 1))}


def _video_inputs(config, batch, rng):
    frames, size = config["num_frames"], config["image_size"]
    chunk = video_subsampling(config, 1 if config["nchunks"] > 1 else 0)  # chunk 1, as the golden fixture
    return {
        "images": rng.uniform(0, 1, size=(batch, frames, size, size, 3)).astype(np.float32),
        "audio": rng.uniform(-1, 1, size=(batch, frames * config["audio_samples_per_frame"], 1)).astype(np.float32),
        "subsample_image": chunk["image"],
        "subsample_audio": chunk["audio"],
    }


_EXAMPLES = {"language": _language_inputs, "imagenet": _imagenet_inputs, "optical_flow": _flow_inputs,
             "video_autoencoding": _video_inputs}
