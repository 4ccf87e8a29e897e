"""TF32 matmuls and convolutions emulated on any device: `with emulate_tf32("nearest"): model(x)`.

What is emulated. Under `emulate_tf32(rounding)`, a `TorchDispatchMode` sees every ATen call. For the
matrix products (mm, bmm, addmm, baddbmm, addbmm, and matmul should it reach dispatch) and convolutions
(`convolution`) it rounds the float32 matrix operands, and a convolution's input and weight, to TF32: the
float32 exponent with 10 explicit mantissa bits, round-to-nearest-even ("nearest") or toward zero
("truncate"). The product itself then runs in float32 with float32 accumulation, as an Ampere-or-later
tensor core accumulates TF32 products. Biases and addmm/baddbmm/addbmm's added tensor are not rounded
(cuBLAS/cuDNN epilogues are float32), nor is anything that is not float32 (float64, bfloat16, float16,
integers). `F.scaled_dot_product_attention` is forced onto its math backend inside the context, whose q k^T
and weights-times-v products are bmm calls and get rounded, as CUDA's TF32 rounds that path's matmuls;
a fused attention kernel reached anyway (a caller's own `sdpa_kernel`) is refused rather than run unrounded.
Matrix-vector products (mv, dot, addmv) are left alone: cuBLAS runs them as gemv, outside the tensor cores.

What a real GPU may do differently: cuBLAS does not document which rounding it applies to TF32 operands
(hence both roundings, the worse one kept, in benchmarks/measure_precision.py); its kernels may split K
and sum the partial products in another order (split-K), and cuDNN picks convolution algorithms (FFT,
Winograd, implicit GEMM) whose own rounding differs from rounding the operands of a direct convolution;
float32 denormals may be flushed. Forward passes only: autograd's backward matmuls are rounded too when
they run inside the context, but the emulation is meant for inference measurements. A real GPU run under
`torch.backends.cuda.matmul.allow_tf32` is what confirms the emulated figures.
"""

from __future__ import annotations

import collections
import contextlib

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils._python_dispatch import TorchDispatchMode

ROUNDINGS = ("nearest", "truncate")

# TF32 keeps float32's sign and 8 exponent bits and the top 10 of its 23 mantissa bits: the low 13 go.
_DROPPED_BITS = 13
_LOW_MASK = (1 << _DROPPED_BITS) - 1
_HALF = 1 << (_DROPPED_BITS - 1)

aten = torch.ops.aten

# Per op, the names (from its schema) of the operands a TF32 tensor core reads.
_ROUNDED_OPERANDS = {
    aten.mm: ("self", "mat2"),
    aten.bmm: ("self", "mat2"),
    aten.addmm: ("mat1", "mat2"),
    aten.baddbmm: ("batch1", "batch2"),
    aten.addbmm: ("batch1", "batch2"),
    aten.matmul: ("self", "other"),
    aten.convolution: ("input", "weight"),
}

# Fused attention kernels would compute q k^T and the weighted sum of v without a rounded operand.
_FUSED_ATTENTION = tuple(getattr(aten, name) for name in (
    "_scaled_dot_product_flash_attention", "_scaled_dot_product_flash_attention_for_cpu",
    "_scaled_dot_product_efficient_attention", "_scaled_dot_product_cudnn_attention",
    "_scaled_dot_product_fused_attention_overrideable", "_flash_attention_forward", "_efficient_attention_forward",
) if hasattr(aten, name))


def round_to_tf32(x: torch.Tensor, rounding: str = "nearest") -> torch.Tensor:
    """float32 `x` with its mantissa cut to TF32's 10 bits, still a float32 tensor; inf and NaN unchanged.

    "nearest": round to nearest, ties to even (a finite value above TF32's largest finite one by at least
    half a unit in the last place becomes inf, as IEEE rounding does); "truncate": toward zero.
    """
    if rounding not in ROUNDINGS:
        raise ValueError(f"rounding must be one of {ROUNDINGS}, got {rounding!r}.")
    if x.dtype != torch.float32:
        raise TypeError(f"round_to_tf32 takes float32 tensors, got {x.dtype}.")
    # The magnitude's bits in int64, so that adding half a unit cannot overflow; the sign is put back after.
    magnitude = x.contiguous().view(torch.int32).to(torch.int64) & 0x7FFFFFFF
    if rounding == "nearest":
        magnitude = magnitude + (_HALF - 1) + ((magnitude >> _DROPPED_BITS) & 1)
    rounded = (magnitude & ~_LOW_MASK).to(torch.int32).view(torch.float32)
    return torch.where(torch.isfinite(x), torch.copysign(rounded, x), x)


class TF32EmulationMode(TorchDispatchMode):
    """Rounds the float32 operands of matrix products and convolutions to TF32 (see the module docstring).

    `rounded` counts the intercepted calls per op name, for checking that a model's products were seen.
    """

    def __init__(self, rounding: str = "nearest"):
        if rounding not in ROUNDINGS:
            raise ValueError(f"rounding must be one of {ROUNDINGS}, got {rounding!r}.")
        super().__init__()
        self.rounding = rounding
        self.rounded: collections.Counter[str] = collections.Counter()

    def _round(self, value):
        if isinstance(value, torch.Tensor) and value.dtype == torch.float32:
            return round_to_tf32(value, self.rounding)
        return value

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        packet = func.overloadpacket
        names = _ROUNDED_OPERANDS.get(packet)
        if names is not None:
            args = list(args)
            touched = False
            for index, argument in enumerate(func._schema.arguments):
                if argument.name not in names:
                    continue
                if index < len(args):
                    touched |= isinstance(args[index], torch.Tensor) and args[index].dtype == torch.float32
                    args[index] = self._round(args[index])
                elif argument.name in kwargs:
                    touched |= isinstance(kwargs[argument.name], torch.Tensor) and \
                        kwargs[argument.name].dtype == torch.float32
                    kwargs[argument.name] = self._round(kwargs[argument.name])
            if touched:
                self.rounded[packet.__name__] += 1
        elif packet in _FUSED_ATTENTION:
            raise RuntimeError(f"TF32 emulation met the fused attention kernel {packet.__name__}, whose products "
                               f"it cannot round; attention must take SDPA's math backend inside emulate_tf32.")
        return func(*args, **kwargs)


@contextlib.contextmanager
def emulate_tf32(rounding: str = "nearest"):
    """float32 matmuls and convolutions with TF32-rounded operands, SDPA on its math path; yields the mode."""
    mode = TF32EmulationMode(rounding)
    with sdpa_kernel(SDPBackend.MATH), mode:
        yield mode
