"""Flow for frames larger than the training size: overlapping tiles blended as in the upstream flow colab.

The colab slides a training-size window with a stride of `tile - min_overlap`
(the last window moved flush with the frame's far edge), runs the model on
each window, and averages the overlapping predictions with weights that
fall off linearly towards every tile edge:
`w(y, x) = min(min(y + 1, h - y), min(x + 1, w - x))`.

Moving the last window can repeat a position (a frame exactly the training
size gets the same window four times), and a repeated window counts that
many times in the colab's average. Here each distinct window goes through
the model once, `tile_batch_size` windows per call, and is weighted by its
multiplicity: the colab's blend without the repeated model calls.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable, Sequence

import torch

from .integers import fits_tensor, is_int
from .layers.precision import wide

COLAB_MIN_OVERLAP = 20


def default_min_overlap(tile_size: Sequence[int]) -> int:
    """The colab's 20 pixels where the tiles allow it; a quarter of the smaller side for tiles of 20 or less.

    The released model's tiles are 368x496, so it always gets the colab's value; small test models
    (whose tiles the colab's constant would not fit) get a proportionate overlap instead of an error.
    """
    smaller = min(tile_size)
    return COLAB_MIN_OVERLAP if smaller > COLAB_MIN_OVERLAP else smaller // 4


def _check_int(name: str, value, allowed: str) -> int:
    """`value` as an int if it `is_int`, else a TypeError naming `name`."""
    if not is_int(value):
        raise TypeError(f"{name} must be an integer {allowed}; got {value!r}.")
    return int(value)


def _check_size(name: str, size, what: str = "") -> tuple[int, int]:
    """`size` as (height, width) if it is two positive integers, else a ValueError naming `name` (and `what`).

    Frames [B, 3, H, W] of the size must be able to exist: listing the tiles of a larger one would only hang.
    """
    if not isinstance(size, Sequence) or len(size) != 2 or not all(is_int(v) and v >= 1 for v in size):
        raise ValueError(f"{name} must be two positive integers (height, width){what}; got {size!r}.")
    if not fits_tensor(3, *size):
        raise ValueError(f"{name} {tuple(map(int, size))} is larger than any frame can be: RGB frames of that "
                         "size would have more elements than a tensor can count (2**63 - 1).")
    return int(size[0]), int(size[1])


def _check_dtype(dtype) -> torch.dtype:
    """`dtype` if it is a floating-point torch.dtype: an integer or bool one would overflow or saturate the weights."""
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating-point torch.dtype (the blend weights are summed and divided by); "
                        f"got {dtype!r}.")
    return dtype


def _check_tile_size(tile_size) -> tuple[int, int]:
    return _check_size("tile_size", tile_size, ": the model's training size")


def tile_origins(frame_size: Sequence[int], tile_size: Sequence[int],
                 min_overlap: int | None = None) -> list[tuple[int, int]]:
    """Top-left (y, x) of every tile, in the colab's order (rows, then columns), repeats included."""
    return _origins(*_check_grid(frame_size, tile_size, min_overlap))


def _check_grid(frame_size, tile_size, min_overlap) -> tuple[int, int, int, int, int]:
    """(height, width, tile_h, tile_w, min_overlap) of a tiling `tile_origins` can list, else a named error."""
    (height, width), (tile_h, tile_w) = _check_size("frame_size", frame_size), _check_tile_size(tile_size)
    if min_overlap is None:
        min_overlap = default_min_overlap(tile_size)
    min_overlap = _check_int("min_overlap", min_overlap, f"from 0 to {min(tile_h, tile_w) - 1}, or None")
    if min_overlap >= tile_h or min_overlap >= tile_w:
        raise ValueError(f"min_overlap ({min_overlap}) must be smaller than the tile size {tuple(tile_size)}: pass "
                         f"0 <= min_overlap < {min(tile_h, tile_w)} (the default for these tiles is "
                         f"{default_min_overlap(tile_size)}).")
    if min_overlap < 0:
        raise ValueError(f"min_overlap must be >= 0; got {min_overlap}.")
    if height < tile_h or width < tile_w:
        raise ValueError(f"frames of {height}x{width} are smaller than the training size {tile_h}x{tile_w}; "
                         "pad or resize them to at least that size.")
    return height, width, tile_h, tile_w, min_overlap


def _origins(height: int, width: int, tile_h: int, tile_w: int, min_overlap: int) -> list[tuple[int, int]]:
    # The colab moves only the last window flush with the edge. When the last range point lies within
    # min_overlap of the edge, the one before it also overruns the frame and the colab fails on the
    # ragged tile; clamping every window keeps the colab's grid wherever it works and stays inside otherwise.
    ys = [min(y, height - tile_h) for y in range(0, height, tile_h - min_overlap)]
    xs = [min(x, width - tile_w) for x in range(0, width, tile_w - min_overlap)]
    ys[-1], xs[-1] = height - tile_h, width - tile_w
    return list(itertools.product(ys, xs))


def blend_weights(tile_size: Sequence[int], *, dtype=torch.float32, device=None) -> torch.Tensor:
    """[h, w] weights: distance in pixels to the nearest tile edge, counting the edge pixel as 1."""
    tile_h, tile_w = _check_tile_size(tile_size)
    dtype = _check_dtype(dtype)
    y = torch.arange(tile_h, device=device)
    x = torch.arange(tile_w, device=device)
    wy = torch.minimum(y + 1, tile_h - y)
    wx = torch.minimum(x + 1, tile_w - x)
    return torch.minimum(wy[:, None], wx[None, :]).to(dtype)


def weight_map(frame_size: Sequence[int], tile_size: Sequence[int], min_overlap: int | None = None,
               *, dtype=torch.float32, device=None) -> torch.Tensor:
    """[H, W] sum of every tile's blend weights: the colab's normaliser (positive everywhere)."""
    grid = _check_grid(frame_size, tile_size, min_overlap)  # every argument checked before anything is allocated
    dtype = _check_dtype(dtype)
    # The map before the list of tiles: a frame size no memory holds is refused by the allocator at once, where
    # listing its tiles would take as long as there are tiles.
    total = torch.zeros(grid[:2], dtype=dtype, device=device)
    weights = blend_weights(tile_size, dtype=dtype, device=device)
    tile_h, tile_w = weights.shape
    for y, x in _origins(*grid):
        total[y:y + tile_h, x:x + tile_w] += weights
    return total


def _check_frame_pair(image1, image2) -> None:
    for name, image in (("image1", image1), ("image2", image2)):
        if not isinstance(image, torch.Tensor) or image.ndim != 4 or image.shape[1] != 3:
            raise ValueError(f"stitch_tiles: {name} must be a channels-first tensor [B, 3, H, W]; got "
                             f"{tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__}.")
    if image1.shape != image2.shape:
        raise ValueError(f"stitch_tiles: image1 and image2 must have the same shape; got {tuple(image1.shape)} and "
                         f"{tuple(image2.shape)}.")


@torch.no_grad()
def stitch_tiles(
    image1: torch.Tensor,
    image2: torch.Tensor,
    flow_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    tile_size: Sequence[int],
    min_overlap: int | None = None,
    tile_batch_size: int = 8,
) -> torch.Tensor:
    """Blend `flow_fn` (frames [N, 3, h, w] x2 -> flow [N, 2, h, w]) over tiles of [B, 3, H, W] frames.

    Returns [B, 2, H, W]. Each distinct tile of all B frame pairs is cut and
    run through `flow_fn` in chunks of `tile_batch_size` tiles (each chunk
    holding tile_batch_size * B pairs); the predictions are accumulated with
    `blend_weights` times the tile's multiplicity in the colab's grid, then
    divided by the total weight, as the colab does. Runs under `torch.no_grad`.
    """
    tile_batch_size = _check_int("tile_batch_size", tile_batch_size, ">= 1")
    if tile_batch_size < 1:
        raise ValueError(f"tile_batch_size must be >= 1; got {tile_batch_size}.")
    _check_frame_pair(image1, image2)
    tile_size = _check_tile_size(tile_size)
    batch, _, height, width = image1.shape
    tile_h, tile_w = tile_size
    multiplicity = Counter(tile_origins((height, width), tile_size, min_overlap))  # keeps first-seen order
    origins = list(multiplicity)
    flows = weights = None
    for start in range(0, len(origins), tile_batch_size):
        chunk = origins[start:start + tile_batch_size]
        first = torch.cat([image1[..., y:y + tile_h, x:x + tile_w] for y, x in chunk])
        second = torch.cat([image2[..., y:y + tile_h, x:x + tile_w] for y, x in chunk])
        pieces = flow_fn(first, second).reshape(len(chunk), batch, 2, tile_h, tile_w)
        if flows is None:
            # Blended in float32 or wider whatever the frames' dtype: a reduced-precision model returns float32
            # flow (its final projection is a float32 island), which a bfloat16 sum would round again; and
            # as wide as the model's flow (a float64 model's, from float32 frames).
            dtype = torch.promote_types(wide(image1.dtype), wide(pieces.dtype))
            weights = blend_weights(tile_size, dtype=dtype, device=image1.device)
            flows = image1.new_zeros(batch, 2, height, width, dtype=dtype)
        for (y, x), piece in zip(chunk, pieces, strict=True):
            flows[..., y:y + tile_h, x:x + tile_w] += piece * (weights * multiplicity[y, x])
    assert flows is not None  # tile_origins gives at least one tile (it sets the last of the ys and xs)
    return flows / weight_map((height, width), tile_size, min_overlap, dtype=flows.dtype, device=image1.device)
