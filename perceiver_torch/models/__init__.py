"""Ready models, one per released task."""

from .language import PerceiverForMaskedLM
from .perceiver_io import PerceiverIO

__all__ = ["PerceiverForMaskedLM"]
__all__ += ["PerceiverIO"]
