"""Audio input: raw samples cut into patches, with position features (upstream `AudioPreprocessor`)."""

from __future__ import annotations

import torch
from torch import nn

from .position_encoding import PositionEncoding, build_position_encoding


class AudioPreprocessor(nn.Module):
    """samples [B, N] or [B, N, 1] -> patches [B, N / samples_per_patch, samples_per_patch] + positions.

    Takes upstream's constructor arguments. Position features are built over
    the patch index (one dimension): Fourier features (no parameters), or a
    trainable table, which needs `num_samples` (the clip length) up front,
    as does a projected encoding. With `num_samples` given, inputs of another
    length are rejected. `n_extra_pos_mlp` adds upstream's residual linear
    layers (ReLU between them) on top of the position features.

    Returns `(inputs_with_pos, None, inputs_without_pos)` as every preprocessor.
    """

    def __init__(
        self,
        prep_type: str = "patches",
        samples_per_patch: int = 96,
        position_encoding_type: str = "fourier",
        n_extra_pos_mlp: int = 0,
        concat_or_add_pos: str = "concat",
        num_samples: int | None = None,
        **position_encoding_kwargs,
    ):
        super().__init__()
        if prep_type != "patches":
            raise ValueError(f"Invalid prep_type {prep_type!r}: only 'patches' is supported, as upstream.")
        if concat_or_add_pos not in ("concat", "add"):
            raise ValueError(f"Invalid value {concat_or_add_pos!r} for concat_or_add_pos; expected 'concat' or 'add'.")
        if num_samples is not None and num_samples % samples_per_patch:
            raise ValueError(f"num_samples ({num_samples}) must be a multiple of samples_per_patch "
                             f"({samples_per_patch}).")
        self.samples_per_patch = samples_per_patch
        self.concat_or_add_pos = concat_or_add_pos
        self.num_samples = num_samples
        self._position_encoding_type = position_encoding_type
        self._position_encoding_kwargs = position_encoding_kwargs
        has_params = position_encoding_type != "fourier" or position_encoding_kwargs.get("project_pos_dim", -1) > 0
        if has_params and num_samples is None:
            raise ValueError(f"position_encoding_type={position_encoding_type!r} (or a projected encoding) has "
                             "parameters sized by the input: pass num_samples.")
        # Built once when its size is known; Fourier features otherwise follow each input's length.
        self.position_encoding = self._build_positions(num_samples) if num_samples is not None else None
        pos_channels = self._build_positions(num_samples or samples_per_patch).num_channels
        self.extra_pos_mlp = nn.ModuleList(nn.Linear(pos_channels, pos_channels) for _ in range(n_extra_pos_mlp))
        if concat_or_add_pos == "add" and pos_channels != samples_per_patch:
            raise ValueError(f"concat_or_add_pos='add' needs {pos_channels} position channels to equal "
                             f"samples_per_patch ({samples_per_patch}).")
        self._pos_channels = pos_channels

    def _build_positions(self, num_samples: int) -> PositionEncoding:
        return build_position_encoding(
            self._position_encoding_type, (num_samples // self.samples_per_patch,), **self._position_encoding_kwargs
        )

    @property
    def num_channels(self) -> int:
        if self.concat_or_add_pos == "add":
            return self.samples_per_patch
        return self.samples_per_patch + self._pos_channels

    def forward(self, inputs: torch.Tensor):
        if inputs.ndim not in (2, 3) or (inputs.ndim == 3 and inputs.shape[-1] != 1):
            raise ValueError(f"audio must be [B, N] or [B, N, 1] (one channel); got {tuple(inputs.shape)}.")
        batch_size, num_samples = inputs.shape[:2]
        if num_samples % self.samples_per_patch:
            raise ValueError(f"audio length {num_samples} is not a multiple of samples_per_patch "
                             f"({self.samples_per_patch}).")
        if self.num_samples is not None and num_samples != self.num_samples:
            raise ValueError(f"audio has {num_samples} samples; this preprocessor was built for {self.num_samples}.")
        patches = inputs.reshape(batch_size, -1, self.samples_per_patch)
        encoding = self.position_encoding or self._build_positions(num_samples)
        pos = encoding(batch_size, dtype=patches.dtype, device=patches.device)
        for i, layer in enumerate(self.extra_pos_mlp):
            pos = pos + layer(pos)
            if i < len(self.extra_pos_mlp) - 1:
                pos = torch.relu(pos)
        if self.concat_or_add_pos == "concat":
            with_pos = torch.cat([patches, pos.expand(batch_size, -1, -1)], dim=-1)
        else:
            with_pos = patches + pos
        return with_pos, None, patches
