"""Two-way interop with Hugging Face transformers' Perceiver models (import, export, divergence report).

Importing needs no transformers install; exporting and the divergence report do.
"""

from .config_map import ConfigMismatchError
from .exporter import ExportError, to_transformers
from .importer import from_transformers
from .source import TransformersSourceError

__all__ = ["ConfigMismatchError", "ExportError", "TransformersSourceError", "from_transformers",
           "to_transformers"]
