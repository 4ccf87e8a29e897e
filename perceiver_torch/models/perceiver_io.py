"""`PerceiverIO`: the general-purpose model to compose for custom tasks.

It wires upstream's parts together: per-modality preprocessors padded to a
common width (`MultimodalPreprocessor`), the `PerceiverEncoder`, per-modality
output query generators sharing one cross-attention (`MultimodalDecoder`),
and per-modality postprocessors (`MultimodalPostprocessor`). The released
multimodal autoencoder is an instance of it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn

from ..integers import is_int
from ..layers.decoders import BasicDecoder
from ..layers.encoder import PerceiverEncoder
from ..layers.multimodal import IdentityPreprocessor, MultimodalDecoder, MultimodalPreprocessor
from ..layers.perceiver import Perceiver
from ..layers.postprocessors import IdentityPostprocessor, MultimodalPostprocessor
from .input_checks import check_binary, check_count, check_indices, describe

DEFAULT = "default"  # the modality name used when a single module/tensor is given


def _check_mask(where: str, name: str, mask, batch: int) -> None:
    """A [B, L] mask of 0/1 flags (bool, integer or float); values read only where that is free (input_checks)."""
    expected = f"{name} must be a tensor [B={batch}, L] of 0/1 flags (1 = valid)"
    if not isinstance(mask, torch.Tensor) or mask.is_complex():
        raise TypeError(f"{where}: {expected}; got {describe(mask)}.")
    if mask.ndim != 2 or mask.shape[0] != batch:
        raise ValueError(f"{where}: {expected}; got {describe(mask)}.")
    check_binary(where, expected, mask, "1 = valid, 0 = masked, not a weighting")


def _as_dict(value, what: str) -> tuple[dict, bool]:
    """(dict of modalities, whether a single un-named one was given)."""
    if value is None:
        return {}, False
    if isinstance(value, Mapping):
        return dict(value), False
    if isinstance(value, (nn.Module, int, float)):
        return {DEFAULT: value}, True
    raise TypeError(f"{what} must be a module (or number) or a dict of them per modality; got {type(value).__name__}.")


class PerceiverIO(Perceiver):
    """A Perceiver IO built from per-modality parts.

    Args (the constructor of the original PyTorch port):
        num_blocks: times the self-attention block is applied (shared weights).
        num_self_attends_per_block: self-attention layers in the block.
        num_latents, num_latent_channels: the latent array's size.
        final_project: whether the decoder ends with a linear layer.
        final_project_out_channels: its width (default: num_latent_channels).
        perceiver_encoder_kwargs: further `PerceiverEncoder` arguments (heads, widening, dropout, ...).
        perceiver_decoder_kwargs: further arguments of the shared decoder `BasicDecoder`
            (num_heads, qk_channels, v_channels, use_query_residual).
        input_preprocessors: a module, or a dict of modules per input modality; each
            returns `(inputs [B, N, C], None, inputs_without_pos)` and exposes `num_channels`.
        output_postprocessors: a module, or a dict per output modality (others are returned as is).
        output_queries: a query generator, or a dict per output modality: any module with
            `decoder_query(inputs, modality_sizes, inputs_without_pos, subsampled_points)`
            and `query_channels`, e.g. `BasicDecoder(..., queries_only=True)`.
        output_query_padding_channels: trainable channels added to every modality's queries
            beyond the widest one's.
        input_padding_channels: trainable channels added to every input modality beyond the widest one's.
        input_channels: width of an input modality that has no preprocessor (an int for a
            single input, or a dict per modality); such inputs are passed as [B, N, C].
        input_mask_probs: per input modality, the probability of replacing each input
            position by a trainable mask token (see `MultimodalPreprocessor`).

    `forward(inputs)` takes a tensor when a single input modality was given as a
    module (or int), else a dict; it returns a tensor when `output_queries` was a
    single module, else a dict of outputs.
    """

    # The parts' own types (nn.Module types a submodule attribute as Tensor | Module).
    input_preprocessor: MultimodalPreprocessor
    encoder: PerceiverEncoder
    decoder: MultimodalDecoder
    output_postprocessor: MultimodalPostprocessor

    def __init__(
        self,
        num_blocks: int = 8,
        num_self_attends_per_block: int = 6,
        num_latents: int = 512,
        num_latent_channels: int = 1024,
        final_project: bool = True,
        final_project_out_channels: int | None = None,
        perceiver_encoder_kwargs: dict | None = None,
        perceiver_decoder_kwargs: dict | None = None,
        input_preprocessors: nn.Module | Mapping[str, nn.Module] | None = None,
        output_postprocessors: nn.Module | Mapping[str, nn.Module] | None = None,
        output_queries: nn.Module | Mapping[str, nn.Module] | None = None,
        output_query_padding_channels: int = 0,
        input_padding_channels: int = 0,
        input_channels: int | Mapping[str, int] | None = None,
        input_mask_probs: float | Mapping[str, float] | None = None,
    ):
        where = type(self).__name__
        for name, value in (("num_blocks", num_blocks), ("num_self_attends_per_block", num_self_attends_per_block),
                            ("num_latents", num_latents), ("num_latent_channels", num_latent_channels)):
            check_count(where, name, value)
        if final_project_out_channels is not None:  # 0 fell back to num_latent_channels
            check_count(where, "final_project_out_channels (or None)", final_project_out_channels)
        for name, value in (("output_query_padding_channels", output_query_padding_channels),
                            ("input_padding_channels", input_padding_channels)):
            if not is_int(value) or value < 0:
                raise ValueError(f"{where}: {name} must be an integer >= 0; got {value!r}.")
        if not isinstance(final_project, bool):  # "no" would be true
            raise TypeError(f"{where}: final_project must be True or False; got {final_project!r}.")
        preprocessors, single_pre = _as_dict(input_preprocessors, "input_preprocessors")
        channels, single_channels = _as_dict(input_channels, "input_channels")
        for name, value in channels.items():  # int() took 2.7 as 2 and True as 1
            check_count(where, "input_channels" if single_channels else f"input_channels[{name!r}]", value)
        both = sorted(set(preprocessors) & set(channels))
        if both:
            raise ValueError(f"modalities {both} have both a preprocessor and input_channels; give one.")
        if (single_pre and channels) or (single_channels and preprocessors):
            raise ValueError("a single un-named input cannot be combined with other input modalities: use dicts.")
        preprocessors.update({name: IdentityPreprocessor(int(c)) for name, c in channels.items()})
        if not preprocessors:
            raise ValueError("give input_preprocessors or input_channels (for inputs without a preprocessor).")
        self._single_input = single_pre or single_channels
        mask_probs, _ = _as_dict(input_mask_probs, "input_mask_probs")
        if input_mask_probs is not None and not isinstance(input_mask_probs, Mapping):
            mask_probs = {name: input_mask_probs for name in preprocessors}  # checked as numbers, not float()ed

        queries, self._single_output = _as_dict(output_queries, "output_queries")
        if not queries:
            raise ValueError("output_queries is required: a query generator or a dict of them per output modality.")
        postprocessors, single_post = _as_dict(output_postprocessors, "output_postprocessors")
        if single_post:
            if len(queries) != 1:
                raise ValueError("a single output_postprocessor needs a single output modality; use a dict.")
            postprocessors = {next(iter(queries)): postprocessors[DEFAULT]}
        unknown = sorted(set(postprocessors) - set(queries))
        if unknown:
            raise ValueError(f"output_postprocessors for modalities {unknown} that have no output_queries.")

        input_preprocessor = MultimodalPreprocessor(
            preprocessors, mask_probs=mask_probs if input_mask_probs is not None else None,
            min_padding_size=input_padding_channels,
        )
        encoder = PerceiverEncoder(
            input_channels=input_preprocessor.num_channels,
            num_self_attends_per_block=num_self_attends_per_block,
            num_blocks=num_blocks,
            z_index_dim=num_latents,
            num_z_channels=num_latent_channels,
            **(perceiver_encoder_kwargs or {}),
        )
        decoder_kwargs = dict(perceiver_decoder_kwargs or {})
        decoder_kwargs.setdefault("num_z_channels", num_latent_channels)
        decoder = MultimodalDecoder(
            queries,
            output_num_channels=final_project_out_channels or num_latent_channels,
            min_padding_size=output_query_padding_channels,
            final_project=final_project,
            **decoder_kwargs,
        )
        full_post = {name: postprocessors.get(name, IdentityPostprocessor()) for name in queries}
        super().__init__(
            encoder=encoder,
            decoder=decoder,
            input_preprocessor=input_preprocessor,
            output_postprocessor=MultimodalPostprocessor(full_post),
        )

    @property
    def output_channels(self) -> int:
        """Width of the decoder output that the postprocessors receive."""
        return self.decoder.num_output_channels

    def _wrap(self, value, single: bool, what: str):
        if value is None:
            return None
        if single and not isinstance(value, Mapping):
            return {DEFAULT: value}
        if not isinstance(value, Mapping):
            raise TypeError(f"{what}: this model has several modalities; pass a dict.")
        return value

    def _unwrap(self, outputs: dict):
        return outputs[DEFAULT] if self._single_output else outputs

    def forward(self, inputs, input_mask: torch.Tensor | None = None, query_mask: torch.Tensor | None = None,
                subsampled_output_points=None):
        """inputs: tensor or dict; subsampled_output_points: index tensor or dict per output modality.

        input_mask [B, N] (one 0/1 per preprocessed input position, 1 = valid) and query_mask [B, M] (one per
        output query) are optional.
        """
        where = f"{type(self).__name__}.forward"
        inputs = self._wrap(inputs, self._single_input, "inputs")
        batch = self._check_batch(where, inputs)
        for name, mask in (("input_mask", input_mask), ("query_mask", query_mask)):
            if mask is not None:
                _check_mask(where, name, mask, batch)
        device = next(iter(inputs.values())).device
        points = self._subsampled_points(where, subsampled_output_points, device)
        return self._unwrap(super().forward(inputs, input_mask, query_mask, points))

    def _subsampled_points(self, where: str, points, device: torch.device) -> dict | None:
        """Per output modality, its subsampled points checked (`check_indices`) and on `device`; None for all points.

        A modality whose query generator is a `BasicDecoder` (`QueryGenerator` included) takes a 1-D integer
        tensor (or list) of flat indices into its `output_index_dims`; any other generator's points are its own
        to check and are passed as given.
        """
        points = self._wrap(points, self._single_output, "subsampled_output_points")
        if points is None:
            return None
        generators = self.decoder.modalities
        unknown = sorted(set(points) - set(generators), key=repr)
        if unknown:  # ValueError as the decoder raised it, named here before the encoder runs
            raise ValueError(f"{where}: subsampled_output_points for unknown output modalities "
                             f"{[*map(str, unknown)][:10]}; expected some of {list(generators)}.")
        checked = {}
        for name, idx in points.items():
            generator = generators[name]
            if idx is None or not isinstance(generator, BasicDecoder) or generator.output_index_dims is None:
                checked[name] = idx
                continue
            shown = "subsampled_output_points" if self._single_output else f"subsampled_output_points[{name!r}]"
            checked[name] = check_indices(where, shown, idx, math.prod(generator.output_index_dims), device)
        return checked

    def _check_batch(self, where: str, inputs: Mapping) -> int:
        """The batch size the input tensors share (>= 1), refusing non-tensors and mixed batch sizes by modality."""
        if inputs is None:  # _wrap passes None through (it means "none" for the optional arguments)
            expected = "a tensor [B, ...]" if self._single_input else "a dict of tensors [B, ...] per input modality"
            raise TypeError(f"{where}: inputs must be {expected}; got NoneType.")
        sizes = {}
        for name, value in inputs.items():
            shown = "inputs" if self._single_input else f"inputs[{name!r}]"
            if not isinstance(value, torch.Tensor) or value.ndim < 1:
                raise TypeError(f"{where}: {shown} must be a tensor [B, ...]; got {describe(value)}.")
            sizes[shown] = value.shape[0]
        first = next(iter(sizes.values()), 1)
        if any(size != first for size in sizes.values()):  # compared, not hashed: traced sizes are symbolic
            raise ValueError(f"{where}: every input modality must have the same batch size; got "
                             + ", ".join(f"{k} {v}" for k, v in sizes.items()) + ".")
        if first < 1:
            raise ValueError(f"{where}: inputs must have B >= 1; got an empty batch.")
        return first
