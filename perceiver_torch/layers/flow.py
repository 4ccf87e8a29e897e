"""Optical-flow parts: upstream's 3x3 patch extraction and its `FlowDecoder`."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .decoders import BasicDecoder

PATCH = 3  # upstream extracts a 3x3 neighbourhood around every pixel


def patches_for_flow(frames: torch.Tensor) -> torch.Tensor:
    """Channels-first frames [B, T, C, H, W] -> upstream's patches [B, T, H, W, 9 * C] (channels last).

    As upstream: each frame is zero-padded by one pixel on every side and the
    3x3 neighbourhood of every pixel is gathered, ordered (patch row, patch
    column, channel), the layout of `tf.image.extract_patches`.
    """
    if frames.ndim != 5:
        raise ValueError(f"frames must be [B, T, C, H, W]; got shape {tuple(frames.shape)}.")
    height, width = frames.shape[-2:]
    padded = F.pad(frames, (1, 1, 1, 1))
    shifted = [padded[..., dy:dy + height, dx:dx + width] for dy in range(PATCH) for dx in range(PATCH)]
    patches = torch.stack(shifted, dim=2)  # [B, T, 9, C, H, W]
    return patches.flatten(2, 3).permute(0, 1, 3, 4, 2)


class FlowDecoder(nn.Module):
    """Upstream `FlowDecoder`: the preprocessed inputs are the queries; outputs / rescale_factor as an image.

    With `temporal_downsample=2` the preprocessor merges both frames into one
    feature per pixel of the first frame's grid (both frames' patches plus
    that pixel's position features), so the decoder queries the latents once
    per output pixel. Upstream also builds Fourier output queries that it
    never uses (they have no parameters); here the queries' width is given
    directly instead. The final projection is zero-initialised, as upstream.
    """

    def __init__(
        self,
        output_image_shape: Sequence[int],
        query_channels: int,
        num_z_channels: int,
        output_num_channels: int = 2,
        rescale_factor: float = 100.0,
        use_query_residual: bool = False,
        **decoder_kwargs,
    ):
        super().__init__()
        self.output_image_shape = tuple(int(d) for d in output_image_shape)
        self.rescale_factor = float(rescale_factor)
        self.decoder = BasicDecoder(
            output_num_channels, position_encoding_type="none", query_channels=query_channels,
            num_z_channels=num_z_channels, use_query_residual=use_query_residual, **decoder_kwargs,
        )
        # The output layer is None only for final_project=False in decoder_kwargs, which fails here as it always has.
        nn.init.zeros_(self.decoder.output.weight)  # type: ignore[union-attr]
        nn.init.zeros_(self.decoder.output.bias)  # type: ignore[union-attr]

    def decoder_query(self, inputs, modality_sizes=None, inputs_without_pos=None, subsampled_points=None):
        if subsampled_points is not None:
            raise ValueError("FlowDecoder queries every pixel; subsampled output points are not supported.")
        return inputs

    def output_modality_sizes(self, subsampled_points=None) -> dict | None:
        return None

    def forward(self, query: torch.Tensor, z: torch.Tensor, query_mask: torch.Tensor | None = None) -> torch.Tensor:
        """query [B, H*W, C_q], z [B, Z, C_z] -> [B, H, W, output_num_channels] (before flow_scale_factor)."""
        preds = self.decoder(query, z, query_mask) / self.rescale_factor
        return preds.reshape(preds.shape[0], *self.output_image_shape, preds.shape[-1])
