"""Fast parameter initialisation with Haiku's initializer distributions, sampled in numpy.

Haiku's own `init` draws every parameter with JAX's threefry RNG; XLA needs 10-40 s on a busy
CPU to compile the ~50 truncated-normal draws of even a tiny Perceiver (eagerly, each shape
compiles separately and it is no faster). Here the model is traced abstractly
(`jax.eval_shape`), a custom creator records each parameter's initializer, shape and dtype,
and the values are then drawn in numpy from the same distributions (truncated normals at
+-2 sigma with Haiku's stddev rules; constants evaluated as given). Only the bit stream
differs from Haiku's; `init(..., haiku_rng=True)` runs Haiku's own init instead.
"""

from __future__ import annotations

import haiku as hk
import jax
import numpy as np

# std of a unit normal truncated to [-2, 2]: Haiku's VarianceScaling divides by it.
_TRUNCATED_STD = 0.87962566103423978


class UnsupportedInitializer(TypeError):
    """An initializer that draws random numbers in a way this sampler does not reproduce."""


def record_parameters(forward, rng, inputs):
    """[(module, name, shape, dtype, initializer)] of `forward` (untransformed) in creation order, and its
    abstract state tree."""
    records = []

    def creator(next_creator, shape, dtype, init, context):
        records.append((context.module_name, context.name, tuple(shape), np.dtype(dtype), init))
        return next_creator(shape, dtype, init)

    def recorded(inputs):
        with hk.custom_creator(creator, params=True, state=False):
            return forward(inputs)

    _, state = jax.eval_shape(hk.transform_with_state(recorded).init, rng, inputs)
    return records, state


def _truncated_normal(rng, lower, upper, shape):
    out = rng.standard_normal(shape)
    bad = (out < lower) | (out > upper)
    while bad.any():  # resample only the rejected draws (~5% for +-2 sigma)
        out[bad] = rng.standard_normal(int(bad.sum()))
        bad = (out < lower) | (out > upper)
    return out


def _variance_scaling_stddev(init, shape):
    if len(shape) < 1:
        fan_in = fan_out = 1
    elif len(shape) == 1:
        fan_in = fan_out = shape[0]
    elif len(shape) == 2:
        fan_in, fan_out = shape
    elif init.fan_in_axes is not None:
        fan_in = int(np.prod([shape[i] for i in init.fan_in_axes]))
        fan_out = int(np.prod([s for i, s in enumerate(shape) if i not in init.fan_in_axes]))
    else:  # a convolution kernel (..., in, out)
        field = int(np.prod(shape[:-2]))
        fan_in, fan_out = shape[-2] * field, shape[-1] * field
    fan = {"fan_in": fan_in, "fan_out": fan_out}.get(init.mode, (fan_in + fan_out) / 2.0)
    return init.scale / max(1.0, fan)


def sample(init, shape, dtype, rng: np.random.Generator) -> np.ndarray:
    """One parameter drawn from `init`'s distribution (numpy), or evaluated if `init` is deterministic."""
    inits = hk.initializers
    if isinstance(init, inits.TruncatedNormal):
        unit = _truncated_normal(rng, float(init.lower), float(init.upper), shape)
        return (float(init.mean) + float(init.stddev) * unit).astype(dtype)
    if isinstance(init, inits.VarianceScaling):
        variance = _variance_scaling_stddev(init, shape)
        if init.distribution == "truncated_normal":
            return (np.sqrt(variance) / _TRUNCATED_STD * _truncated_normal(rng, -2.0, 2.0, shape)).astype(dtype)
        if init.distribution == "normal":
            return (np.sqrt(variance) * rng.standard_normal(shape)).astype(dtype)
        limit = np.sqrt(3.0 * variance)
        return rng.uniform(-limit, limit, shape).astype(dtype)
    if isinstance(init, inits.RandomNormal):
        return (float(init.mean) + float(init.stddev) * rng.standard_normal(shape)).astype(dtype)
    if isinstance(init, inits.RandomUniform):
        return rng.uniform(float(init.minval), float(init.maxval), shape).astype(dtype)
    # Constants (jnp.zeros, jnp.ones, Constant): no RNG, so they evaluate outside a transform.
    try:
        return np.asarray(init(shape, dtype))
    except (ValueError, RuntimeError) as exc:  # Haiku: "must be used as part of an `hk.transform`"
        raise UnsupportedInitializer(
            f"initializer {init!r} needs Haiku's RNG; use init(..., haiku_rng=True)") from exc


def sampled_params(records, seed: int) -> dict[str, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    params: dict[str, dict[str, np.ndarray]] = {}
    for module, name, shape, dtype, init in records:
        params.setdefault(module, {})[name] = sample(init, shape, dtype, rng)
    return params
