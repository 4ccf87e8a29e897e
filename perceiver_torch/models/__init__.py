"""Ready models, one per released task, and the generic PerceiverIO they are built from."""

from .image_classification import PerceiverForImageClassification
from .language import PerceiverForMaskedLM
from .optical_flow import PerceiverForOpticalFlow
from .perceiver_io import PerceiverIO
from .video_autoencoding import PerceiverForMultimodalAutoencoding

__all__ = [
    "PerceiverForImageClassification", "PerceiverForMaskedLM", "PerceiverForMultimodalAutoencoding",
    "PerceiverForOpticalFlow", "PerceiverIO",
]
