"""What the library takes as an integer argument: an int or a NumPy integer, never a bool."""

from __future__ import annotations

import numbers


def is_int(value) -> bool:
    """True for an int or a NumPy integer; False for a bool (an int subclass: `True` as a size is a mistake)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)
