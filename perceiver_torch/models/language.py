"""Byte-level masked language model, built as the upstream language colab builds it."""

from __future__ import annotations

import torch

from ..layers import BasicDecoder, EmbeddingDecoder, Perceiver, PerceiverEncoder, TextPreprocessor
from ..tokenizer import BytesTokenizer


class PerceiverForMaskedLM(Perceiver):
    """Embeddings + trainable input positions -> encoder -> decoder -> tied embedding decoder.

    `config` is the golden/released `config.json` layout: `d_model`,
    `max_seq_len`, `vocab_size`, and upstream `encoder` / `decoder` kwargs.
    """

    task = "language"

    def __init__(self, config: dict):
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
        self.config = config
        self.embedding_decoder = EmbeddingDecoder(vocab_size)
        self.tokenizer = BytesTokenizer()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids [B, T] (T <= max_seq_len), attention_mask [B, T] -> logits [B, T, vocab].

        The mask masks both the encoder's inputs and the decoder's queries, as
        upstream; logits at masked-out (padding) positions are those of a zero
        attention output, exactly as upstream computes them.
        """
        seq_len = input_ids.shape[1]
        z, _, inputs, _ = self.encode(input_ids, attention_mask)
        # Upstream queries all max_seq_len positions; the first T are the same.
        query = self.decoder.decoder_query(inputs)[:, :seq_len]
        outputs = self.decoder(query, z, attention_mask)
        return self.embedding_decoder(outputs, self.input_preprocessor.embed.weight)

    @torch.no_grad()
    def fill_masked(self, text: str, mask: str = "[MASK]") -> str:
        """Replace each `mask` marker (one byte each) by the model's greedy prediction.

        >>> model.fill_masked("This is an incomplete sentence where some words are" + "[MASK]" * 9)
        """
        ids = self.tokenizer.encode_with_masks(text, mask)
        if not ids:
            return text
        device = self.embedding_decoder.bias.device
        input_ids = torch.tensor([ids], device=device)
        logits = self(input_ids)  # no padding: no mask (an all-ones one would only cost time)
        predictions = logits.argmax(-1)[0]
        is_mask = input_ids[0] == self.tokenizer.mask_token
        filled = torch.where(is_mask, predictions, input_ids[0])
        return self.tokenizer.decode(filled)
