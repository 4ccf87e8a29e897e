"""Shared fixtures: the golden upstream data copied unchanged into parity_tests/fixtures/golden."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from perceiver_torch.registry import build_model

GOLDEN = Path(__file__).parent / "fixtures" / "golden"

# The parity tests compile one small XLA program per configuration and dtype; LLVM's optimisation
# passes are most of that time and buy nothing at these sizes (IEEE semantics are unchanged, the
# float64 checks at 1e-9 still hold). Set before JAX starts its backend; an XLA_FLAGS of your own wins.
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")

# float32 CPU parity against upstream outputs (DEVELOPERS.md): both
# implementations accumulate rounding differently (SDPA vs einsum, fused
# GELU), which stays ~1e-5 on these outputs; 1e-4 leaves margin without
# hiding a structural bug (those show as O(1e-1) or more).
ATOL = RTOL = 1e-4


# Golden fixture family -> the task its model is (the three ImageNet variants share one task).
GOLDEN_TASKS = {"language": "language", "imagenet_learned": "imagenet", "imagenet_fourier": "imagenet",
                "imagenet_conv": "imagenet", "optical_flow": "optical_flow", "video_autoencoding": "video_autoencoding"}


def golden_dir(family: str) -> Path:
    return GOLDEN / family


def golden_config(family: str) -> dict:
    from converters import load_config

    return load_config(GOLDEN / family / "config.json")


def seeded_model(family: str, config: dict | None = None, seed: int = 0) -> torch.nn.Module:
    """`family`'s task model with its golden config (or `config`), initialised from `seed`: the same weights
    every call, in the mode a model is built in (train)."""
    torch.manual_seed(seed)
    return build_model(GOLDEN_TASKS[family], golden_config(family) if config is None else config)


def assert_same_weights(actual: torch.nn.Module, expected: torch.nn.Module) -> None:
    """`actual` is a model of `expected`'s class with bit-identical state (every parameter and buffer)."""
    assert type(actual) is type(expected)
    assert actual.state_dict().keys() == expected.state_dict().keys()
    for key, tensor in expected.state_dict().items():
        assert torch.equal(actual.state_dict()[key], tensor), key


def golden_io(family: str) -> dict[str, np.ndarray]:
    with np.load(GOLDEN / family / "io.npz") as data:
        return {k: data[k] for k in data.files}


def released_shapes() -> dict:
    return json.loads((GOLDEN / "released_shapes.json").read_text())


def assert_close(actual, expected, atol=ATOL, rtol=RTOL, what="output"):
    actual = np.asarray(actual)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    err = np.abs(actual - expected)
    worst = np.unravel_index(np.argmax(err - rtol * np.abs(expected)), err.shape)
    assert np.allclose(actual, expected, atol=atol, rtol=rtol), (
        f"{what}: max abs error {err.max():.3e} (worst at {worst}: {actual[worst]} vs {expected[worst]})"
    )


def convert_golden(task: str, family: str, out_dir: Path, pickle_name: str = "checkpoint.pickle") -> Path:
    """The golden checkpoint of `family` converted through the public contract into `out_dir`."""
    import converters

    return converters.convert(
        task, golden_dir(family) / pickle_name, golden_dir(family) / "config.json",
        Path(out_dir) / f"{family}.safetensors",
    )


@pytest.fixture
def converted(tmp_path):
    """convert(task, family) -> path of the golden checkpoint converted through the public contract."""

    def _convert(task: str, family: str, pickle_name: str = "checkpoint.pickle") -> Path:
        return convert_golden(task, family, tmp_path, pickle_name)

    return _convert


# Parity tests take a `device` argument: "cpu" always, "cuda" (marked `cuda`) skipped
# without a GPU visible to both Torch and JAX, or failed when PERCEIVER_REQUIRE_CUDA=1.
def _cuda_missing() -> str | None:
    if not torch.cuda.is_available():
        return "torch.cuda.is_available() is False"
    import jax

    try:
        jax.devices("gpu")
    except RuntimeError:
        return "JAX has no GPU backend (install jax with CUDA support)"
    return None


def _usable(device: str) -> str:
    if device == "cuda" and (missing := _cuda_missing()):
        if os.environ.get("PERCEIVER_REQUIRE_CUDA") == "1":
            pytest.fail(f"PERCEIVER_REQUIRE_CUDA=1 but no usable CUDA device: {missing}")
        pytest.skip(f"no CUDA device: {missing}")
    return device


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def device(request) -> str:
    return _usable(request.param)


# For checks that only exist on a GPU (float16 and TF32 budgets): the same skip/fail rule.
@pytest.fixture(params=[pytest.param("cuda", marks=pytest.mark.cuda)])
def cuda_device(request) -> str:
    return _usable(request.param)
