"""perceiver-torch: DeepMind's Perceiver IO in PyTorch, exact to upstream."""

from .compiled_inference import compile_frozen
from .config_schema import ConfigError
from .export import export_model
from .imagenet_preprocessing import imagenet_labels, imagenet_transform
from .layers import Perceiver
from .models import (
    PerceiverForImageClassification,
    PerceiverForMaskedLM,
    PerceiverForMultimodalAutoencoding,
    PerceiverForOpticalFlow,
    PerceiverIO,
)
from .registry import build_model, build_preset, preset_names
from .saving import save_model
from .serialization import CheckpointConfigError, CheckpointFormatError, load_model
from .tokenizer import BytesTokenizer
from .version import __version__
from .zoo import HubError, create_model, list_models, push_to_hub

__all__ = [
    "BytesTokenizer", "CheckpointConfigError", "CheckpointFormatError", "ConfigError", "HubError", "Perceiver",
    "PerceiverForImageClassification", "PerceiverForMaskedLM", "PerceiverForMultimodalAutoencoding",
    "PerceiverForOpticalFlow", "PerceiverIO", "__version__", "build_model", "build_preset", "compile_frozen",
    "create_model", "export_model", "imagenet_labels", "imagenet_transform", "list_models", "load_model",
    "preset_names", "push_to_hub", "save_model",
]
