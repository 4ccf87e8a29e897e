"""ImageNet classification (the three released variants), built as the upstream ImageNet colab builds it."""

from __future__ import annotations

import copy
import itertools
import os
from typing import Any, overload

import numpy as np
import torch
from torch import nn

from ..config_schema import check_parameter_count, validate_config
from ..imagenet_preprocessing import imagenet_labels, imagenet_transform
from ..integers import is_int
from ..labels import names_or_indices
from ..layers import Perceiver, PerceiverEncoder
from ..layers.decoders import ClassificationDecoder
from ..layers.image import ImagePreprocessor
from ..layers.precision import FinalLinear
from .inference_helpers import inference_helper
from .input_checks import check_batch, check_count, check_flag, check_float, check_latents, check_range, check_top_k
from .named_classes import NamedClasses
from .owned_config import check_own_config, own_config
from .pretrained import PretrainedMixin

# imagenet_transform's output lies in about [-2.12, 2.64] (0 and 255 through the ImageNet mean and
# stddev), a little beyond after a float image's bicubic overshoot. Far outside means the normalisation
# was skipped: 0-255 pixels reach 255.
NORMALISED_LIMIT = 5.0


class PerceiverForImageClassification(NamedClasses, PretrainedMixin, Perceiver):
    """Images [B, 3, H, W] -> ImagePreprocessor -> encoder -> ClassificationDecoder -> logits [B, num_classes].

    `config` is the golden/released `config.json` layout: `image_size`
    [H, W], `num_classes`, and upstream `input_preprocessor`
    (`ImagePreprocessor`), `encoder` and `decoder` kwargs. The three
    released models differ in `input_preprocessor`: 'conv1x1' with a
    learned position table, 'pixels' with Fourier features, and the 'conv'
    stem (batch-norm averages as buffers) with Fourier features; and the
    learned-position one's decoder has `use_query_residual` off.
    """

    task = "imagenet"
    # The parts' own types (nn.Module types a submodule attribute as Tensor | Module); config: own_config's.
    config: dict
    input_preprocessor: ImagePreprocessor
    encoder: PerceiverEncoder
    decoder: ClassificationDecoder

    def __init__(self, config: dict):
        check_own_config(self.task, config, type(self).__name__)
        height, width = (int(s) for s in config["image_size"])
        num_classes = int(config["num_classes"])
        preprocessor = ImagePreprocessor(**config["input_preprocessor"], input_shape=(height, width, 3))
        super().__init__(
            input_preprocessor=preprocessor,
            encoder=PerceiverEncoder(input_channels=preprocessor.num_channels, **config["encoder"]),
            decoder=ClassificationDecoder(num_classes, **config["decoder"]),
        )
        own_config(self, config)
        self.image_size = (height, width)
        self.num_classes = num_classes

    def get_classifier(self) -> FinalLinear | nn.Identity:
        """The layer that gives the logits: [B, query channels] -> [B, num_classes] (timm's name).

        `nn.Identity` in a model with `num_classes` 0 (its decoder has no final projection), whose `forward`
        gives the embedding.
        """
        return nn.Identity() if self.decoder.output is None else self.decoder.output

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier by a freshly initialised one with `num_classes` outputs (timm's name).

        For fine-tuning on other classes: everything else keeps its weights, `config["num_classes"]`
        follows (so `save_model` writes a file `load_model` rebuilds), and the new layer has the
        device and dtype of the model's other weights. `class_names` are dropped (they named the old
        classifier's classes), so `labels` become the class indices unless `num_classes` is 1000. As
        in timm, 0 removes the classifier: `forward` then gives the image embedding
        `[B, head_hidden_size]` (`forward_head(..., pre_logits=True)`'s).
        """
        if is_int(num_classes):
            num_classes = int(num_classes)  # a NumPy integer, say; anything else the schema names
        source = f"reset_classifier({num_classes!r}): the model's config with it"
        config = copy.deepcopy(self.config)
        config["num_classes"] = num_classes
        validate_config(self.task, config, source=source)
        old, in_features = self.get_classifier(), self.head_hidden_size
        # The bound load_model applies, checked before the new layer is allocated.
        others = sum(p.numel() for p in self.parameters()) - sum(p.numel() for p in old.parameters())
        check_parameter_count(others + (in_features + 1) * num_classes, source)
        # The old classifier's device and dtype, or (none to copy) those of the attention that feeds it.
        like = next(itertools.chain(old.parameters(), self.decoder.parameters()))
        self.decoder.output = (FinalLinear(in_features, num_classes, device=like.device, dtype=like.dtype)
                               .train(self.decoder.training) if num_classes else None)
        self.decoder.num_classes = self.num_classes = num_classes
        self.class_names = None
        own_config(self, config)

    @property
    def labels(self) -> tuple[str, ...]:
        """Class names in logit order: the model's `class_names` if it has them, else the ImageNet names for 1000
        classes, else the class indices."""
        return names_or_indices(imagenet_labels, 1000, self.num_classes, self.class_names)

    def _check(self, images: torch.Tensor) -> None:
        height, width = self.image_size
        where = "PerceiverForImageClassification.forward"
        expected = f"channels-first images [B, 3, {height}, {width}]"
        check_float(where, "images", images, f"a floating-point tensor of {expected}")
        if images.ndim != 4:
            raise ValueError(f"{where}: expected {expected}; got a {images.ndim}-D tensor {tuple(images.shape)}.")
        if images.shape[1] != 3:
            hint = " (this looks channels-last: use images.permute(0, 3, 1, 2))" if images.shape[-1] == 3 else ""
            raise ValueError(f"{where}: expected {expected}; got {images.shape[1]} channels in "
                             f"{tuple(images.shape)}{hint}.")
        if tuple(images.shape[2:]) != (height, width):
            raise ValueError(f"{where}: expected {expected}; got {tuple(images.shape)} (resize/crop first, e.g. "
                             "with perceiver_torch.imagenet_preprocessing.imagenet_transform).")
        check_batch(where, "images", images, expected)
        check_range(where, "images", images, -NORMALISED_LIMIT, NORMALISED_LIMIT,
                    "must be normalised as imagenet_transform does (about [-2.1, 2.6]; 0-255 pixels are not)")

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # type: ignore[override]  # the task's own inputs
        """images [B, 3, H, W] (normalised as `imagenet_transform` does) -> logits [B, num_classes]."""
        return self.forward_head(self.forward_features(images))

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, 3, H, W] -> the encoder's latents [B, num_latents, num_features] (timm's name).

        `forward_head` turns them into logits; `forward` is the two in turn.
        """
        self._check(images)
        latents, *_ = self.encode(images.permute(0, 2, 3, 1))  # upstream's channels-last layout
        return latents

    def forward_head(self, latents: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """latents [B, num_latents, num_features] -> logits [B, num_classes] (timm's name).

        With `pre_logits=True`, the classifier's input instead: the decoder's one query after it attends to
        the latents, [B, head_hidden_size], an image embedding.
        """
        where = "PerceiverForImageClassification.forward_head"
        check_flag(where, "pre_logits", pre_logits)
        check_latents(where, latents, self._latent_shape)
        # Upstream takes the query's dtype from the preprocessed inputs; the latents' (the residual stream's,
        # precision.py) gives the same logits, measured bit for bit in float32, bf16 and under autocast.
        query = self.decoder.decoder_query(latents)
        embedding = self.decoder.attend(query, latents)[:, 0]
        return embedding if pre_logits else self.get_classifier()(embedding)

    @property
    def num_features(self) -> int:
        """Channels of each latent `forward_features` returns (timm's name)."""
        return self._latent_shape[1]

    @property
    def head_hidden_size(self) -> int:
        """Width of the embedding `forward_head(..., pre_logits=True)` returns (timm's name)."""
        return self.decoder.query_channels

    @property
    def _latent_shape(self) -> tuple[int, int]:
        num_latents, channels = self.encoder.latents.embeddings.shape
        return num_latents, channels

    def transform(self, image) -> torch.Tensor:
        """The colab's preprocessing of one image (path, PIL image or [H, W, 3] array) -> [3, H, W]."""
        return imagenet_transform(image, self.image_size)

    @overload
    def classify(self, image: str | os.PathLike | np.ndarray, k: int = ..., *, batch_size: int = ...
                 ) -> list[tuple[str, float]]: ...

    @overload  # a batch of paths or arrays: a list of results, in order
    def classify(self, image: list[str | os.PathLike | np.ndarray] | tuple[str | os.PathLike | np.ndarray, ...],
                 k: int = ..., *, batch_size: int = ...) -> list[list[tuple[str, float]]]: ...

    @overload  # a PIL image, or another list or tuple: of images (a list of results) or of pixel rows (one result)
    def classify(self, image: Any, k: int = ..., *, batch_size: int = ...
                 ) -> list[tuple[str, float]] | list[list[tuple[str, float]]]: ...

    @inference_helper
    def classify(self, image: Any, k: int = 5, *, batch_size: int = 8
                 ) -> list[tuple[str, float]] | list[list[tuple[str, float]]]:
        """Top-k (label, probability) for one image: a path, a PIL image or an RGB array [H, W, 3] (0-255).

        A list or tuple of such images gives a list of those results, in order, `batch_size` images a forward.
        """
        where = "PerceiverForImageClassification.classify"
        if self.num_classes == 0:
            raise ValueError(f"{where}: this model has no classifier (num_classes 0, reset_classifier(0)); its "
                             "forward gives image embeddings [B, head_hidden_size], not class scores.")
        k = check_top_k(where, k, self.num_classes)
        batch_size = check_count(where, "batch_size", batch_size)
        single = not _is_image_batch(image)
        images = [image] if single else list(image)
        weight = next(self.parameters())
        names = self.labels
        results: list[list[tuple[str, float]]] = []
        for start in range(0, len(images), batch_size):
            x = torch.stack([self._transform_for(where, single, i, images[i])
                             for i in range(start, min(start + batch_size, len(images)))])
            probs, idx = self(x.to(device=weight.device, dtype=weight.dtype)).softmax(-1).topk(k)
            results.extend([(names[i], float(p)) for p, i in zip(row_p, row_i, strict=True)]
                           for row_p, row_i in zip(probs.tolist(), idx.tolist(), strict=True))
        return results[0] if single else results

    def _transform_for(self, where: str, single: bool, index: int, image) -> torch.Tensor:
        try:
            return self.transform(image)
        except (ValueError, TypeError, OSError) as error:
            if not single:  # which image of the batch
                error.add_note(f"{where}: the image at index {index} of the batch")
            raise


def _is_image_batch(value) -> bool:
    """A list or tuple of images (paths, PIL images, arrays), not one image given as nested lists of pixels."""
    return isinstance(value, (list, tuple)) and all(
        isinstance(item, (str, bytes, os.PathLike, np.ndarray)) or hasattr(item, "convert") for item in value)
