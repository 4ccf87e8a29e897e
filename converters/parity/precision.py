"""Reduced-precision runs of the Torch models and the figures their error budgets are made of.

A precision is how Torch runs while the JAX reference stays in float32:
'bfloat16' / 'float16' with mode 'cast' (`model.to(dtype)`, inputs cast too)
or 'autocast' (a float32 model under `torch.autocast(dtype)`), and 'tf32'
(a float32 model with TF32 matmuls and convolutions: real ones on CUDA,
emulated elsewhere by `parity.tf32_emulation`, rounding 'nearest' or
'truncate').

The figures: per output, the normalised error max|torch - ref| / max|ref|
(rounding errors of a low precision scale with the activations, so a budget
relative to the output's peak holds across weights and sizes); per task, the
agreement that a user sees (greedy bytes for MLM, top-1 / top-5 for
classification, end-point error for flow, reconstruction error and label
top-1 for video).
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from .tf32_emulation import ROUNDINGS, emulate_tf32

PRECISIONS = {"bfloat16": torch.bfloat16, "float16": torch.float16, "tf32": torch.float32}
MODES = ("cast", "autocast")


def model_dtype(precision: str, mode: str) -> torch.dtype:
    """The dtype the Torch model (and its inputs) is put in for `precision` run in `mode`."""
    return PRECISIONS[precision] if mode == "cast" and precision != "tf32" else torch.float32


@contextlib.contextmanager
def precision_context(precision: str, mode: str, device: str, tf32_rounding: str | None = None):
    """Autocast for mode 'autocast'; TF32 matmuls and convolutions for 'tf32'; restored afterwards.

    TF32 is real on CUDA (`allow_tf32`, cuBLAS / cuDNN choose the rounding: `tf32_rounding` must be None)
    and emulated on other devices (`emulate_tf32`, `tf32_rounding` 'nearest' by default, or 'truncate').
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {tuple(PRECISIONS)}, got {precision!r}.")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}.")
    check_tf32_rounding(precision, device, tf32_rounding)
    with contextlib.ExitStack() as stack:
        if precision == "tf32" and device == "cuda":
            saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
            stack.callback(_restore_tf32, saved)
        elif precision == "tf32":
            stack.enter_context(emulate_tf32(tf32_rounding or "nearest"))
        elif mode == "autocast":
            stack.enter_context(torch.autocast(device, dtype=PRECISIONS[precision]))
        yield


@contextlib.contextmanager
def exact_torch_matmuls(device: str):
    """TF32 off for this run (torch's cuDNN default is on: CUDA float32 convolutions ~1e-3 off, matmuls too where
    enabled), restored afterwards. A no-op off CUDA."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
             torch.get_float32_matmul_precision())
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved[:2]
        torch.set_float32_matmul_precision(saved[2])


def check_tf32_rounding(precision: str, device: str, tf32_rounding: str | None) -> None:
    """A TF32 rounding is only chosen for emulated TF32 (precision 'tf32' off CUDA)."""
    if tf32_rounding is None:
        return
    if precision != "tf32":
        raise ValueError(f"tf32_rounding is only used with precision 'tf32', not {precision!r}.")
    if device == "cuda":
        raise ValueError("tf32_rounding is for emulated TF32 (device 'cpu'); on CUDA, cuBLAS and cuDNN round.")
    if tf32_rounding not in ROUNDINGS:
        raise ValueError(f"tf32_rounding must be one of {ROUNDINGS}, got {tf32_rounding!r}.")


def tf32_kind(device: str, tf32_rounding: str | None) -> str:
    """How a 'tf32' run on `device` gets its TF32, in words (reports print it)."""
    if device == "cuda":
        return "real TF32 (CUDA, torch.backends.cuda.matmul.allow_tf32 / cudnn.allow_tf32)"
    return (f"TF32 emulated on {device} (matmul/conv inputs rounded to TF32, "
            f"rounding {tf32_rounding or 'nearest'}; converters.parity.tf32_emulation)")


def _restore_tf32(saved) -> None:
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def normalised_error(actual, reference) -> float:
    """max |actual - reference| / max |reference| (inf for NaN or a shape mismatch)."""
    a, r = np.asarray(actual, np.float64), np.asarray(reference, np.float64)
    if a.shape != r.shape or np.isnan(a).any():
        return float("inf")
    peak = float(np.abs(r).max()) if r.size else 0.0
    err = float(np.abs(a - r).max()) if r.size else 0.0
    return err / peak if peak else err


def _topk(logits: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-logits, axis=-1, kind="stable")[..., :k]


def _classification(actual: np.ndarray, reference: np.ndarray, prefix: str = "") -> dict[str, float]:
    k = min(5, reference.shape[-1])
    top_a, top_r = _topk(actual, k), _topk(reference, k)
    overlap = np.mean([len(set(a) & set(r)) / k for a, r in zip(top_a.reshape(-1, k), top_r.reshape(-1, k),
                                                                 strict=True)])
    return {f"{prefix}top1_agreement": float(np.mean(top_a[..., 0] == top_r[..., 0])),
            f"{prefix}top5_overlap": float(overlap)}


def _relative_rms(actual: np.ndarray, reference: np.ndarray) -> float:
    a, r = np.asarray(actual, np.float64), np.asarray(reference, np.float64)
    return float(np.sqrt(np.mean((a - r) ** 2)) / max(np.sqrt(np.mean(r ** 2)), 1e-30))


def agreement(task: str, actual: dict, reference: dict, inputs: dict) -> dict[str, float]:
    """Task-level agreement of Torch's outputs with the reference's, on upstream-layout outputs and inputs.

    Higher is better for `*agreement` / `*overlap` (fractions in [0, 1]), lower for errors.
    """
    if task == "language":
        valid = np.asarray(inputs["input_mask"]).astype(bool)
        same = actual["logits"].argmax(-1) == reference["logits"].argmax(-1)
        return {"greedy_byte_agreement": float(same[valid].mean()) if valid.any() else 1.0}
    if task == "imagenet":
        return _classification(actual["logits"], reference["logits"])
    if task == "optical_flow":
        epe = np.linalg.norm(np.asarray(actual["flow"], np.float64) - reference["flow"], axis=-1)
        return {"mean_epe": float(epe.mean()), "max_epe": float(epe.max())}
    if task == "video_autoencoding":
        return {"image_relative_rms": _relative_rms(actual["image"], reference["image"]),
                "audio_relative_rms": _relative_rms(actual["audio"], reference["audio"]),
                **_classification(actual["label"], reference["label"], prefix="label_")}
    raise ValueError(f"no agreement measure for task {task!r}.")


def higher_is_better(metric: str) -> bool:
    return metric.endswith(("agreement", "overlap"))
