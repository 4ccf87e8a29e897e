"""Ready models, one per released task."""

from .language import PerceiverForMaskedLM
from .perceiver_io import PerceiverIO

__all__ = ["PerceiverForMaskedLM"]
__all__ += ["PerceiverIO"]
from .optical_flow import PerceiverForOpticalFlow  # noqa: E402

__all__ += ["PerceiverForOpticalFlow"]
from .image_classification import PerceiverForImageClassification  # noqa: E402
from .video_autoencoding import PerceiverForMultimodalAutoencoding  # noqa: E402

__all__ += ["PerceiverForImageClassification", "PerceiverForMultimodalAutoencoding"]
