"""Flow fields as colour images, and a dependency-free PNG writer.

The colour model is the upstream flow colab's: hue is the flow direction,
saturation its magnitude (full at `max_flow` pixels, 24 in the colab), value
always full. The colab quantises hue and saturation to 8 bits (OpenCV's
0-180 hue scale) before converting; so does this. (The colab then shows
OpenCV's BGR array as if it were RGB, swapping red and blue; this returns
true RGB.)
"""

from __future__ import annotations

import math
import numbers
import os
import struct
import zlib

import numpy as np
import torch

from .serialization import atomic_write

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def flow_to_rgb(flow: torch.Tensor | np.ndarray, max_flow: float = 24.0) -> np.ndarray:
    """Flow [2, H, W] (channels first: u, v in pixels) -> uint8 RGB image [H, W, 3]."""
    if isinstance(flow, torch.Tensor):
        if flow.is_complex():
            raise TypeError(f"flow must hold real displacements; got a {flow.dtype} tensor.")
        flow = flow.detach().to("cpu", torch.float64).numpy()  # as wide as below; bfloat16 has no NumPy dtype
    flow = np.asarray(flow)
    if flow.ndim != 3 or flow.shape[0] != 2:
        raise ValueError(f"flow must be [2, H, W] (u, v channels first); got shape {flow.shape}.")
    if flow.dtype.kind not in "biuf":  # complex would lose its imaginary part, strings fail deep in NumPy
        raise TypeError(f"flow must hold real displacements; got dtype {flow.dtype}.")
    if not isinstance(max_flow, numbers.Real) or isinstance(max_flow, bool) or not 0 < max_flow < math.inf:
        raise ValueError(f"max_flow must be a positive finite number (pixels of full saturation); got {max_flow!r}.")
    u, v = flow.astype(np.float64)
    angle = np.mod(np.arctan2(v, u), 2 * np.pi)  # [0, 2 pi), as cv2.cartToPolar
    hue = (angle / np.pi / 2 * 180).astype(np.uint8)  # OpenCV's 8-bit hue scale, truncated like the colab
    saturation = np.clip(np.hypot(u, v) * 255 / max_flow, 0, 255).astype(np.uint8)
    return hsv_to_rgb(hue.astype(np.float64) * 2, saturation / 255.0, np.ones_like(u))


def hsv_to_rgb(hue_degrees: np.ndarray, saturation: np.ndarray, value: np.ndarray) -> np.ndarray:
    """Hue in degrees, saturation and value in [0, 1] -> uint8 RGB [..., 3]."""
    sector = hue_degrees / 60.0
    channels = []
    for offset in (5, 3, 1):  # red, green, blue
        k = np.mod(offset + sector, 6)
        ramp = np.clip(np.minimum(k, 4 - k), 0, 1)
        channels.append(value - value * saturation * ramp)
    return np.clip(np.rint(np.stack(channels, axis=-1) * 255), 0, 255).astype(np.uint8)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def encode_png(rgb: np.ndarray) -> bytes:
    """uint8 [H, W, 3] -> PNG bytes (8-bit truecolour, no filtering)."""
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3 or 0 in rgb.shape:
        raise ValueError(f"expected a non-empty uint8 RGB image [H, W, 3]; got {rgb.dtype} {rgb.shape}.")
    height, width = rgb.shape[:2]
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8 bits, truecolour
    rows = np.concatenate([np.zeros((height, 1), np.uint8), rgb.reshape(height, width * 3)], axis=1)
    return (PNG_SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(rows.tobytes(), 6))
            + _chunk(b"IEND", b""))


def write_png(path: str | os.PathLike, rgb: np.ndarray) -> str:
    """Write uint8 [H, W, 3] as a PNG, atomically (temp file + rename)."""
    data = encode_png(rgb)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)

    return str(atomic_write(path, write))


def save_flow_png(path: str | os.PathLike, flow: torch.Tensor | np.ndarray, max_flow: float = 24.0) -> str:
    """Colour-code flow [2, H, W] and write it as a PNG at `path`."""
    return write_png(path, flow_to_rgb(flow, max_flow))
