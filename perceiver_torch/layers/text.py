"""Byte-token embedding plus trainable input positions (the language colab's input path)."""

from __future__ import annotations

import torch
from torch import nn

from .position_encoding import TrainablePositionEncoding


class TextPreprocessor(nn.Module):
    """ids [B, T] -> embed(ids) + positions[:T]; T may be at most max_seq_len.

    Upstream always runs at max_seq_len; a shorter T gives the same values at
    its positions, since padded inputs are masked out of the encoder.
    """

    def __init__(self, vocab_size: int, d_model: int, max_seq_len: int):
        super().__init__()
        self.max_seq_len = max_seq_len
        self.embed = nn.Embedding(vocab_size, d_model)
        # hk.Embed's default initialiser: truncated normal, stddev 1.
        nn.init.trunc_normal_(self.embed.weight, std=1.0, a=-2.0, b=2.0)
        self.positions = TrainablePositionEncoding(max_seq_len, d_model)

    @property
    def num_channels(self) -> int:
        return self.embed.embedding_dim

    def forward(self, input_ids: torch.Tensor):
        batch_size, seq_len = input_ids.shape
        if seq_len > self.max_seq_len:
            raise ValueError(f"sequence of {seq_len} tokens is longer than max_seq_len={self.max_seq_len}.")
        embedded = self.embed(input_ids) + self.positions(batch_size)[:, :seq_len]
        return embedded, None, embedded
