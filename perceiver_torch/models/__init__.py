"""Ready models, one per released task."""

from .language import PerceiverForMaskedLM

__all__ = ["PerceiverForMaskedLM"]
