"""Position encodings of upstream's `perceiver/position_encoding.py`, same API and Haiku names.

One deliberate difference: `build_linear_positions` builds its grid in JAX's default float
dtype instead of a fixed float32, so that under x64 the Fourier features are computed in
float64 end to end (with x64 off it is float32, exactly as upstream).
"""

from __future__ import annotations

import abc
import functools

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np


def generate_fourier_features(pos, num_bands, max_resolution=(224, 224), concat_pos=True, sine_only=False):
    """Features of `pos` [n, d]: [pos?, sin(pi f pos) per dim and band, cos(...)?]; bands run 1..res/2."""
    bands = jnp.stack(
        [jnp.linspace(1.0, res / 2, num=num_bands, endpoint=True) for res in max_resolution], axis=0
    )
    # [n, d, K] -> [n, d * K]: all bands of dim 0, then all bands of dim 1, ...
    scaled = (pos[:, :, None] * bands[None, :, :]).reshape(pos.shape[0], -1)
    if sine_only:
        features = jnp.sin(jnp.pi * scaled)
    else:
        features = jnp.concatenate([jnp.sin(jnp.pi * scaled), jnp.cos(jnp.pi * scaled)], axis=-1)
    if concat_pos:
        features = jnp.concatenate([pos, features], axis=-1)
    return features


def build_linear_positions(index_dims, output_range=(-1.0, 1.0)):
    """Grid [*index_dims, len(index_dims)] of coordinates spanning `output_range` in each dim."""
    axes = [jnp.linspace(output_range[0], output_range[1], num=n, endpoint=True) for n in index_dims]
    return jnp.stack(jnp.meshgrid(*axes, indexing="ij"), axis=-1)


class AbstractPositionEncoding(hk.Module, metaclass=abc.ABCMeta):
    """Called with a batch size (and optional positions), returns [B, N, C] encodings."""

    @abc.abstractmethod
    def __call__(self, batch_size, pos):
        raise NotImplementedError


class TrainablePositionEncoding(AbstractPositionEncoding):
    """A learned [index_dim, num_channels] table (`pos_embs`), broadcast over the batch."""

    def __init__(self, index_dim, num_channels=128, init_scale=0.02, name=None):
        super().__init__(name=name)
        self._index_dim = index_dim
        self._num_channels = num_channels
        self._init_scale = init_scale

    def __call__(self, batch_size, pos=None):
        del pos  # a learned table ignores coordinates
        table = hk.get_parameter(
            "pos_embs", [self._index_dim, self._num_channels],
            init=hk.initializers.TruncatedNormal(stddev=self._init_scale),
        )
        if batch_size is None:
            return table
        return jnp.broadcast_to(table[None], (batch_size, *table.shape))


def _check_or_build_spatial_positions(pos, index_dims, batch_size):
    """`pos` [B, N, d] as given (d must match), or the linear grid over `index_dims` flattened."""
    if pos is not None:
        assert pos.shape[-1] == len(index_dims), "positions must have one coordinate per index dim"
        return pos
    grid = build_linear_positions(index_dims)
    grid = jnp.broadcast_to(grid[None], (batch_size, *grid.shape))
    return jnp.reshape(grid, [batch_size, int(np.prod(index_dims)), -1])


class FourierPositionEncoding(AbstractPositionEncoding):
    """Sinusoidal features of the (built or given) coordinates; no parameters."""

    def __init__(self, index_dims, num_bands, concat_pos=True, max_resolution=None, sine_only=False, name=None):
        super().__init__(name=name)
        self._index_dims = index_dims
        self._num_bands = num_bands
        self._concat_pos = concat_pos
        self._sine_only = sine_only
        self._max_resolution = max_resolution or index_dims

    def __call__(self, batch_size, pos=None):
        pos = _check_or_build_spatial_positions(pos, self._index_dims, batch_size)
        features = functools.partial(
            generate_fourier_features, num_bands=self._num_bands, max_resolution=self._max_resolution,
            concat_pos=self._concat_pos, sine_only=self._sine_only,
        )
        return jax.vmap(features)(pos)


class PositionEncodingProjector(AbstractPositionEncoding):
    """A base encoding followed by a Linear to `output_size` channels."""

    def __init__(self, output_size, base_position_encoding, name=None):
        super().__init__(name=name)
        self._output_size = output_size
        self._base_position_encoding = base_position_encoding

    def __call__(self, batch_size, pos=None):
        return hk.Linear(output_size=self._output_size)(self._base_position_encoding(batch_size, pos))


def build_position_encoding(position_encoding_type, index_dims, project_pos_dim=-1,
                            trainable_position_encoding_kwargs=None, fourier_position_encoding_kwargs=None,
                            name=None):
    """'trainable' (a flat table over prod(index_dims)) or 'fourier', optionally projected."""
    if position_encoding_type == "trainable":
        assert trainable_position_encoding_kwargs is not None
        encoding = TrainablePositionEncoding(
            index_dim=int(np.prod(index_dims)), name=name, **trainable_position_encoding_kwargs
        )
    elif position_encoding_type == "fourier":
        assert fourier_position_encoding_kwargs is not None
        encoding = FourierPositionEncoding(index_dims=index_dims, name=name, **fourier_position_encoding_kwargs)
    else:
        raise ValueError(f"Unknown position encoding: {position_encoding_type}.")
    if project_pos_dim > 0:
        encoding = PositionEncodingProjector(output_size=project_pos_dim, base_position_encoding=encoding)
    return encoding
