"""Byte-level masked language model, built as the upstream language colab builds it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import overload

import torch

from ..integers import is_int
from ..layers import BasicDecoder, EmbeddingDecoder, Perceiver, PerceiverEncoder, TextPreprocessor
from ..tokenizer import BytesTokenizer
from .inference_helpers import inference_helper
from .input_checks import INDEX_DTYPES, check_binary, check_count, check_flag, check_latents, check_range, describe
from .owned_config import check_own_config, own_config
from .pretrained import PretrainedMixin


class PerceiverForMaskedLM(PretrainedMixin, Perceiver):
    """Embeddings + trainable input positions -> encoder -> decoder -> tied embedding decoder.

    `config` is the golden/released `config.json` layout: `d_model`,
    `max_seq_len`, `vocab_size`, and upstream `encoder` / `decoder` kwargs.
    """

    task = "language"
    # The parts' own types (nn.Module types a submodule attribute as Tensor | Module); config: own_config's.
    config: dict
    input_preprocessor: TextPreprocessor
    encoder: PerceiverEncoder
    decoder: BasicDecoder

    def __init__(self, config: dict):
        check_own_config(self.task, config, type(self).__name__)
        d_model, max_seq_len, vocab_size = config["d_model"], config["max_seq_len"], config["vocab_size"]
        decoder_kwargs = dict(config["decoder"])
        decoder_kwargs.setdefault("output_index_dims", max_seq_len)
        super().__init__(
            input_preprocessor=TextPreprocessor(vocab_size, d_model, max_seq_len),
            encoder=PerceiverEncoder(input_channels=d_model, **config["encoder"]),
            decoder=BasicDecoder(**decoder_kwargs),
        )
        if self.decoder.num_output_channels != d_model:
            raise ValueError(
                f"decoder outputs {self.decoder.num_output_channels} channels; the tied embedding "
                f"decoder needs d_model={d_model}."
            )
        own_config(self, config)
        self.embedding_decoder = EmbeddingDecoder(vocab_size)
        self.tokenizer = BytesTokenizer()

    def forward(  # type: ignore[override]  # the task's own inputs
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """input_ids [B, T] (T <= max_seq_len), attention_mask [B, T] -> logits [B, T, vocab].

        The mask masks both the encoder's inputs and the decoder's queries, as
        upstream; logits at masked-out (padding) positions are those of a zero
        attention output, exactly as upstream computes them. It is
        `forward_head(forward_features(input_ids, attention_mask), attention_mask, length=T)`.
        """
        self._check_inputs(input_ids, attention_mask)
        latents, *_ = self.encode(input_ids, attention_mask)
        return self._decode(latents, attention_mask, input_ids.shape[1], pre_logits=False)

    def forward_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids [B, T], attention_mask [B, T] -> the encoder's latents [B, num_latents, num_features].

        What `forward` decodes the logits from (timm's name): a fixed-size summary of the text, padding masked.
        `forward_head` turns them into logits.
        """
        self._check_inputs(input_ids, attention_mask)
        latents, *_ = self.encode(input_ids, attention_mask)
        return latents

    def forward_head(self, latents: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                     length: int | None = None, pre_logits: bool = False) -> torch.Tensor:
        """latents [B, num_latents, num_features], attention_mask [B, T] -> logits [B, T, vocab] (timm's name).

        The latents do not say how long the text was: the decoder queries the first T of its max_seq_len
        positions, T being the mask's length when a mask is given, else `length`, else max_seq_len (all of
        them, as upstream decodes). The mask masks the queries as in `forward`. So `forward(ids, mask)` is
        `forward_head(forward_features(ids, mask), mask)` and `forward(ids)` is
        `forward_head(forward_features(ids), length=ids.shape[1])`, bit for bit. A `length` given with a
        mask must be the mask's.

        With `pre_logits=True`, the tied embedding decoder's input instead: the decoder's outputs
        [B, T, head_hidden_size], a contextual embedding of each byte position.
        """
        where, max_len = "PerceiverForMaskedLM.forward_head", self.config["max_seq_len"]
        check_flag(where, "pre_logits", pre_logits)
        check_latents(where, latents, self.encoder.latents.embeddings.shape)
        if length is not None and not (is_int(length) and 1 <= length <= max_len):
            raise ValueError(f"{where}: length must be an integer in [1, {max_len}] (max_seq_len), the number of "
                             f"output positions T; got {length!r}.")
        if attention_mask is None:
            return self._decode(latents, None, max_len if length is None else int(length), pre_logits)
        batch = latents.shape[0]
        self._check_mask(where, attention_mask, f"attention_mask must be a tensor [B, T] with B = {batch} "
                         f"(latents' batch) and 1 <= T <= {max_len}, holding 0/1", batch)
        seq_len = attention_mask.shape[1]
        if length is not None and length != seq_len:
            raise ValueError(f"{where}: length={length!r} contradicts attention_mask {describe(attention_mask)}, "
                             f"whose T is {seq_len}; pass one of them, or both alike.")
        return self._decode(latents, attention_mask, seq_len, pre_logits)

    def _decode(self, latents: torch.Tensor, attention_mask: torch.Tensor | None, length: int,
                pre_logits: bool) -> torch.Tensor:
        """forward_head's logits, or pre-logits, at the first `length` positions: the inputs unchecked."""
        embed = self.input_preprocessor.embed.weight
        # Upstream builds the decoder's queries from the embedded inputs, taking their batch, device and dtype
        # (a Fourier query is computed in it). That dtype is the embedding tables', not the latents': a
        # bfloat16 model carries its latents in float32 (the residual stream, precision.py), and a Fourier
        # query built in float32 gives other logits (measured). An empty stand-in carries the inputs' dtype.
        dtype = torch.promote_types(embed.dtype, self.input_preprocessor.positions.embeddings.dtype)
        like = latents.new_empty((latents.shape[0], 0), dtype=dtype, device=embed.device)
        # Upstream queries all max_seq_len positions; the first T are the same.
        query = self.decoder.decoder_query(like)[:, :length]
        outputs = self.decoder(query, latents, attention_mask)
        return outputs if pre_logits else self.embedding_decoder(outputs, embed)

    @property
    def num_features(self) -> int:
        """Channels of each latent `forward_features` returns (timm's name)."""
        return self.encoder.latents.embeddings.shape[-1]

    @property
    def head_hidden_size(self) -> int:
        """Width (d_model) of the per-position outputs `forward_head(..., pre_logits=True)` returns (timm's name)."""
        return self.decoder.num_output_channels

    def _check_inputs(self, input_ids, attention_mask) -> None:
        """Refuse ids and masks of another layout; ids out of range only on CPU in eager (see input_checks)."""
        where, vocab, max_len = "PerceiverForMaskedLM.forward", self.config["vocab_size"], self.config["max_seq_len"]
        expected = (f"input_ids must be an integer tensor [B, T] (int64 or int32) with 0 <= id < {vocab}, "
                    f"B >= 1, 1 <= T <= {max_len}")
        if not isinstance(input_ids, torch.Tensor) or input_ids.dtype not in INDEX_DTYPES:
            raise TypeError(f"{where}: {expected}; got {describe(input_ids)}.")
        if input_ids.ndim != 2 or input_ids.shape[0] < 1 or not 1 <= input_ids.shape[1] <= max_len:
            too_long = input_ids.ndim == 2 and input_ids.shape[1] > max_len
            reason = f" (longer than max_seq_len={max_len})" if too_long else ""
            raise ValueError(f"{where}: {expected}; got {describe(input_ids)}{reason}.")
        check_range(where, "input_ids", input_ids, 0, vocab - 1, f"must hold ids in [0, {vocab})")
        if attention_mask is not None:
            batch, seq_len = input_ids.shape
            self._check_mask(where, attention_mask, f"attention_mask must be a tensor of input_ids' shape "
                             f"{list(input_ids.shape)} holding 0/1", batch, seq_len)

    def _check_mask(self, where: str, attention_mask, expected: str, batch: int, seq_len: int | None = None
                    ) -> None:
        """Refuse a mask that is not [batch, seq_len] (seq_len None: any T in [1, max_seq_len]) of 0/1."""
        if not isinstance(attention_mask, torch.Tensor) or attention_mask.is_complex():
            raise TypeError(f"{where}: {expected}; got {describe(attention_mask)}.")
        shape = tuple(attention_mask.shape)
        fits = len(shape) == 2 and shape[0] == batch and (
            shape[1] == seq_len if seq_len is not None else 1 <= shape[1] <= self.config["max_seq_len"])
        if not fits:
            raise ValueError(f"{where}: {expected}; got {describe(attention_mask)}.")
        check_binary(where, expected, attention_mask, "1 = real token, 0 = padding")

    @overload
    def fill_masked(self, text: str, mask: str = ..., *, batch_size: int = ...) -> str: ...

    @overload
    def fill_masked(self, text: list[str] | tuple[str, ...], mask: str = ..., *, batch_size: int = ...
                    ) -> list[str]: ...

    @inference_helper
    def fill_masked(self, text: str | Sequence[str], mask: str = "[MASK]", *, batch_size: int = 8
                    ) -> str | list[str]:
        """Replace each `mask` marker (one byte each) by the model's greedy prediction.

        `text` is one string (a string comes back) or a list or tuple of them (a list comes back, in order),
        run `batch_size` texts at a time, each padded to the longest of its batch under an attention mask:
        padding changes no prediction (upstream's own batches are padded to max_seq_len so).

        >>> model.fill_masked("This is an incomplete sentence where some words are" + "[MASK]" * 9)
        """
        where = "PerceiverForMaskedLM.fill_masked"
        if self.config["vocab_size"] != self.tokenizer.vocab_size:  # forward works; the bytes cannot round-trip
            raise ValueError(f"{where}: this model has vocab_size {self.config['vocab_size']}, but fill_masked "
                             f"reads and writes text with the byte tokenizer's {self.tokenizer.vocab_size} ids "
                             "(PerceiverForMaskedLM.tokenizer); tokenize for this vocabulary yourself and call "
                             "the model.")
        single = isinstance(text, str)
        texts = [text] if single else text
        if not isinstance(texts, (list, tuple)):
            raise TypeError(f"{where}: text must be a str or a list or tuple of str; got {type(text).__name__}.")
        if not isinstance(mask, str):
            raise TypeError(f"{where}: mask must be a str; got {type(mask).__name__}.")
        batch_size = check_count(where, "batch_size", batch_size)
        encoded = []
        for i, item in enumerate(texts):
            name = "text" if single else f"text[{i}]"
            if not isinstance(item, str):
                raise TypeError(f"{where}: {name} must be a str; got {type(item).__name__}.")
            ids = self.tokenizer.encode_with_masks(item, mask)
            if len(ids) > self.config["max_seq_len"]:
                raise ValueError(f"{where}: {name} is {len(ids)} bytes with each mask counted as one; the model "
                                 f"takes at most {self.config['max_seq_len']}.")
            encoded.append(ids)
        filled = list(texts)  # an empty text comes back as it is
        todo = [i for i, ids in enumerate(encoded) if ids]
        for start in range(0, len(todo), batch_size):
            rows = todo[start:start + batch_size]
            for i, predicted in zip(rows, self._fill_batch([encoded[i] for i in rows]), strict=True):
                filled[i] = self.tokenizer.decode(predicted)
        return filled[0] if single else filled

    def _fill_batch(self, batch: list[list[int]]) -> list[torch.Tensor]:
        """Greedy predictions at the MASK ids of each sequence, the other ids kept."""
        length = max(len(ids) for ids in batch)
        padded, masks = zip(*(self.tokenizer.pad(ids, length) for ids in batch), strict=True)
        device = self.embedding_decoder.bias.device
        input_ids = torch.tensor(padded, device=device)
        # One sequence, or all of one length: no padding, no mask (an all-ones one would only cost time).
        attention_mask = None if all(map(all, masks)) else torch.tensor(masks, device=device)
        predictions = self(input_ids, attention_mask).argmax(-1)
        filled = torch.where(input_ids == self.tokenizer.mask_token, predictions, input_ids)
        return [row[:len(ids)] for row, ids in zip(filled, batch, strict=True)]
