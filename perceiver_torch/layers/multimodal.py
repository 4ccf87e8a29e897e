"""Several modalities through one Perceiver: upstream's multimodal pre-processing and decoding.

Modalities are always visited in sorted name order (upstream's "predictable
ordering"): the flat input and query arrays are the per-modality arrays
concatenated in that order, and `restructure` splits them back.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .decoders import BasicDecoder
from .position_encoding import TrainablePositionEncoding


def restructure(modality_sizes: Mapping[str, int], inputs: torch.Tensor) -> dict[str, torch.Tensor]:
    """Split [B, N, ...] along N into {modality: [B, n_modality, ...]}, modalities in sorted order."""
    total = sum(modality_sizes.values())
    if inputs.shape[1] != total:
        raise ValueError(f"cannot split {inputs.shape[1]} positions into modalities of sizes "
                         f"{dict(sorted(modality_sizes.items()))} (total {total}).")
    outputs, start = {}, 0
    for name in sorted(modality_sizes):
        outputs[name] = inputs[:, start:start + modality_sizes[name]]
        start += modality_sizes[name]
    return outputs


class OneHotPreprocessor(nn.Module):
    """[B, C] (e.g. a one-hot label) -> one input position [B, 1, C]; no position features."""

    def __init__(self, num_channels: int):
        super().__init__()
        self.num_channels = num_channels

    def forward(self, inputs: torch.Tensor):
        if inputs.ndim != 2 or inputs.shape[1] != self.num_channels:
            raise ValueError(f"expected [B, {self.num_channels}] inputs; got {tuple(inputs.shape)}.")
        inputs = inputs[:, None, :]
        return inputs, None, inputs


class IdentityPreprocessor(nn.Module):
    """Already-featurised inputs [B, N, C] (C = num_channels), passed through unchanged."""

    def __init__(self, num_channels: int):
        super().__init__()
        self.num_channels = num_channels

    def forward(self, inputs: torch.Tensor):
        if inputs.ndim != 3 or inputs.shape[-1] != self.num_channels:
            raise ValueError(f"expected [B, N, {self.num_channels}] inputs; got {tuple(inputs.shape)}.")
        return inputs, None, inputs


def _padding_table(width: int) -> TrainablePositionEncoding | None:
    # Upstream would create an empty [1, 0] table for a modality that needs no padding; none here.
    return TrainablePositionEncoding(1, width, init_scale=0.02) if width > 0 else None


def _pad(x: torch.Tensor, table: nn.Module | None) -> torch.Tensor:
    if table is None:
        return x
    padding = table(x.shape[0]).to(x.dtype)  # [B, 1, P]
    return torch.cat([x, padding.expand(x.shape[0], x.shape[1], -1)], dim=2)


class MultimodalPreprocessor(nn.Module):
    """Upstream `MultimodalPreprocessor`: preprocess each modality, pad, optionally mask, concatenate.

    Each modality's preprocessor must expose `num_channels`. Every modality is
    padded to `max(num_channels) + min_padding_size` channels with its own
    trainable vector (`padding[<modality>]`, upstream `<modality>_padding`).

    Masking (`mask_probs`, upstream's modality masking): each position of a
    modality is replaced by that modality's trainable mask token with its
    probability. Probability 0 never masks and 1 always masks, both
    deterministically. Probabilities strictly between are drawn per position
    with `torch.rand` (from `self.generator` when set, so seed that for
    reproducible runs) in training *and* evaluation, because upstream masks
    regardless of `is_training`; pass `mask_probs` to `forward` to override
    them for one call (e.g. all zeros for a deterministic evaluation).

    Returns `(inputs [B, N, C], modality_sizes, inputs_without_pos dict)`.
    """

    def __init__(
        self,
        modalities: Mapping[str, nn.Module],
        mask_probs: Mapping[str, float] | None = None,
        min_padding_size: int = 2,
    ):
        super().__init__()
        if not modalities:
            raise ValueError("MultimodalPreprocessor needs at least one modality.")
        self.modalities = nn.ModuleDict({name: modalities[name] for name in sorted(modalities)})
        widths = {name: _num_channels(pre, name) for name, pre in self.modalities.items()}
        self.num_channels = max(widths.values()) + min_padding_size
        self.min_padding_size = min_padding_size
        self.padding = nn.ModuleDict(
            {name: table for name, w in widths.items() if (table := _padding_table(self.num_channels - w))}
        )
        self.mask_probs = None
        self.mask_tokens = None
        if mask_probs is not None:
            self.mask_probs = _check_mask_probs(mask_probs, self.modalities)
            self.mask_tokens = nn.ModuleDict(
                {name: TrainablePositionEncoding(1, self.num_channels, init_scale=0.02) for name in self.modalities}
            )
        self.generator: torch.Generator | None = None

    def _mask(self, name: str, x: torch.Tensor, prob: float) -> torch.Tensor:
        if prob <= 0.0:
            return x
        # forward masks only with mask_probs, given which mask_tokens were built (it refuses them otherwise)
        token = self.mask_tokens[name](x.shape[0]).to(x.dtype)  # type: ignore[index]  # [B, 1, C]
        if prob >= 1.0:
            return token.expand_as(x)
        draw = torch.rand(x.shape[:2], generator=self.generator, device=x.device if self.generator is None
                          else self.generator.device)
        return torch.where((draw < prob).to(x.device)[..., None], token, x)

    def forward(self, inputs: Mapping[str, torch.Tensor], mask_probs: Mapping[str, float] | None = None):
        if not isinstance(inputs, Mapping):
            raise TypeError(f"MultimodalPreprocessor takes a dict of modalities {list(self.modalities)}.")
        missing = sorted(set(self.modalities) - set(inputs))
        extra = sorted(set(inputs) - set(self.modalities))
        if missing or extra:
            raise ValueError(f"inputs must have exactly the modalities {list(self.modalities)}; "
                             f"missing {missing}, unexpected {extra}.")
        if mask_probs is not None:
            if self.mask_tokens is None:
                raise ValueError("this preprocessor was built without mask_probs: it has no mask tokens.")
            mask_probs = _check_mask_probs(mask_probs, self.modalities)
        else:
            mask_probs = self.mask_probs
        padded, sizes, without_pos = [], {}, {}
        for name, preprocessor in self.modalities.items():
            x, _, without_pos[name] = preprocessor(inputs[name])
            x = _pad(x, self.padding[name] if name in self.padding else None)
            if mask_probs is not None:
                x = self._mask(name, x, mask_probs[name])
            padded.append(x)
            sizes[name] = x.shape[1]
        return torch.cat(padded, dim=1), sizes, without_pos


def _num_channels(module: nn.Module, name: str) -> int:
    channels = getattr(module, "num_channels", None)
    if channels is None:
        channels = getattr(module, "query_channels", None)
    if not isinstance(channels, int):
        raise TypeError(f"{name!r}: {type(module).__name__} must expose an integer `num_channels` "
                        "(or `query_channels`) so the common width can be fixed at construction.")
    return channels


def _check_mask_probs(mask_probs: Mapping[str, float], modalities) -> dict[str, float]:
    missing = sorted(set(modalities) - set(mask_probs))
    if missing:
        raise ValueError(f"mask_probs has no probability for modalities {missing}.")
    for name, prob in mask_probs.items():
        # Written so that NaN fails; a bool (True would mask every position) or a string is no probability.
        if not isinstance(prob, numbers.Real) or isinstance(prob, bool) or not 0.0 <= prob <= 1.0:
            raise ValueError(f"mask probability for {name!r} must be a number in [0, 1]; got {prob!r}.")
    return {name: float(mask_probs[name]) for name in modalities}


class BasicVideoAutoencodingDecoder(BasicDecoder):
    """Upstream `BasicVideoAutoencodingDecoder`: a `BasicDecoder` over a video's (T, H, W) points.

    `output_shape` is (T, H, W), or upstream's (B, T, H, W) whose batch entry
    is ignored. Called on all points, the output is reshaped to [B, T, H, W, C].
    """

    def __init__(self, output_shape: Sequence[int], position_encoding_type: str, **decoder_kwargs):
        output_shape = tuple(int(s) for s in output_shape)
        if len(output_shape) == 4:
            output_shape = output_shape[1:]
        if len(output_shape) != 3:
            raise ValueError(f"Expected output_shape (T, H, W) or (B, T, H, W); got {output_shape}.")
        super().__init__(output_index_dims=output_shape, position_encoding_type=position_encoding_type,
                         **decoder_kwargs)

    def forward(self, query, z, query_mask=None):
        output = super().forward(query, z, query_mask)
        if output.shape[1] != math.prod(self.output_index_dims):
            return output  # a subsampled chunk stays flat
        return output.reshape(output.shape[0], *self.output_index_dims, output.shape[-1])


def num_queries(generator: nn.Module, subsampled_points: torch.Tensor | None) -> int:
    """How many queries `generator.decoder_query` returns for `subsampled_points`.

    As upstream, a trainable query table ignores subsampling and is used whole.
    """
    query_generator: Any = generator  # duck-typed: num_queries, or output_index_dims (a BasicDecoder's)
    if hasattr(query_generator, "num_queries"):
        return query_generator.num_queries(subsampled_points)
    queries = getattr(generator, "output_queries", None)
    full = math.prod(query_generator.output_index_dims)
    trainable = isinstance(getattr(queries, "base", queries), TrainablePositionEncoding)
    if subsampled_points is None or trainable:
        return full
    return int(subsampled_points.shape[0])


class MultimodalDecoder(nn.Module):
    """Upstream `MultimodalDecoder`: per-modality query generators, one shared cross-attention.

    `modalities` maps each output modality to a module with
    `decoder_query(inputs, modality_sizes, inputs_without_pos, subsampled_points)`
    and an integer `query_channels` (e.g. a `BasicDecoder(..., queries_only=True)`);
    each modality's queries are padded with its own trainable vector
    (`padding[<modality>]`, upstream `<modality>_padding`) to
    `max(query_channels) + min_padding_size` channels and concatenated in
    sorted order. `decoder_kwargs` go to the shared `BasicDecoder`
    (`num_z_channels` is the latent width).
    """

    def __init__(
        self,
        modalities: Mapping[str, nn.Module],
        output_num_channels: int,
        min_padding_size: int = 2,
        num_outputs: int | None = None,
        **decoder_kwargs,
    ):
        super().__init__()
        if not modalities:
            raise ValueError("MultimodalDecoder needs at least one output modality.")
        self.modalities = nn.ModuleDict({name: modalities[name] for name in sorted(modalities)})
        for name, generator in self.modalities.items():
            if getattr(generator, "concat_preprocessed_input", False):
                raise NotImplementedError(f"{name!r}: concat_preprocessed_input in a multimodal query "
                                          "generator is not supported (its width is not known up front).")
        widths = {name: _num_channels(gen, name) for name, gen in self.modalities.items()}
        self.query_channels = max(widths.values()) + min_padding_size
        self.padding = nn.ModuleDict(
            {name: table for name, w in widths.items() if (table := _padding_table(self.query_channels - w))}
        )
        self.num_outputs = num_outputs  # upstream's argument; the queries decide the count
        self.decoder = BasicDecoder(output_num_channels, position_encoding_type="none",
                                    query_channels=self.query_channels, **decoder_kwargs)

    @property
    def num_output_channels(self) -> int:
        return self.decoder.num_output_channels

    def decoder_query(self, inputs, modality_sizes=None, inputs_without_pos=None, subsampled_points=None):
        per_modality = restructure(modality_sizes, inputs) if modality_sizes else {}
        subsampled_points = subsampled_points or {}
        unknown = sorted(set(subsampled_points) - set(self.modalities))
        if unknown:
            raise ValueError(f"subsampled points for unknown output modalities {unknown}; "
                             f"expected some of {list(self.modalities)}.")
        queries = []
        for name, generator in self.modalities.items():
            without_pos = inputs_without_pos.get(name) if isinstance(inputs_without_pos, Mapping) else None
            query = generator.decoder_query(per_modality.get(name, inputs), None, without_pos,
                                            subsampled_points.get(name))
            query = query.reshape(query.shape[0], -1, query.shape[-1])
            queries.append(_pad(query, self.padding[name] if name in self.padding else None))
        return torch.cat(queries, dim=1)

    def output_modality_sizes(self, subsampled_points=None) -> dict[str, int]:
        subsampled_points = subsampled_points or {}
        return {name: num_queries(gen, subsampled_points.get(name)) for name, gen in self.modalities.items()}

    def forward(self, query: torch.Tensor, z: torch.Tensor, query_mask: torch.Tensor | None = None):
        # Upstream ignores query_mask here; it is passed on for custom models (None reproduces upstream).
        return self.decoder(query, z, query_mask)


class QueryGenerator(BasicDecoder):
    """Output queries for one modality of a `MultimodalDecoder` / `PerceiverIO`.

    A `BasicDecoder` with only its query side: `position_encoding_type`
    'trainable' (a learned table of prod(output_index_dims) queries, e.g.
    `trainable_position_encoding_kwargs=dict(num_channels=64)`) or 'fourier'
    (features of the output grid, which `subsampled_points` can pick from).
    """

    def __init__(self, position_encoding_type: str = "trainable", output_index_dims=(1,),
                 **position_encoding_kwargs):
        super().__init__(output_num_channels=0, position_encoding_type=position_encoding_type,
                         output_index_dims=output_index_dims, queries_only=True, **position_encoding_kwargs)
