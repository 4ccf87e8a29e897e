"""Checks of the task models' inputs: refuse what would otherwise give silent garbage, naming the layout.

Shape and dtype checks read metadata only, so they run everywhere, traced
code included (a fixed size becomes a static check; the batch stays free).
Value checks (id ranges, pixel scales) need the data: they run only in eager
mode on CPU tensors, where reading a min/max costs no device sync and
traces nothing, and not inside `torch.func.vmap`, which cannot read values.
`forward` on an accelerator, under `torch.compile` or being
exported never reads values on the host (the one exception, the video's
subsample indices and `PerceiverIO`'s subsampled output points, are checked
there by `torch._assert_async`, which needs no sync: `check_indices`); the
`torch.no_grad` helpers (`classify`, `estimate_flow`,
`autoencode`) check values on any device, once per call.
"""

from __future__ import annotations

import math

import torch

from ..integers import is_int

INDEX_DTYPES = (torch.int32, torch.int64)  # what nn.Embedding and gathers take


def check_top_k(where: str, k, num_classes: int) -> int:
    """`k` as an int if it is an integer (NumPy's included, bool not) in [1, num_classes], else a named error."""
    if not is_int(k) or not 1 <= k <= num_classes:
        raise ValueError(f"{where}: k must be an integer in [1, {num_classes}]; got {k!r}.")
    return int(k)


def check_count(where: str, name: str, value) -> int:
    """`value` as an int if it is an integer (NumPy's included, bool not) >= 1, else a named ValueError."""
    if not is_int(value) or value < 1:
        raise ValueError(f"{where}: {name} must be an integer >= 1; got {value!r}.")
    return int(value)


def describe(value) -> str:
    """'float32 [2, 7]' for a tensor, else the type's name: what the error messages show as 'got'."""
    if isinstance(value, torch.Tensor):
        return f"{str(value.dtype).removeprefix('torch.')} {list(value.shape)}"
    return type(value).__name__


def tracing() -> bool:
    """Whether torch.compile or torch.export is tracing this call (data must not be read then)."""
    return torch.compiler.is_compiling() or torch.compiler.is_exporting()


def transformed(tensor: torch.Tensor) -> bool:
    """Whether `tensor` is a torch.func transform's wrapper (vmap's batched tensor, grad's): vmap cannot read a
    value to the host (per-sample gradients run `vmap(grad(...))`), so value checks step aside, as when tracing."""
    return torch._C._functorch.is_functorch_wrapped_tensor(tensor)


def values_readable(tensor: torch.Tensor, *, any_device: bool = False) -> bool:
    """Whether a value check may read `tensor`: eager, not inside a torch.func transform, and on CPU unless
    `any_device` (helpers only)."""
    return (not tracing() and not transformed(tensor) and (any_device or tensor.device.type == "cpu")
            and tensor.numel() > 0)


def check_range(where: str, name: str, tensor: torch.Tensor, low: float, high: float, expected: str,
                *, any_device: bool = False) -> None:
    """Refuse values outside [low, high] (NaN included) where values may be read; `expected` says why."""
    if not values_readable(tensor, any_device=any_device):
        return
    lowest, highest = (float(v) for v in torch.aminmax(tensor.detach()))
    if not (low <= lowest and highest <= high):  # written so that NaN fails
        if math.isnan(lowest) or math.isnan(highest):  # aminmax propagates NaN: the range would read [nan, nan]
            raise ValueError(f"{where}: {name} holds NaN (not a number) values; it {expected}.")
        raise ValueError(f"{where}: {name} {expected}; got values in [{lowest:g}, {highest:g}].")


def check_batch(where: str, name: str, tensor: torch.Tensor, expected: str) -> None:
    """Refuse an empty batch (it reaches torch internals as an unrelated message otherwise)."""
    if tensor.shape[0] < 1:
        raise ValueError(f"{where}: {name} must be {expected} with B >= 1; got an empty batch {describe(tensor)}.")


