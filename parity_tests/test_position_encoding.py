"""Fourier features of a grid, computed per axis, against the general formula on the flattened grid."""

from __future__ import annotations

import pytest
import torch

from perceiver_torch.layers import FourierPositionEncoding, build_linear_positions, fourier_features
from perceiver_torch.layers.position_encoding import grid_fourier_features

GRIDS = [((224, 224), 64), ((368, 496), 64), ((16, 56, 56), 32), ((7,), 3), ((13, 11, 9), 5), ((1, 4), 2)]


@pytest.mark.parametrize("dims,num_bands", GRIDS)
@pytest.mark.parametrize("concat_pos,sine_only", [(True, False), (False, False), (True, True), (False, True)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_grid_features_match_the_formula_on_every_position(dims, num_bands, concat_pos, sine_only, dtype):
    max_resolution = tuple(2 * d + 1 for d in dims)  # differs from the grid, so a mixed-up axis would show
    pos = build_linear_positions(dims, dtype=dtype).reshape(-1, len(dims))
    expected = fourier_features(pos, num_bands, max_resolution, concat_pos, sine_only)
    got = grid_fourier_features(dims, num_bands, max_resolution, concat_pos, sine_only, dtype=dtype)
    assert got.shape == expected.shape and got.dtype == dtype
    # The same products, then sin/cos of the same angles: equal on the machines measured. One ulp of 1 (eps)
    # is allowed because torch may take sin/cos of a tensor's tail elements on a scalar path, which can round
    # differently from its vector path, and the tails fall on different elements in the two layouts.
    torch.testing.assert_close(got, expected, rtol=0, atol=torch.finfo(dtype).eps)


def test_grid_encoding_is_computed_once_for_the_batch():
    encoding = FourierPositionEncoding((5, 6), num_bands=4)
    one, four = encoding(1, dtype=torch.float32), encoding(4, dtype=torch.float32)
    assert four.shape == (4, 30, encoding.num_channels)
    assert four.stride(0) == 0  # broadcast, not a copy per example
    assert torch.equal(four, one.expand(4, -1, -1))


def test_given_positions_still_take_the_formula():
    encoding = FourierPositionEncoding((5, 6), num_bands=4)
    pos = torch.rand(2, 7, 2) * 2 - 1
    expected = fourier_features(pos, 4, (5, 6))
    assert torch.equal(encoding(2, pos, dtype=torch.float32), expected)
