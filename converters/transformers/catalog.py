"""What transformers' Perceiver computes differently from DeepMind's release, per task.

Read from transformers 5.x `models/perceiver/modeling_perceiver.py`; each entry's effect is
measured by `python -m converters.transformers.divergence` (see the README's table).
"""

from __future__ import annotations

from dataclasses import dataclass

from .config_map import ARCHITECTURES

CONV = ("PerceiverForImageClassificationConvProcessing",)
LEARNED = ("PerceiverForImageClassificationLearned",)


@dataclass(frozen=True)
class Divergence:
    key: str
    tasks: tuple[str, ...]
    title: str
    cause: str
    exported: str  # what an exported model directory does about it
    classes: tuple[str, ...] = ()  # the transformers classes it concerns, where not every class of its tasks


ALL = ("language", "imagenet", "optical_flow", "video_autoencoding")

CATALOG = (
    Divergence("gelu", ALL, "exact (erf) GELU instead of the tanh GELU",
               "PerceiverMLP applies ACT2FN[config.hidden_act]; the deepmind/* configs say \"gelu\" (erf), "
               "upstream's jax.nn.gelu defaults to the tanh approximation",
               "fixed: exported configs set hidden_act=\"gelu_pytorch_tanh\" (bit-equal to our GELU)"),
    Divergence("query_mask", ("language",), "language decoder ignores the padding mask",
               "PerceiverBasicDecoder.forward calls its cross-attention with inputs_mask=None and the "
               "query mask as an additive mask on the queries' own rows; upstream masks the queries "
               "with the input mask and zeroes fully masked rows",
               "remains: only logits at padded positions differ"),
    Divergence("tokenizer", ("language",), "PerceiverTokenizer adds [CLS] and [SEP]",
               "tokenization_perceiver.py builds inputs as [CLS] + bytes + [SEP]; upstream's bytes "
               "tokenizer adds nothing, so every position shifts by one",
               "remains: feed byte ids + 6 without special tokens (add_special_tokens=False)"),
    Divergence("conv_padding", ("imagenet",), "conv stem pads 3/3 and max-pools without padding (55x55 tokens)",
               "Conv2dSamePadding pads (3, 3) where TF SAME pads (2, 3) for a 7x7/2 conv on even sizes; "
               "Conv2DDownsample's MaxPool2d(3, 2) has no padding: 224 -> 55x55 = 3025 tokens, upstream "
               "56x56 = 3136, with Fourier features spread over 55 points of max_resolution 56",
               "remains (transformers' code)", CONV),
    Divergence("conv_kernel", ("imagenet",), "conv stem kernel spatially transposed",
               "the Hub's kernel is Haiku's HWIO kernel with every axis reversed, [O, I, W, H]; "
               "transformers convolves with it as [O, I, H, W]",
               "kept as on the Hub (so exported and deepmind/* files import alike); importing swaps it back", CONV),
    Divergence("query_residual", ("imagenet",), "learned-position classifier adds a query residual",
               "PerceiverForImageClassificationLearned builds its PerceiverClassificationDecoder with "
               "use_query_residual=True; the upstream colab builds it with False",
               "remains (transformers' code)", LEARNED),
    Divergence("flow_scale", ("optical_flow",), "flow not multiplied by upstream's FLOW_SCALE_FACTOR (20)",
               "PerceiverOpticalFlowDecoder divides by rescale_factor=100 and returns; the colab then "
               "multiplies by 20. Callers also extract 3x3 patches themselves, and there is no tiling",
               "remains: multiply transformers' output by 20"),
    Divergence("video_positions", ("video_autoencoding",), "video image Fourier features span the frame size",
               "PerceiverForMultimodalAutoencoding builds the image Fourier features with max_resolution "
               "(num_frames, image_size, image_size), (16, 224, 224) with image_size = the frame size; the "
               "colab uses (16, 56, 56), the "
               "patch grid; the class reads config.image_size only for this resolution",
               "fixed: exported configs set image_size to the colab's resolution (output_shape keeps the "
               "frame size)"),
    Divergence("video_encoder_per_chunk", ("video_autoencoding",), "encoder re-run for every decoding chunk",
               "PerceiverModel.forward encodes and decodes in one call, so decoding in chunks re-encodes "
               "the clip each time; subsampled output sizes are hard-coded (label: 1)",
               "remains: costs time, not accuracy"),
    Divergence("image_preprocessing", ("imagenet",), "image preprocessing (Pillow's bicubic, crop offset)",
               "PerceiverImageProcessor resizes with Pillow's bicubic (a = -0.5, antialiased when shrinking) and "
               "rounds the centred crop's offset down; the colab resizes with OpenCV's cubic kernel (a = -0.75, "
               "no antialiasing) and rounds the offset up (one pixel apart where the margin is odd)",
               "preprocessor_config.json sets the colab's crop (size / (size + 32) of the shorter side), input "
               "size and normalisation; the resampling and offset remain: up to 3 grey levels on smooth images "
               "(none where the crop is already the input size). For upstream's pixels, preprocess with "
               "perceiver_torch.imagenet_transform and pass pixel_values"),
)


def for_task(task: str) -> list[Divergence]:
    """Every divergence of any of `task`'s transformers classes."""
    return [d for d in CATALOG if task in d.tasks]


def for_class(architecture: str) -> list[Divergence]:
    """The divergences of the transformers class `architecture` (one of config_map.ARCHITECTURES)."""
    task = ARCHITECTURES[architecture][0]
    return [d for d in for_task(task) if not d.classes or architecture in d.classes]