def check_float(where: str, name: str, value, expected: str) -> None:
    """Refuse a non-tensor or a tensor whose dtype is not floating point."""
    if not isinstance(value, torch.Tensor) or not value.is_floating_point():
        raise TypeError(f"{where}: {name} must be {expected}; got {describe(value)}.")


def check_latents(where: str, latents, shape: tuple[int, int] | torch.Size) -> None:
    """Refuse what `forward_features` does not give: a floating-point tensor [B, *shape], B >= 1.

    `shape` is (num_latents, num_features), the encoder's learned latents' own.
    """
    num_latents, channels = shape
    expected = f"[B, {num_latents}, {channels}] from forward_features"
    check_float(where, "latents", latents, f"a floating-point tensor {expected}")
    if latents.ndim != 3 or tuple(latents.shape[1:]) != (num_latents, channels):
        raise ValueError(f"{where}: latents must be {expected}; got {describe(latents)}.")
    check_batch(where, "latents", latents, expected)


def check_flag(where: str, name: str, value) -> None:
    """Refuse a flag that is not a bool (bool('no') is True: a string or tensor would pass as a truth value)."""
    if not isinstance(value, bool):
        raise TypeError(f"{where}: {name} must be a bool; got {type(value).__name__} {value!r}.")


def check_binary(where: str, expected: str, mask: torch.Tensor, meaning: str) -> None:
    """Refuse mask values other than 0 and 1 where values may be read; `meaning` says what 1 and 0 are.

    Any non-zero counts as 1 downstream: a soft mask (e.g. 0.5) would be taken as fully valid.
    """
    if values_readable(mask) and not ((mask == 0) | (mask == 1)).all():
        raise ValueError(f"{where}: {expected}; got other values (the mask is binary: {meaning}).")


def check_indices(where: str, name: str, idx, limit: int, device: torch.device) -> torch.Tensor:
    """Query indices `idx` as a 1-D int64 tensor on `device`, each in [0, `limit`); else a named error.

    A list or array of indices is converted (never so when traced). The layout is a ValueError. Values are
    read in eager on CPU (a ValueError); on an accelerator or traced, `torch._assert_async` checks them
    without a host sync (an index turns into a query position arithmetically, so nothing else would fail:
    an out-of-range or negative one would decode garbage silently), and under export two gathers check
    them too (`gather_checked`: ONNX drops the assert).
    """
    refusal = f"{where}: {name} must be a 1-D integer tensor of query indices; got "
    if not isinstance(idx, torch.Tensor):
        try:
            idx = torch.as_tensor(idx)
        except (TypeError, ValueError, RuntimeError):  # a str, a ragged list: torch's message names neither
            raise ValueError(f"{refusal}{describe(idx)}.") from None
    if idx.ndim != 1 or idx.dtype not in INDEX_DTYPES:
        raise ValueError(f"{refusal}{describe(idx)}.")
    expected = f"indices must lie in [0, {limit})"
    if values_readable(idx):  # eager, on the host: a clear error before anything runs
        check_range(where, name, idx, 0, limit - 1, expected)
    else:
        torch._assert_async(((idx >= 0) & (idx < limit)).all(), f"{where}: {name} {expected}.")
    idx = idx.to(device=device, dtype=torch.long)
    return gather_checked(idx, limit) if torch.compiler.is_exporting() else idx


def gather_checked(idx: torch.Tensor, limit: int) -> torch.Tensor:
    """`idx`, read through two gathers that fail on an index outside [0, limit): a check that survives ONNX.

    torch's ONNX exporter drops `_assert_async`, so an exported program would decode out-of-range points
    silently; onnxruntime's Gather refuses indices outside [-limit, limit). `positions[idx]` catches those
    >= limit, `positions[mirrored]` (mirrored = limit - 1 - idx) the negative ones, which Gather would wrap;
    in range the second gather returns `mirrored` itself, so the result is `idx`, and both gathers stay in the
    graph.
    """
    positions, mirrored = torch.arange(limit, device=idx.device), limit - 1 - idx
    return positions[idx] + (positions[mirrored] - mirrored)
