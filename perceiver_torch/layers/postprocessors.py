"""Output postprocessors (upstream io_processors): decoder outputs [B, M, C] -> task outputs.

Every postprocessor is called as `post(outputs, modality_sizes=...)`. Upstream
creates its linear layers lazily from the input width; here the width is
given as `in_channels`.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from .multimodal import restructure
from .precision import FinalLinear


class IdentityPostprocessor(nn.Module):
    """Returns the decoder outputs unchanged."""

    def forward(self, inputs, modality_sizes=None):
        return inputs


class ProjectionPostprocessor(nn.Module):
    """[B, M, C] -> [B, M, num_outputs] by one linear layer."""

    def __init__(self, in_channels: int, num_outputs: int):
        super().__init__()
        self.linear = FinalLinear(in_channels, num_outputs)

    def forward(self, inputs: torch.Tensor, modality_sizes=None) -> torch.Tensor:
        return self.linear(inputs)


class ClassificationPostprocessor(nn.Module):
    """[B, M, C] -> logits of the first query, [B, num_classes]."""

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        self.linear = FinalLinear(in_channels, num_classes)

    def forward(self, inputs: torch.Tensor, modality_sizes=None) -> torch.Tensor:
        return self.linear(inputs)[:, 0, :]


class AudioPostprocessor(nn.Module):
    """[B, M, C] (one query per patch) -> samples [B, M * samples_per_patch]."""

    def __init__(self, in_channels: int, samples_per_patch: int = 96, postproc_type: str = "patches"):
        super().__init__()
        if postproc_type != "patches":
            raise ValueError(f"Invalid postproc_type {postproc_type!r}: only 'patches' is supported, as upstream.")
        self.samples_per_patch = samples_per_patch
        self.linear = FinalLinear(in_channels, samples_per_patch)

    def forward(self, inputs: torch.Tensor, modality_sizes=None) -> torch.Tensor:
        return self.linear(inputs).reshape(inputs.shape[0], -1)


class MultimodalPostprocessor(nn.Module):
    """Splits decoder outputs by modality (sorted by name, as upstream) and postprocesses each.

    With `input_is_dict=True` the outputs are already a dict of modalities.
    Only modalities that have a postprocessor are returned, as upstream.
    """

    def __init__(self, modalities: Mapping[str, nn.Module], input_is_dict: bool = False):
        super().__init__()
        self.modalities = nn.ModuleDict(modalities)
        self.input_is_dict = input_is_dict

    def forward(self, inputs, modality_sizes: Mapping[str, int] | None = None) -> dict[str, torch.Tensor]:
        if not self.input_is_dict:
            if modality_sizes is None:
                raise ValueError("MultimodalPostprocessor needs modality_sizes to split a flat decoder output.")
            inputs = restructure(modality_sizes, inputs)
        missing = sorted(set(self.modalities) - set(inputs))
        if missing:
            raise ValueError(f"decoder outputs have no modality {missing}; got {sorted(inputs)}.")
        return {name: post(inputs[name], modality_sizes=None) for name, post in self.modalities.items()}
