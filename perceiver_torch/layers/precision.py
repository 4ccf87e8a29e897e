"""Float32 islands of a reduced-precision model, and the layers that implement them.

A model in bfloat16 or float16 (through `model.to(dtype)` or under
`torch.autocast`) still computes a few things at float32 or wider, because
measurement showed they need it (README, "Precision"; the figures with and
without each island come from `benchmarks/measure_precision.py`):

- `position_features`: Fourier position features are computed from float32
  positions (sin(pi * x * f) with f up to res/2 = 112 loses all its digits in
  bfloat16) and only then cast to the model's dtype.
- `layer_norm`: layer norms take their input widened to float32 (the residual
  stream may already be float32) and return the dtype of their parameters, so
  the layer after them sees the model's dtype whatever the input dtype.
- `residual`: the residual stream (the latents, the decoder's queries) is
  carried in float32 from the first residual sum on; only the attention and
  MLP branches run in the model's dtype. This is what autocast does by
  construction (its latents stay float32); it is what brings
  `model.to(torch.bfloat16)` close to autocast. The encoder widens its
  learned latents before they enter the cross-attention, and a
  cross-attention widens its query before adding the query residual (the
  ImageNet Fourier and conv decoders'): summed in bfloat16 instead, golden
  ImageNet Fourier measured 1.14e-2 -> 1.28e-2.
- `final_projection`: the last linear layer of every task (logits, flow,
  reconstructions) runs in float32, with autocast disabled for it, and returns
  float32.
- `attention` (off by default): q, k and v widened to float32 for SDPA.
  Measured to change nothing worth its cost: SDPA already accumulates and
  takes its softmax in float32 for bfloat16/float16 inputs on CPU and CUDA.

Float32 and float64 models are untouched: "widened" means at least float32.
`fp32_islands(...)` switches islands off (or `attention` on) for one block of
code, which is how the effect of each is measured; it is a diagnostic, not a
tuning knob.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

REDUCED = (torch.bfloat16, torch.float16)


def wide(dtype: torch.dtype) -> torch.dtype:
    """float32 for a reduced-precision dtype, the dtype itself otherwise (float32, float64)."""
    return torch.float32 if dtype in REDUCED else dtype


@dataclasses.dataclass
class Fp32Islands:
    position_features: bool = True
    layer_norm: bool = True
    residual: bool = True
    final_projection: bool = True
    attention: bool = False


ISLANDS = Fp32Islands()


@contextlib.contextmanager
def fp32_islands(**flags: bool):
    """Set islands on/off inside the block (e.g. `fp32_islands(residual=False)`), restored afterwards."""
    unknown = sorted(set(flags) - {f.name for f in dataclasses.fields(Fp32Islands)})
    if unknown:
        raise ValueError(f"unknown fp32 islands {unknown}; known: {[f.name for f in dataclasses.fields(Fp32Islands)]}.")
    not_bool = sorted(name for name, value in flags.items() if type(value) is not bool)
    if not_bool:  # bool('false') is True: a string would leave an island on and an ablation measure nothing
        raise ValueError(f"fp32 islands take True or False; got {', '.join(f'{n}={flags[n]!r}' for n in not_bool)}.")
    saved = dataclasses.asdict(ISLANDS)
    for name, value in flags.items():
        setattr(ISLANDS, name, value)
    try:
        yield ISLANDS
    finally:
        for name, value in saved.items():
            setattr(ISLANDS, name, value)


def residual_stream(x: torch.Tensor) -> torch.Tensor:
    """The residual stream's dtype for `x`: widened to float32 under the `residual` island."""
    return x.to(wide(x.dtype)) if ISLANDS.residual else x


def position_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype position features are computed in for a model running in `dtype`."""
    return wide(dtype) if ISLANDS.position_features else dtype


class LayerNorm(nn.LayerNorm):
    """`nn.LayerNorm` (same parameters and state-dict names) that accepts any floating input dtype.

    It normalises in float32 or wider (the `layer_norm` island) and returns
    the dtype of its own parameters: bfloat16 after `model.to(torch.bfloat16)`,
    float32 under autocast (the next linear layer casts), whatever the
    residual stream's dtype.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out_dtype = self.weight.dtype
        if not ISLANDS.layer_norm:
            return super().forward(x.to(out_dtype))
        dtype = wide(out_dtype)
        out = F.layer_norm(x.to(dtype), self.normalized_shape, self.weight.to(dtype), self.bias.to(dtype), self.eps)
        return out.to(out_dtype)


