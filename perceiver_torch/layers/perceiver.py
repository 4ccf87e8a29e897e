"""`Perceiver`: preprocessor -> encoder -> decoder -> postprocessor, as upstream composes them."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .checkpointing import set_grad_checkpointing
from .position_encoding import TrainablePositionEncoding
from .precision import widen_inputs


class Perceiver(nn.Module):
    """Upstream's `Perceiver` composition of parts.

    A preprocessor returns `(inputs, modality_sizes, inputs_without_pos)`; the
    decoder builds its queries from those, and the postprocessor receives the
    decoder output with the modality sizes.
    """

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        input_preprocessor: nn.Module | None = None,
        output_postprocessor: nn.Module | None = None,
    ):
        super().__init__()
        self.input_preprocessor = input_preprocessor
        self.encoder = encoder
        self.decoder = decoder
        self.output_postprocessor = output_postprocessor

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each attention block's activations in backward instead of keeping them (timm's name).

        Trades training memory for one more forward of each block: the encoder's cross-attention, every
        latent self-attention layer and the decoder's cross-attention. Gradients are the same, dropout
        included. It acts only while autograd records; inference, export and compiled inference are unchanged.
        """
        set_grad_checkpointing(self, enable)

    def no_weight_decay(self) -> set[str]:
        """Names of the trainable position tables, for an optimiser to leave undecayed (timm's name).

        Every `TrainablePositionEncoding` table: the latent array, learned input positions and output
        queries, and the multimodal padding and mask vectors. Upstream's ImageNet training calls them all
        `pos_embs` and leaves exactly these undecayed with `decay_pos_embs=False` (it decays them by default).
        Biases and norm parameters, the model's 1-D parameters, are not listed: timm's optimiser factory
        leaves them undecayed by their rank (upstream leaves biases undecayed and decays norm parameters).
        """
        return {name for module_name, module in self.named_modules() if isinstance(module, TrainablePositionEncoding)
                for name, _ in module.named_parameters(prefix=module_name)}

    def encode(self, inputs, input_mask: torch.Tensor | None = None):
        """Preprocess and encode: returns (z, modality_sizes, preprocessed inputs, inputs_without_pos)."""
        modality_sizes = inputs_without_pos = None
        # Inputs narrower than the model (bfloat16 images into a float32 model) are widened to its dtype.
        weight = next((p for p in self.encoder.parameters() if p.is_floating_point()), None)
        inputs = widen_inputs(inputs, None if weight is None else weight.dtype)
        if self.input_preprocessor is not None:
            inputs, modality_sizes, inputs_without_pos = self.input_preprocessor(inputs)
        z = self.encoder(inputs, input_mask)
        return z, modality_sizes, inputs, inputs_without_pos

    def decode(self, z, inputs, modality_sizes=None, inputs_without_pos=None,
               subsampled_output_points=None, query_mask: torch.Tensor | None = None):
        decoder: Any = self.decoder  # duck-typed: any module with decoder_query and output_modality_sizes
        query = decoder.decoder_query(inputs, modality_sizes, inputs_without_pos, subsampled_output_points)
        outputs = self.decoder(query, z, query_mask)
        if self.output_postprocessor is not None:
            # As upstream: the decoder's own output sizes, else the input's.
            output_sizes = decoder.output_modality_sizes(subsampled_output_points)
            outputs = self.output_postprocessor(outputs, modality_sizes=output_sizes or modality_sizes)
        return outputs

    def forward(self, inputs, input_mask: torch.Tensor | None = None, query_mask: torch.Tensor | None = None,
                subsampled_output_points=None):
        z, modality_sizes, inputs, inputs_without_pos = self.encode(inputs, input_mask)
        return self.decode(z, inputs, modality_sizes, inputs_without_pos, subsampled_output_points, query_mask)
