"""ImageNet inputs as the upstream ImageNet colab prepares them, and the 1000 class names.

The colab (and `perceiver/train/dataset.py` at evaluation) takes a centred
square crop of side `int(224 / (224 + 32) * min(H, W))` (offsets rounded up),
resizes it bicubically to 224x224 and normalises each channel with the
ImageNet mean and standard deviation (of 0-255 values). The colab resizes
uint8 pixels with OpenCV's INTER_CUBIC (Keys a=-0.75, half-pixel centres,
no antialiasing, result saturated to 0-255); this uses the same kernel
through `F.interpolate`, so it agrees with the colab to within one grey
level before normalisation (OpenCV rounds its coefficients to fixed point).

Pillow (the `image` extra) is only needed to open files and PIL images.
"""

from __future__ import annotations

import os
from functools import cache

import numpy as np
import torch
import torch.nn.functional as F

from .integers import fits_tensor, is_int
from .labels import packaged_labels

MEAN_RGB = (0.485 * 255, 0.456 * 255, 0.406 * 255)
STDDEV_RGB = (0.229 * 255, 0.224 * 255, 0.225 * 255)
CROP_MARGIN = 32  # the colab crops size / (size + 32) of the shorter side


@cache
def imagenet_labels() -> tuple[str, ...]:
    """The 1000 ImageNet class names of the upstream colab, in the order of the classifier's logits."""
    return packaged_labels("imagenet_labels.txt", 1000)


def _pil():
    try:
        from PIL import Image
    except ImportError:
        raise ImportError('Opening images needs Pillow: pip install "perceiver-torch[image]" (or pass a '
                          "uint8 numpy array [H, W, 3]).") from None
    return Image


# Pillow's 16-bit greyscale modes. convert("RGB") clips their 0-65535 values at 255 (a white image), so they
# are rounded to 8 bits instead (the colab's pipeline reads 8-bit images; as floats, a dark image's values all
# within [0, 1] would be refused as a [0, 1]-scaled array). Modes I (32-bit integers) and F (floats) have no
# agreed range and are refused.
_GREY16 = ("I;16", "I;16L", "I;16B", "I;16N")


def _pil_rgb(image, where: str) -> np.ndarray:
    """A PIL image as RGB values 0-255 [H, W, 3], uint8 (16-bit greyscale rounded to the nearest 8-bit level)."""
    if image.mode in _GREY16:
        grey = (np.asarray(image).astype(np.uint32) * 255 + 65535 // 2) // 65535  # round(x * 255 / 65535)
        return np.repeat(grey.astype(np.uint8)[..., None], 3, axis=-1)
    if image.mode in ("I", "F"):
        kind = "32-bit integer" if image.mode == "I" else "floating-point"
        raise ValueError(f"{where} is a {kind} image (PIL mode {image.mode}), whose values have no agreed 0-255 "
                         "scale; convert it to 8-bit RGB first, or pass a numpy [H, W, 3] array of 0-255 values.")
    return np.asarray(image.convert("RGB"))


def load_rgb(image) -> np.ndarray:
    """A path, a PIL image or an [H, W, 3] array -> 0-255 RGB array [H, W, 3]: uint8 (a 16-bit greyscale image
    rounded from 0-65535), or the array as given."""
    if isinstance(image, (str, bytes, os.PathLike)):
        with _pil().open(image) as opened:
            return _pil_rgb(opened, os.fsdecode(image))
    if isinstance(image, torch.Tensor):
        raise TypeError("pass a path, a PIL image or a numpy [H, W, 3] array of 0-255 RGB values; for a "
                        "tensor already preprocessed [3, H, W], call the model directly.")
    if not isinstance(image, np.ndarray) and hasattr(image, "convert"):  # a PIL image
        return _pil_rgb(image, "the image")
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[-1] != 3:
        raise ValueError(f"expected an RGB image array [H, W, 3] (channels last, 0-255); got shape {array.shape}.")
    return array


def check_pixel_scale(pixels: np.ndarray) -> None:
    """Refuse RGB values that are not 0-255: negatives or above 255, and floats all within [0, 1].

    A [0, 1]-scaled float image would be normalised as if nearly black, which silently gives garbage;
    an all-zero image is the same black on either scale and passes.
    """
    if pixels.dtype == np.uint8:
        return
    if not (np.issubdtype(pixels.dtype, np.floating) or np.issubdtype(pixels.dtype, np.integer)):
        raise TypeError(f"expected an RGB image of 0-255 values (uint8, integer or float); got dtype {pixels.dtype}.")
    if pixels.size == 0:
        raise ValueError(f"expected an RGB image [H, W, 3]; got an empty array of shape {pixels.shape}.")
    low, high = float(pixels.min()), float(pixels.max())
    if not (0 <= low and high <= 255):  # written so that NaN fails
        hint = " (already normalised? pass the [3, H, W] tensor to the model directly)" if low < 0 else ""
        raise ValueError(f"expected RGB values in 0-255; got values in [{low:g}, {high:g}]{hint}.")
    if np.issubdtype(pixels.dtype, np.floating) and 0 < high <= 1:
        raise ValueError(f"this float image's values all lie in [{low:g}, {high:g}]: it looks scaled to [0, 1], "
                         "but RGB values in 0-255 are expected; multiply by 255 (or pass uint8).")


def center_crop_size(height: int, width: int, size: int = 224) -> int:
    """Side of the colab's centred square crop: size / (size + 32) of the shorter side, truncated."""
    ratio = np.float32(size / (size + CROP_MARGIN))
    return int(ratio * np.float32(min(height, width)))


def _output_size(size) -> tuple[int, int]:
    """(height, width) >= 1 from an int or a pair of ints; a clear error for anything else."""
    pair = (size, size) if not isinstance(size, (tuple, list)) else tuple(size)
    if len(pair) != 2 or any(not is_int(v) or v < 1 for v in pair):
        raise ValueError(f"imagenet_transform: size must be a positive int or a (height, width) pair of them; "
                         f"got {size!r}.")
    if not fits_tensor(3, *pair):  # refused before the image is read, not by torch after resizing it
        raise ValueError(f"imagenet_transform: size {tuple(map(int, pair))} is larger than any image can be: "
                         "[3, height, width] would have more elements than a tensor can count (2**63 - 1).")
    return int(pair[0]), int(pair[1])


def imagenet_transform(image, size: tuple[int, int] | int = (224, 224)) -> torch.Tensor:
    """Colab preprocessing: centre crop, bicubic resize to `size`, normalise -> float32 [3, H, W].

    `image` is a path, a PIL image, or an RGB array [H, W, 3] of 0-255 values.
    """
    out_h, out_w = _output_size(size)
    pixels = load_rgb(image)
    check_pixel_scale(pixels)
    height, width = pixels.shape[:2]
    crop = center_crop_size(height, width, out_h)
    if crop < 1:
        raise ValueError(f"image {height}x{width} is too small to crop.")
    top, left = (height - crop + 1) // 2, (width - crop + 1) // 2
    pixels = pixels[top:top + crop, left:left + crop]
    x = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32)).permute(2, 0, 1)[None]
    x = F.interpolate(x, size=(out_h, out_w), mode="bicubic", align_corners=False)
    x = x[0]
    if pixels.dtype == np.uint8:  # OpenCV returns uint8 for uint8 input: rounded and saturated
        x = x.round().clamp(0, 255)
    mean = torch.tensor(MEAN_RGB, dtype=torch.float32)[:, None, None]
    std = torch.tensor(STDDEV_RGB, dtype=torch.float32)[:, None, None]
    return (x - mean) / std
