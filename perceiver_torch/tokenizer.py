"""UTF-8 bytes tokenizer of the language model: 6 special ids, then byte + 6."""

from __future__ import annotations

import operator
from collections.abc import Sequence

import torch


def _as_id(value) -> int | None:
    """An integer id (int, NumPy integer, 0-d integer tensor) as a Python int; None for anything else."""
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


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
        """Text (encoded as UTF-8) or bytes (bytes, bytearray, memoryview) -> ids, one per byte."""
        if isinstance(text, str):
            data = text.encode("utf-8")
        elif isinstance(text, (bytes, bytearray, memoryview)):
            data = bytes(text)
        else:  # bytes(5) would be five zero bytes, bytes(ids) the ids as bytes: neither is text
            raise TypeError(f"BytesTokenizer.encode: expected text (str) or bytes; got {type(text).__name__} "
                            "(ids are turned back into text with decode).")
        return [b + self.num_reserved_tokens for b in data]

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        """One sequence of ids (a list, or a 1-D tensor or array) -> text.

        Special ids are dropped; invalid UTF-8 becomes U+FFFD, as upstream.
        """
        data = bytes(i - self.num_reserved_tokens for i in self._ids("decode", ids) if i >= self.num_reserved_tokens)
        return data.decode("utf-8", errors="replace")

    def pad(self, ids: Sequence[int] | torch.Tensor, length: int) -> tuple[list[int], list[int]]:
        """Pad with PAD to `length`; returns (ids, attention mask of 1 on real tokens)."""
        ids = self._ids("pad", ids)
        size = _as_id(length)
        if size is None:
            raise TypeError(f"BytesTokenizer.pad: length must be an integer; got {length!r}.")
        if size < 0:
            raise ValueError(f"BytesTokenizer.pad: length must be >= 0; got {size}.")
        length = size
        if len(ids) > length:
            raise ValueError(f"{len(ids)} tokens do not fit in a length of {length}.")
        padding = length - len(ids)
        return ids + [self.pad_token] * padding, [1] * len(ids) + [0] * padding

    def _ids(self, where: str, ids) -> list[int]:
        """`ids` as a list of Python ints in [0, vocab_size), refusing batches, scalars and other values."""
        if isinstance(ids, (str, bytes)):
            raise TypeError(f"BytesTokenizer.{where}: expected ids, got {type(ids).__name__} (use encode for text).")
        if hasattr(ids, "ndim") and hasattr(ids, "tolist"):  # a tensor or an array
            if ids.ndim != 1:
                raise ValueError(f"BytesTokenizer.{where}: expected one sequence of ids (1-D); got shape "
                                 f"{list(ids.shape)} (decode a batch row by row: [tok.{where}(row) for row in ids]).")
            ids = ids.tolist()
        given = list(ids)  # once: an iterator (a generator, say) is read only once
        ids = [_as_id(i) for i in given]
        bad = [g for g, i in zip(given, ids, strict=True) if i is None or not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"BytesTokenizer.{where}: ids must be integers in [0, {self.vocab_size}); got "
                             f"{bad[:5]!r}{' ...' if len(bad) > 5 else ''}.")
        return ids

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
