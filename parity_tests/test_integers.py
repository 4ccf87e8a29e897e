"""`perceiver_torch.integers.is_int`: the one rule for integer arguments (k, chunks, tile sizes, image sizes)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from perceiver_torch.integers import is_int


@pytest.mark.parametrize("value", [0, -3, 2**70, np.int64(4), np.uint8(7), np.int32(-1)])
def test_ints_and_numpy_integers_are_integers(value):
    assert is_int(value)


@pytest.mark.parametrize("value", [True, False, np.True_, 2.0, np.float32(2), "2", None, torch.tensor(2), [2]])
def test_bools_floats_strings_and_tensors_are_not(value):
    assert not is_int(value)
