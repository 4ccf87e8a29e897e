"""Decoders: cross-attention from output queries to the latents."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .blocks import CrossAttention
from .position_encoding import build_position_encoding
from .precision import FinalLinear, final_linear, position_dtype


class BasicDecoder(nn.Module):
    """Upstream `BasicDecoder`: output queries -> cross-attend to z -> optional projection.

    Output queries come from a position encoding over `output_index_dims`
    (`position_encoding_type` 'trainable' or 'fourier'), or from the caller
    ('none', with `query_channels` giving their width).

    `queries_only=True` builds only the query side (no cross-attention, no
    projection): upstream creates those layers lazily, so a decoder that is
    only asked for `decoder_query` (a modality of a `MultimodalDecoder`) has
    no such parameters.
    """

    def __init__(
        self,
        output_num_channels: int,
        position_encoding_type: str = "trainable",
        output_index_dims: Sequence[int] | int | None = None,
        num_z_channels: int = 1024,
        qk_channels: int | None = None,
        v_channels: int | None = None,
        use_query_residual: bool = False,
        num_heads: int = 1,
        final_project: bool = True,
        query_channels: int | None = None,
        concat_preprocessed_input: bool = False,
        queries_only: bool = False,
        **position_encoding_kwargs,
    ):
        super().__init__()
        if isinstance(output_index_dims, int):
            output_index_dims = (output_index_dims,)
        self.output_index_dims = tuple(output_index_dims) if output_index_dims is not None else None
        self.concat_preprocessed_input = concat_preprocessed_input
        self.output_queries = None
        if position_encoding_type != "none":
            if self.output_index_dims is None:
                raise ValueError("output_index_dims is required unless position_encoding_type='none'.")
            self.output_queries = build_position_encoding(
                position_encoding_type, self.output_index_dims, **position_encoding_kwargs
            )
            if query_channels is None:
                query_channels = self.output_queries.num_channels
        if query_channels is None:
            raise ValueError("query_channels is required when the decoder builds no output queries.")
        self.query_channels = query_channels
        self.queries_only = queries_only
        if queries_only:
            self.cross_attend = self.output = None
            return
        self.cross_attend = CrossAttention(
            query_channels, num_z_channels, num_heads=num_heads, widening_factor=1, shape_for_attn="kv",
            use_query_residual=use_query_residual, qk_channels=qk_channels, v_channels=v_channels,
        )
        # Haiku creates the final layer lazily: it has no parameters when unused.
        self.output = FinalLinear(query_channels, output_num_channels) if final_project else None

    @property
    def num_output_channels(self) -> int:
        return self.output.out_features if self.output is not None else self.query_channels

    def decoder_query(
        self,
        inputs: torch.Tensor,
        modality_sizes: dict | None = None,
        inputs_without_pos: torch.Tensor | None = None,
        subsampled_points: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Queries [B, M, C] for preprocessed `inputs` (which give batch, dtype, device).

        As upstream, `subsampled_points` (flat indices) become positions in
        [-1, 1) for Fourier queries; a trainable table ignores them and is
        returned whole.
        """
        batch_size, like = inputs.shape[0], inputs
        if self.output_queries is None:
            raise ValueError("this decoder has position_encoding_type='none': pass queries explicitly.")
        kwargs = dict(dtype=like.dtype, device=like.device)
        if subsampled_points is None:
            queries = self.output_queries(batch_size, **kwargs)
        else:
            # Positions in float32 (or wider) even for a reduced-precision model: see precision.py.
            pos_dtype = position_dtype(like.dtype)
            assert self.output_index_dims is not None  # __init__ builds output_queries only with them
            pos = unravel_index(subsampled_points.to(like.device), self.output_index_dims)  # indices may be on the host
            dims = torch.tensor(self.output_index_dims, dtype=pos_dtype, device=like.device)
            pos = -1 + 2 * pos.to(pos_dtype) / dims
            queries = self.output_queries(batch_size, pos.expand(batch_size, -1, -1), **kwargs)
        if self.concat_preprocessed_input:
            if inputs_without_pos is None:
                raise ValueError("inputs_without_pos is required when concat_preprocessed_input is True.")
            queries = torch.cat([inputs_without_pos, queries], dim=-1)
        return queries

    def output_modality_sizes(self, subsampled_points=None) -> dict | None:
        """Per-modality output sizes for a postprocessor; None for a single modality."""
        return None

    def forward(self, query: torch.Tensor, z: torch.Tensor, query_mask: torch.Tensor | None = None) -> torch.Tensor:
        output = self.attend(query, z, query_mask)
        return output if self.output is None else self.output(output)

    def attend(self, query: torch.Tensor, z: torch.Tensor, query_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The queries [B, M, C] after they cross-attend to `z`: `forward` before the final projection."""
        if self.cross_attend is None:
            raise RuntimeError("this decoder was built with queries_only=True: it only provides decoder_query.")
        # A query mask [B, M, 1] (upstream's all-ones key mask): masked queries' outputs are zeroed, and
        # SDPA itself runs unmasked.
        if query_mask is not None and tuple(query_mask.shape) != tuple(query.shape[:2]):
            raise ValueError(f"query_mask must be [B, M] = {list(query.shape[:2])}, one flag per output query; "
                             f"got {list(query_mask.shape)}.")
        attention_mask = None if query_mask is None else query_mask.bool()[:, :, None]
        return self.cross_attend(query, z, attention_mask)


def unravel_index(indices: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Flat indices [M] -> coordinates [M, len(shape)] (C order), on device."""
    coords = []
    for size in reversed(shape):
        coords.append(indices % size)
        indices = torch.div(indices, size, rounding_mode="floor")
    return torch.stack(coords[::-1], dim=-1)


class EmbeddingDecoder(nn.Module):
    """Logits from decoder outputs through the (tied) input embedding, plus a bias."""

    def __init__(self, vocab_size: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    def forward(self, embeddings: torch.Tensor, embedding_matrix: torch.Tensor) -> torch.Tensor:
        return final_linear(embeddings, embedding_matrix, self.bias)


class ClassificationDecoder(BasicDecoder):
    """Upstream `ClassificationDecoder`: a `BasicDecoder` with one output query, logits [B, num_classes].

    As upstream, there is a single query (a trainable [1, C] table by
    default), not one per class; its output is projected to the classes.
    """

    def __init__(self, num_classes: int, **decoder_kwargs):
        if num_classes == 0:  # no classifier (timm's num_classes=0): the query's embedding is the output
            decoder_kwargs = {**decoder_kwargs, "final_project": False}
        super().__init__(output_num_channels=num_classes, output_index_dims=(1,), **decoder_kwargs)
        self.num_classes = num_classes

    def forward(self, query: torch.Tensor, z: torch.Tensor, query_mask: torch.Tensor | None = None) -> torch.Tensor:
        return super().forward(query, z, query_mask)[:, 0]
