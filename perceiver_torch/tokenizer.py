"""UTF-8 bytes tokenizer of the language model: 6 special ids, then byte + 6."""

from __future__ import annotations

from collections.abc import Sequence

import torch


class BytesTokenizer:
    """262 ids: PAD=0, BOS=1, EOS=2, MASK=3, CLS=4, SEP=5, then each byte b as b + 6."""

    pad_token = 0
    bos_token = 1
    eos_token = 2
    mask_token = 3
    cls_token = 4
    sep_token = 5
    num_reserved_tokens = 6
    vocab_size = 256 + num_reserved_tokens

    def encode(self, text: str | bytes) -> list[int]:
        data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
        return [b + self.num_reserved_tokens for b in data]

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        """Special ids are dropped; invalid UTF-8 becomes U+FFFD, as upstream."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        data = bytes(i - self.num_reserved_tokens for i in ids if i >= self.num_reserved_tokens)
        return data.decode("utf-8", errors="replace")

    def pad(self, ids: Sequence[int], length: int) -> tuple[list[int], list[int]]:
        """Pad with PAD to `length`; returns (ids, attention mask of 1 on real tokens)."""
        if len(ids) > length:
            raise ValueError(f"{len(ids)} tokens do not fit in a length of {length}.")
        padding = length - len(ids)
        return list(ids) + [self.pad_token] * padding, [1] * len(ids) + [0] * padding

    def encode_with_masks(self, text: str, mask: str = "[MASK]") -> list[int]:
        """Encode `text`, turning every occurrence of `mask` into one MASK id (one byte to predict)."""
        if not mask:
            raise ValueError("mask marker must be a non-empty string.")
        ids: list[int] = []
        pieces = text.split(mask)
        for i, piece in enumerate(pieces):
            ids.extend(self.encode(piece))
            if i < len(pieces) - 1:
                ids.append(self.mask_token)
        return ids