@torch.compiler.assume_constant_result
def autocast_available(device_type: str) -> bool:
    """`torch.amp.is_autocast_available`, taken by Dynamo as a constant of the graph.

    Dynamo folds the torch function itself only from torch 2.12 on; before, it is a graph break at every call.
    The answer depends on the device type alone, which the graph's tensor guards already fix.
    """
    return torch.amp.is_autocast_available(device_type)


def autocast_weights(module: nn.Module) -> dict[str, torch.Tensor] | None:
    """Under autocast: the float32 weights and biases of `module`'s linear layers, cast to autocast's dtype.

    The cast autocast would make at each call of those layers, made once: for weights applied more than once
    in a forward (a block repeated with shared weights), passed down the call as an argument (`sub_weights`,
    `linear_with`). Autocast caches such casts itself only for parameters that require grad, so after
    `requires_grad_(False)` it casts them again at every use. None outside autocast.

    Only plain `nn.Linear` layers without hooks take part: a subclass or a hooked layer is called as it is.
    """
    device = next(module.parameters()).device.type
    if not (autocast_available(device) and torch.is_autocast_enabled(device)):
        return None
    dtype = torch.get_autocast_dtype(device)
    return {f"{prefix}.{name}" if prefix else name: p.to(dtype)
            for prefix, layer in module.named_modules()
            if type(layer) is nn.Linear and not (layer._forward_hooks or layer._forward_pre_hooks)
            for name, p in layer.named_parameters(recurse=False) if p.dtype == torch.float32}


def sub_weights(weights: dict[str, torch.Tensor] | None, prefix: str) -> dict[str, torch.Tensor] | None:
    """The entries of `weights` (from `autocast_weights`) under `prefix`, named relative to it."""
    if weights is None:
        return None
    start = prefix + "."
    return {name[len(start):]: w for name, w in weights.items() if name.startswith(start)}


def linear_with(layer: nn.Linear, x: torch.Tensor, weights: dict[str, torch.Tensor] | None,
                name: str) -> torch.Tensor:
    """`layer(x)`, computed with the cast weight and bias `weights` holds for `name` where it holds them.

    The weights are arguments, never swapped into the module (as `torch.func.functional_call` would): a swap
    is seen by every thread running the model meanwhile, and two overlapping swaps put the casts back as the
    module's weights for good.
    """
    weight = None if weights is None else weights.get(f"{name}.weight")
    if weights is None or weight is None:
        return layer(x)
    return F.linear(x, weight, weights.get(f"{name}.bias", layer.bias))


def autocast_off(device_type: str):
    """Autocast disabled on `device_type`; nothing to disable where autocast does not exist (e.g. meta)."""
    if autocast_available(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


def final_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x @ weight.T + bias for a task's last layer: at float32 or wider under the `final_projection` island.

    Autocast is switched off for it (it would cast back to its low dtype), and
    the result stays wide: reduced-precision models return float32 outputs.
    Without the island it runs in the parameters' dtype.
    """
    # A contiguous input: F.linear takes a strided one (a modality's slice of the decoder output) through
    # matmul, whose kernel depends on whether the weight requires grad, so a frozen model's outputs (or
    # functional_call's with detached weights) differed in the last bit. A contiguous one takes one kernel.
    if not ISLANDS.final_projection:
        return F.linear(x.to(weight.dtype).contiguous(), weight, bias)
    dtype = torch.promote_types(wide(weight.dtype), wide(x.dtype))
    with autocast_off(x.device.type):
        return F.linear(x.to(dtype).contiguous(), weight.to(dtype), None if bias is None else bias.to(dtype))


class FinalLinear(nn.Linear):
    """`nn.Linear` (same parameters and names) computed by `final_linear`: a task's last projection."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return final_linear(x, self.weight, self.bias)


def widen_inputs(inputs, dtype: torch.dtype | None):
    """Floating-point model inputs (a tensor or a dict of them) narrower than a model of `dtype`, widened to it.

    A float32 model given bfloat16 pixels would otherwise compute what follows the input in bfloat16: the
    position features (cast to the features' dtype), the padding and mask tokens of a multimodal input. The
    model's own dtype keeps its precision: the outputs are those of the input widened by the caller. A wider
    input (float32 into a bfloat16 model) is left as it is, the first layer or layer norm casting it.
    """
    def widen(x):
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or dtype is None:
            return x
        wider = torch.promote_types(x.dtype, dtype)
        return x if wider == x.dtype else x.to(wider)

    return {name: widen(x) for name, x in inputs.items()} if isinstance(inputs, Mapping) else widen(inputs)


class InputLinear(nn.Linear):
    """`nn.Linear` that first casts its input to its weight's dtype (a model input meeting the first layer)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.to(self.weight.dtype))
