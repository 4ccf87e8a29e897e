"""Position encodings: trainable tables and Fourier features, as upstream.

Fourier features are computed in `forward` on the input's device (no host
round-trip, no stale cached buffers across dtypes/devices), from float32 (or
wider) positions whatever the model's dtype, and only then cast to it: see
`precision.py`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TypeAlias, cast

import torch
from torch import nn

from .precision import position_dtype


def linspace(start: float, stop: float, num: int, *, dtype=None, device=None) -> torch.Tensor:
    """`jnp.linspace` with endpoint=True: start*(1-s) + stop*s, s = i/(num-1).

    torch.linspace uses a different formula; this one keeps the endpoints
    exact and stays within one ulp of JAX's result.
    """
    if num == 1:
        return torch.full((1,), start, dtype=dtype, device=device)
    step = torch.arange(num - 1, dtype=dtype, device=device) / (num - 1)
    body = start * (1 - step) + stop * step
    return torch.cat([body, torch.full((1,), stop, dtype=dtype, device=device)])


def build_linear_positions(index_dims: Sequence[int], *, dtype=None, device=None) -> torch.Tensor:
    """Grid of coordinates in [-1, 1]: shape [*index_dims, len(index_dims)], 'ij' order."""
    ranges = [linspace(-1.0, 1.0, n, dtype=dtype, device=device) for n in index_dims]
    return torch.stack(torch.meshgrid(*ranges, indexing="ij"), dim=-1)


def fourier_features(
    pos: torch.Tensor,
    num_bands: int,
    max_resolution: Sequence[int],
    concat_pos: bool = True,
    sine_only: bool = False,
) -> torch.Tensor:
    """pos [..., n, d] -> [..., n, C]; channel order [pos, sin(all d x K), cos(all d x K)]."""
    freq_bands = torch.stack(
        [linspace(1.0, res / 2, num_bands, dtype=pos.dtype, device=pos.device) for res in max_resolution]
    )  # [d, K]
    per_pos = (pos[..., :, None] * freq_bands).flatten(-2)  # [..., n, d*K]
    if sine_only:
        features = torch.sin(math.pi * per_pos)
    else:
        features = torch.cat([torch.sin(math.pi * per_pos), torch.cos(math.pi * per_pos)], dim=-1)
    if concat_pos:
        features = torch.cat([pos, features], dim=-1)
    return features


def grid_fourier_features(
    index_dims: Sequence[int],
    num_bands: int,
    max_resolution: Sequence[int],
    concat_pos: bool = True,
    sine_only: bool = False,
    *,
    dtype=None,
    device=None,
) -> torch.Tensor:
    """`fourier_features(build_linear_positions(index_dims).reshape(-1, d), ...)`: [N, C], computed per axis.

    On a grid each feature depends on one coordinate only, so the sines and cosines are taken of the
    [n_axis, K] angles of each axis (the same products, the same values) and broadcast into the output,
    written once: ImageNet's 224x224 grid needs 2 x 224 x 64 of them instead of 50,176 x 128 twice, and no
    intermediate [N, 2dK] tensors or concatenations.
    """
    d = len(index_dims)
    coords, sines, cosines = [], [], []
    for axis, (n, res) in enumerate(zip(index_dims, max_resolution, strict=True)):
        along = [1] * d + [-1]  # broadcast along the other axes
        along[axis] = n
        axis_coords = linspace(-1.0, 1.0, n, dtype=dtype, device=device)
        angles = math.pi * (axis_coords[:, None] * linspace(1.0, res / 2, num_bands, dtype=dtype, device=device))
        coords.append(axis_coords.view(along))
        sines.append(torch.sin(angles).view(along))
        cosines.append(torch.cos(angles).view(along))
    # Channel order as fourier_features: [pos (d), sin (d x K), cos (d x K)]. One concatenation of the
    # broadcast pieces writes the output once, row by row.
    pieces = (coords if concat_pos else []) + sines + ([] if sine_only else cosines)
    features = torch.cat([p.expand(*index_dims, p.shape[-1]) for p in pieces], dim=-1)
    return features.view(-1, features.shape[-1])


class TrainablePositionEncoding(nn.Module):
    """A learned [index_dim, num_channels] table, broadcast over the batch."""

    def __init__(self, index_dim: int, num_channels: int = 128, init_scale: float = 0.02):
        super().__init__()
        self.embeddings = nn.Parameter(torch.empty(index_dim, num_channels))
        self.init_scale = init_scale
        self.reset_parameters()

    @property
    def num_channels(self) -> int:
        return self.embeddings.shape[1]

    def reset_parameters(self) -> None:
        # Haiku's TruncatedNormal(stddev) truncates at two standard deviations.
        nn.init.trunc_normal_(self.embeddings, std=self.init_scale, a=-2 * self.init_scale, b=2 * self.init_scale)

    def forward(self, batch_size: int, pos: torch.Tensor | None = None, **_) -> torch.Tensor:
        # pos, dtype and device are accepted for a uniform interface; the table is its own.
        return self.embeddings.unsqueeze(0).expand(batch_size, -1, -1)


class FourierPositionEncoding(nn.Module):
    """Fourier features of a linear grid over `index_dims` (or of given positions)."""

    def __init__(
        self,
        index_dims: Sequence[int],
        num_bands: int,
        concat_pos: bool = True,
        max_resolution: Sequence[int] | None = None,
        sine_only: bool = False,
    ):
        super().__init__()
        self.index_dims = tuple(int(d) for d in index_dims)
        self.num_bands = num_bands
        self.concat_pos = concat_pos
        self.sine_only = sine_only
        self.max_resolution = tuple(max_resolution or self.index_dims)
        if len(self.max_resolution) != len(self.index_dims):
            raise ValueError(
                f"max_resolution {self.max_resolution} must have one entry per index dim {self.index_dims}."
            )

    @property
    def num_channels(self) -> int:
        d = len(self.index_dims)
        return d * self.num_bands * (1 if self.sine_only else 2) + (d if self.concat_pos else 0)

    def forward(
        self,
        batch_size: int,
        pos: torch.Tensor | None = None,
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | None = None,
    ) -> torch.Tensor:
        """Features [batch_size, N, num_channels] in `dtype` (default: `pos`'s, else the default dtype)."""
        if pos is not None and pos.shape[-1] != len(self.index_dims):
            raise ValueError(f"positions have {pos.shape[-1]} coordinates; expected {len(self.index_dims)}.")
        if dtype is None:
            dtype = pos.dtype if pos is not None else torch.get_default_dtype()
        compute = position_dtype(dtype)
        if pos is None:  # the same for every example: computed once and broadcast over the batch
            features = grid_fourier_features(self.index_dims, self.num_bands, self.max_resolution, self.concat_pos,
                                             self.sine_only, dtype=compute, device=device)
            return features.to(dtype).expand(batch_size, -1, -1)
        features = fourier_features(pos.to(compute), self.num_bands, self.max_resolution, self.concat_pos,
                                    self.sine_only)
        return features.to(dtype)


class PositionEncodingProjector(nn.Module):
    """A base position encoding followed by a linear projection."""

    def __init__(self, base: nn.Module, output_size: int):
        super().__init__()
        self.base = base
        self.projection = nn.Linear(cast(int, base.num_channels), output_size)  # any encoding's num_channels

    @property
    def num_channels(self) -> int:
        return self.projection.out_features

    def forward(self, batch_size: int, pos: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        return self.projection(self.base(batch_size, pos, **kwargs))


PositionEncoding: TypeAlias = TrainablePositionEncoding | FourierPositionEncoding | PositionEncodingProjector


def build_position_encoding(
    position_encoding_type: str,
    index_dims: Sequence[int],
    project_pos_dim: int = -1,
    trainable_position_encoding_kwargs: dict | None = None,
    fourier_position_encoding_kwargs: dict | None = None,
) -> PositionEncoding:
    """The upstream factory: 'trainable' or 'fourier', optionally projected."""
    encoding: PositionEncoding
    if position_encoding_type == "trainable":
        if trainable_position_encoding_kwargs is None:
            raise ValueError("position_encoding_type='trainable' needs trainable_position_encoding_kwargs.")
        encoding = TrainablePositionEncoding(math.prod(index_dims), **trainable_position_encoding_kwargs)
    elif position_encoding_type == "fourier":
        if fourier_position_encoding_kwargs is None:
            raise ValueError("position_encoding_type='fourier' needs fourier_position_encoding_kwargs.")
        encoding = FourierPositionEncoding(index_dims, **fourier_position_encoding_kwargs)
    else:
        raise ValueError(
            f"Unknown position encoding {position_encoding_type!r}; expected 'trainable' or 'fourier'."
        )
    if project_pos_dim > 0:
        encoding = PositionEncodingProjector(encoding, project_pos_dim)
    return encoding

