"""Write safetensors files byte-reproducibly, one tensor at a time.

safetensors' own writer emits its metadata map in hash order, so two writes of the same
tensors differ in bytes; the zoo pins artifacts by sha256, so the header here is canonical:
JSON with sorted keys and no spaces, tensors laid out in name order, padded with spaces to a
multiple of 8 bytes (the format's alignment). Tensors are written one by one from their own
storage, so no second copy of the whole state dict is ever held.
"""

from __future__ import annotations

import json
import struct

import torch

# torch dtype -> the format's dtype name.
DTYPE_NAMES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL",
}


def canonical_header(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None) -> bytes:
    """The 8-byte length and JSON header for `tensors` laid out in name order."""
    header: dict[str, object] = {}
    if metadata:
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise TypeError("safetensors metadata must map str to str")
        header["__metadata__"] = dict(sorted(metadata.items()))
    offset = 0
    for name in sorted(tensors):
        t = tensors[name]
        if t.dtype not in DTYPE_NAMES:
            raise TypeError(f"tensor {name!r}: dtype {t.dtype} cannot be written to safetensors")
        size = t.numel() * t.element_size()
        header[name] = {"dtype": DTYPE_NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text


def write_safetensors(path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Write `tensors` (on any device) to `path` with a canonical header; same input, same bytes."""
    with open(path, "wb") as f:
        f.write(canonical_header(tensors, metadata))
        for name in sorted(tensors):
            t = tensors[name].detach().to("cpu").contiguous()
            # Raw bytes in the tensor's own (little-endian) layout, without going through numpy
            # (which has no bfloat16).
            f.write(t.reshape(-1).view(torch.uint8).numpy().data)
