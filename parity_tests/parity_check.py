"""Shared driver of the JAX-vs-Torch parity tests: init in JAX, convert, run both, assert.

Tolerances: float32 at atol=rtol=1e-4 (the two frameworks round differently,
einsum vs SDPA, fused vs unfused GELU: ~1e-6..1e-5 on these small models;
a structural bug is O(1e-2) or more); float64 at atol=rtol=1e-9, where
rounding is ~1e-15 relative, so only an exact structure passes.
"""

from __future__ import annotations

import copy
import json
from functools import cache

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from converters import jax_reference
from converters.parity import ParityReport, run_parity

TOLERANCE = {"float32": 1e-4, "float64": 1e-9}


def merged(base: dict, **overrides) -> dict:
    """`base` with nested overrides: merged(cfg, encoder={"num_blocks": 2})."""
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], **value)
        else:
            out[key] = value
    return out


def init_checkpoint(task: str, config: dict, seed: int = 0) -> dict:
    """A perturbed JAX-initialised checkpoint tree in the release pickle layout.

    Cached per (task, config, seed) and initialised on batch-1 inputs (parameters do not
    depend on the batch): compiling Haiku's init dominates a parity check's cost.
    """
    return _init_checkpoint(task, json.dumps(config, sort_keys=True), seed)


@cache
def _init_checkpoint(task: str, config_json: str, seed: int) -> dict:
    config = json.loads(config_json)
    inputs = jax_reference.example_inputs(task, config, batch=1, seed=seed)
    params, state = jax_reference.init(task, config, inputs, seed=seed, perturb=True)
    return jax_reference.checkpoint_tree(task, params, state)


def check_parity(task: str, config: dict, device: str, batch: int = 1, seed: int = 0,
                 inputs: dict | None = None) -> dict[str, ParityReport]:
    """Assert float32 and float64 parity for one configuration; returns both reports."""
    if inputs is None:
        inputs = jax_reference.example_inputs(task, config, batch=batch, seed=seed)
    checkpoint = init_checkpoint(task, config, seed)
    reports = {}
    for dtype, tol in TOLERANCE.items():
        report = run_parity(task, config, checkpoint=checkpoint, inputs=inputs, device=device, dtype=dtype,
                            atol=tol, rtol=tol)
        assert report.outputs, "the harness compared no outputs"
        assert report.passed, f"{dtype} parity failed for config {config}:\n{report.table()}"
        reports[dtype] = report
    return reports


def grid_params(grid: dict, slow: set[str] = frozenset()) -> list:
    """pytest params of a {name: (config, batch)} grid, the names in `slow` marked slow.

    The default run keeps a subset that still covers every dimension at least once
    (so CI stays within minutes on 2 cores); `-m slow` runs the rest.
    """
    unknown = set(slow) - set(grid)
    assert not unknown, f"slow names not in the grid: {sorted(unknown)}"
    return [pytest.param(name, id=name, marks=[pytest.mark.slow] if name in slow else []) for name in sorted(grid)]


def grid_parity_test(task: str, grid: dict, slow: set[str] = frozenset()):
    """A test over a {name: (config, batch)} grid, one case per name and device."""
    @pytest.mark.parametrize("name", grid_params(grid, slow))
    def test(name, device):
        config, batch = grid[name]
        check_parity(task, config, device, batch=batch)

    return test


def hypothesis_parity_test(task: str, configs, max_examples: int, slow: bool = False):
    """A property test: `max_examples` configurations drawn from `configs`, batch 1..3, each checked.

    Derandomized (the same examples on every run, so CI is stable) and without deadline
    (a first example pays JAX's compilation).
    """
    @settings(max_examples=max_examples, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(config=configs, batch=st.integers(1, 3))
    def test(config, batch, device):
        check_parity(task, config, device, batch=batch)

    return pytest.mark.slow(test) if slow else test
