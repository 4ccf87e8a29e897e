"""The peers bench_forward.py runs beside ours: transformers' Perceiver and the JAX/Haiku reference.

Both are optional imports: a peer that is not installed is reported and skipped. Each builder
returns a callable running one forward on the benchmark's inputs (same sizes as ours), or None.

transformers' models are built from `PerceiverConfig` with random weights at the config ours runs,
mapped by the exporter's `converters.transformers.config_map.to_hf` (at the released presets, the
sizes of the deepmind/* checkpoints), with the erf GELU those checkpoints name; nothing is downloaded.
"""

from __future__ import annotations

import importlib

import torch

from converters.transformers.config_map import to_hf
from perceiver_torch.layers.flow import patches_for_flow


def hf_config(task: str, config: dict) -> tuple[str, dict]:
    """(transformers class name, PerceiverConfig kwargs) for our `config`, mapped as the exporter maps it."""
    family = "imagenet" if task.startswith("imagenet") else task
    architecture, fields = to_hf(family, config)
    # Exports set the tanh GELU upstream trained with (catalog: "gelu"); the deepmind/* configs on the Hub
    # say "gelu" (erf), and that is the model transformers' users run, so that is the one timed.
    return architecture, {**fields, "hidden_act": "gelu"}


def optional(module: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        return None


def hf_model(task: str, config: dict, device: torch.device):
    """transformers' model for our `task` `config` (random weights, eval mode), or None when transformers is missing."""
    transformers = optional("transformers")
    if transformers is None:
        return None
    class_name, fields = hf_config(task, config)
    torch.manual_seed(0)
    return getattr(transformers, class_name)(transformers.PerceiverConfig(**fields)).to(device).eval()


def hf_call(task: str, model, inputs: tuple):
    """A no-argument forward of transformers' `model` on our benchmark `inputs` (converted to its layout)."""
    if task == "language":
        ids, mask = inputs
        return lambda: model(inputs=ids, attention_mask=mask).logits
    if task.startswith("imagenet"):
        return lambda: model(inputs=inputs[0]).logits
    if task == "optical_flow":
        image1, image2 = inputs

        def flow():  # transformers leaves the 3x3 patch extraction to the caller: same work as ours, timed
            patches = patches_for_flow(torch.stack([image1, image2], dim=1)).permute(0, 1, 4, 2, 3)
            return model(inputs=patches).logits
        return flow
    images, audio, subsample = inputs
    batch = images.shape[0]
    hf_inputs = {"image": images, "audio": audio, "label": torch.zeros(batch, 700, device=images.device)}
    points = {"image": subsample["image"], "audio": subsample["audio"], "label": None}
    return lambda: model(inputs=hf_inputs, subsampled_output_points=points).logits


def jax_call(task: str, config: dict, inputs: tuple, device: torch.device, tf32: bool):
    """(callable, compile seconds) running the JAX reference under jit on the same inputs, or None.

    None too when the benchmark runs on CUDA and JAX has no GPU backend. On a GPU, fp32 matmuls use
    TF32 only when `tf32` (JAX's default precision would use it regardless).
    """
    api = optional("converters.jax_reference")
    if api is None or optional("jax") is None:
        return None
    import time

    import jax

    if device.type == "cuda":
        if jax.default_backend() != "gpu":
            return None
        jax.config.update("jax_default_matmul_precision", "tensorfloat32" if tf32 else "highest")
    # Committed to the device ours runs on: a CPU benchmark on a GPU machine would otherwise time JAX on the GPU.
    target = jax.devices("gpu" if device.type == "cuda" else "cpu")[0]

    family = "imagenet" if task.startswith("imagenet") else task
    upstream = _upstream_layout(task, inputs)
    params, state = api.init(family, config, upstream, seed=0, perturb=False)
    params, state = jax.device_put(params, target), jax.device_put(state or {}, target)
    forward = jax.jit(api.build(family, config).apply)
    rng = jax.device_put(jax.random.PRNGKey(0), target)
    jax_inputs = {k: jax.device_put(v, target) for k, v in upstream.items()}
    start = time.perf_counter()
    jax.block_until_ready(forward(params, state, rng, jax_inputs))
    compile_s = time.perf_counter() - start
    return (lambda: jax.block_until_ready(forward(params, state, rng, jax_inputs))), compile_s


def _upstream_layout(task: str, inputs: tuple) -> dict:
    """Our benchmark inputs in upstream's (golden io.npz) layout, as numpy."""
    if task == "language":
        ids, mask = inputs
        return {"inputs": ids.int().cpu().numpy(), "input_mask": mask.int().cpu().numpy()}
    if task.startswith("imagenet"):
        return {"images": inputs[0].permute(0, 2, 3, 1).cpu().numpy()}
    if task == "optical_flow":
        return {"images": torch.stack(inputs, dim=1).permute(0, 1, 3, 4, 2).cpu().numpy()}
    images, audio, subsample = inputs
    return {"images": images.permute(0, 1, 3, 4, 2).cpu().numpy(), "audio": audio.cpu().numpy(),
            "subsample_image": subsample["image"].cpu().numpy(), "subsample_audio": subsample["audio"].cpu().numpy()}
