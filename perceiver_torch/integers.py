"""What the library takes as an integer argument: an int or a NumPy integer, never a bool."""

from __future__ import annotations

import math
import numbers

# torch counts a tensor's elements in int64: sizes whose product exceeds this cannot be a tensor at all.
MAX_TENSOR_ELEMENTS = 2**63 - 1


def is_int(value) -> bool:
    """True for an int or a NumPy integer; False for a bool (an int subclass: `True` as a size is a mistake)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def fits_tensor(*sizes: int) -> bool:
    """Whether a tensor of these (non-negative integer) sizes could exist: its element count fits in int64."""
    return math.prod(sizes) <= MAX_TENSOR_ELEMENTS
