"""Haiku checkpoint -> perceiver-torch converters: safe reading, strict declarative tables."""

from perceiver_torch.config_schema import ConfigError  # raised by convert for bad configs

from .checkpoint_reader import (
    CheckpointLimitError,
    CheckpointReadError,
    HaikuCheckpoint,
    UnsafePickleError,
    load_haiku_checkpoint,
    open_haiku_checkpoint,
)
from .convert import CONVERTER_VERSION, convert, convert_tree, load_config
from .rules import ConversionError
from .transformers import from_transformers, to_transformers

__all__ = [
    "CONVERTER_VERSION", "CheckpointLimitError", "CheckpointReadError", "ConfigError", "ConversionError",
    "HaikuCheckpoint", "UnsafePickleError", "convert", "convert_tree", "from_transformers", "load_config",
    "load_haiku_checkpoint", "open_haiku_checkpoint", "to_transformers",
]
