"""perceiver-torch: DeepMind's Perceiver IO in PyTorch, exact to upstream."""

from .config_schema import ConfigError
from .layers import Perceiver
from .models import PerceiverForMaskedLM, PerceiverIO
from .registry import build_model, build_preset, preset_names
from .serialization import CheckpointConfigError, CheckpointFormatError, load_model
from .tokenizer import BytesTokenizer
from .zoo import create_model

__version__ = "0.1.0"

__all__ = [
    "BytesTokenizer", "Perceiver", "PerceiverForMaskedLM", "__version__", "build_model", "build_preset",
    "load_model", "preset_names",
]
__all__ += ["CheckpointConfigError", "CheckpointFormatError", "ConfigError"]
__all__ += ["PerceiverIO"]
__all__ += ["create_model"]

from .models import PerceiverForOpticalFlow  # noqa: E402

__all__ += ["PerceiverForOpticalFlow"]
from .imagenet_preprocessing import imagenet_labels, imagenet_transform  # noqa: E402
from .models import PerceiverForImageClassification, PerceiverForMultimodalAutoencoding  # noqa: E402

__all__ += ["PerceiverForImageClassification", "PerceiverForMultimodalAutoencoding", "imagenet_labels",
            "imagenet_transform"]
from .export import export_model  # noqa: E402

__all__ += ["export_model"]
