"""Building blocks of Perceiver IO, one job per module."""

from .attention import MultiHeadAttention, make_cross_attention_mask
from .audio import AudioPreprocessor
from .blocks import MLP, CrossAttention, SelfAttention
from .checkpointing import CheckpointableBlock
from .decoders import BasicDecoder, EmbeddingDecoder
from .encoder import PerceiverEncoder
from .multimodal import (
    BasicVideoAutoencodingDecoder,
    IdentityPreprocessor,
    MultimodalDecoder,
    MultimodalPreprocessor,
    OneHotPreprocessor,
    QueryGenerator,
    restructure,
)
from .perceiver import Perceiver
from .position_encoding import (
    FourierPositionEncoding,
    PositionEncodingProjector,
    TrainablePositionEncoding,
    build_linear_positions,
    build_position_encoding,
    fourier_features,
)
from .postprocessors import (
    AudioPostprocessor,
    ClassificationPostprocessor,
    IdentityPostprocessor,
    MultimodalPostprocessor,
    ProjectionPostprocessor,
)
from .text import TextPreprocessor

__all__ = [
    "BasicDecoder", "CheckpointableBlock", "CrossAttention", "EmbeddingDecoder", "FourierPositionEncoding", "MLP",
    "MultiHeadAttention", "Perceiver", "PerceiverEncoder", "PositionEncodingProjector", "SelfAttention",
    "TextPreprocessor", "TrainablePositionEncoding", "build_linear_positions", "build_position_encoding",
    "fourier_features", "make_cross_attention_mask",
]
__all__ += [
    "AudioPostprocessor", "AudioPreprocessor", "BasicVideoAutoencodingDecoder", "ClassificationPostprocessor",
    "IdentityPostprocessor", "IdentityPreprocessor", "MultimodalDecoder", "MultimodalPostprocessor",
    "MultimodalPreprocessor", "OneHotPreprocessor", "ProjectionPostprocessor", "QueryGenerator", "restructure",
]
from .image import BatchNorm, Conv2DDownsample, ImagePreprocessor, space_to_depth  # noqa: E402

__all__ += ["BatchNorm", "Conv2DDownsample", "ImagePreprocessor", "space_to_depth"]
from .flow import FlowDecoder, patches_for_flow  # noqa: E402

__all__ += ["FlowDecoder", "patches_for_flow"]
