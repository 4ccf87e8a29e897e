"""Multimodal video autoencoding (Kinetics-700 video + audio + label), as the upstream video colab builds it."""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache

import torch

from ..integers import is_int
from ..labels import names_or_indices, packaged_labels
from ..layers.audio import AudioPreprocessor
from ..layers.image import ImagePreprocessor
from ..layers.multimodal import BasicVideoAutoencodingDecoder, OneHotPreprocessor, QueryGenerator
from ..layers.postprocessors import AudioPostprocessor, ClassificationPostprocessor, ProjectionPostprocessor
from .inference_helpers import inference_helper
from .input_checks import check_batch, check_float, check_indices, check_range, check_top_k, describe
from .named_classes import NamedClasses
from .owned_config import check_own_config, own_config
from .perceiver_io import PerceiverIO
from .pretrained import PretrainedMixin

# The colab's fixed choices (see parity_tests/fixtures/golden/README.md).
IMAGE_DOWNSAMPLE = 4
INPUT_PADDING = 4  # MultimodalPreprocessor(min_padding_size=4)
QUERY_PADDING = 2  # MultimodalDecoder's default min_padding_size
MASK_PROBS = {"image": 0.0, "audio": 0.0, "label": 1.0}
# The colab feeds frames scaled to [0, 1] (x / 255) and audio in [-1, 1] (int16 / 2**15); the
# golden fixture's random inputs span [-1, 1]. Beyond +-1.5 the scaling was skipped (0-255
# pixels, int16 amplitudes) and the reconstructions would be garbage.
VALUE_LIMIT = 1.5


@cache
def kinetics700_labels() -> tuple[str, ...]:
    """The 700 Kinetics-700 class names, in the order of the label logits."""
    return packaged_labels("kinetics700_labels.txt", 700)


def _fourier(num_bands: int, max_resolution) -> dict:
    return dict(num_bands=num_bands, max_resolution=tuple(max_resolution), sine_only=False, concat_pos=True)


def _image_preprocessor(num_frames: int, image_size: int, fourier: dict) -> ImagePreprocessor:
    return ImagePreprocessor(
        prep_type="patches", spatial_downsample=IMAGE_DOWNSAMPLE, temporal_downsample=1,
        position_encoding_type="fourier", n_extra_pos_mlp=0, fourier_position_encoding_kwargs=fourier,
        input_shape=(num_frames, image_size, image_size, 3),
    )


class PerceiverForMultimodalAutoencoding(NamedClasses, PretrainedMixin, PerceiverIO):
    """Video [B, F, 3, S, S] + audio [B, F * samples_per_frame, 1] (+ a masked label) -> reconstructions + logits.

    `config` is the golden/released `config.json` layout (`num_frames`,
    `image_size`, `audio_samples_per_frame`, `samples_per_patch`,
    `num_classes`, `audio_bands`, `image_bands`, `decoder_z_channels`,
    `decoder_output_channels`, `nchunks`, optionally `image_position_resolution`
    (the colab's IMG_SZ), and upstream `encoder` kwargs).
    The label input is all zeros and always replaced by its mask token, as
    in the colab, so the label logits are a prediction from video and audio.
    """

    task = "video_autoencoding"
    config: dict  # own_config's

    def __init__(self, config: dict):
        check_own_config(self.task, config, type(self).__name__)
        frames, size = config["num_frames"], config["image_size"]
        spp, num_classes = config["samples_per_patch"], config["num_classes"]
        num_samples = frames * config["audio_samples_per_frame"]
        if size % IMAGE_DOWNSAMPLE:
            raise ValueError(f"image_size ({size}) must be a multiple of {IMAGE_DOWNSAMPLE}.")
        if num_samples % spp:
            raise ValueError(f"the clip's {num_samples} audio samples are not a multiple of samples_per_patch={spp}.")
        out_channels = config["decoder_output_channels"]
        # The colab's position features use max_resolution (frames, IMG_SZ, IMG_SZ) for the image
        # and (audio samples,) for the audio, in the preprocessors and the queries alike. IMG_SZ is
        # `image_position_resolution` (56 in the released preset), else image_size.
        pos_size = config.get("image_position_resolution", size)
        image_fourier = _fourier(config["image_bands"], (frames, pos_size, pos_size))
        audio_fourier = _fourier(config["audio_bands"], (num_samples,))
        encoder = dict(config["encoder"])
        super().__init__(
            num_blocks=encoder.pop("num_blocks"),
            num_self_attends_per_block=encoder.pop("num_self_attends_per_block"),
            num_latents=encoder.pop("z_index_dim"),
            num_latent_channels=encoder.pop("num_z_channels"),
            final_project=True,
            final_project_out_channels=out_channels,
            perceiver_encoder_kwargs=encoder,
            perceiver_decoder_kwargs=dict(use_query_residual=False),
            input_preprocessors={
                "audio": AudioPreprocessor(samples_per_patch=spp, position_encoding_type="fourier",
                                           num_samples=num_samples, fourier_position_encoding_kwargs=audio_fourier),
                "image": _image_preprocessor(frames, size, image_fourier),
                "label": OneHotPreprocessor(num_classes),
            },
            output_queries={
                "audio": QueryGenerator("fourier", (num_samples // spp,),
                                        fourier_position_encoding_kwargs=audio_fourier),
                "image": BasicVideoAutoencodingDecoder(
                    (frames, size, size), "fourier", output_num_channels=out_channels, queries_only=True,
                    fourier_position_encoding_kwargs=image_fourier),
                # What upstream's ClassificationDecoder contributes here: its trainable query table.
                "label": QueryGenerator("trainable", (1,), trainable_position_encoding_kwargs=dict(
                    num_channels=config["decoder_z_channels"], init_scale=0.02)),
            },
            output_postprocessors={
                "audio": AudioPostprocessor(out_channels, samples_per_patch=spp),
                "image": ProjectionPostprocessor(out_channels, 3),
                "label": ClassificationPostprocessor(out_channels, num_classes),
            },
            output_query_padding_channels=QUERY_PADDING,
            input_padding_channels=INPUT_PADDING,
            input_mask_probs=MASK_PROBS,
        )
        own_config(self, config)
        self.num_frames, self.image_size, self.num_samples = frames, size, num_samples
        self.samples_per_patch, self.num_classes = spp, num_classes

    @property
    def num_image_points(self) -> int:
        return self.num_frames * self.image_size * self.image_size

    @property
    def num_audio_patches(self) -> int:
        return self.num_samples // self.samples_per_patch

    def _check(self, where: str, images: torch.Tensor, audio: torch.Tensor, *, any_device: bool) -> None:
        """Layout always; value scale in eager on CPU, or on any device for `autoencode` (a helper)."""
        layout = f"[B, {self.num_frames}, 3, {self.image_size}, {self.image_size}] (channels-first frames)"
        check_float(where, "images", images, f"a floating-point tensor {layout}")
        check_float(where, "audio", audio, f"a floating-point tensor [B, {self.num_samples}, 1]")
        expected = (self.num_frames, 3, self.image_size, self.image_size)
        if images.ndim != 5 or tuple(images.shape[1:]) != expected:
            raise ValueError(f"{where}: images must be {layout}; got {tuple(images.shape)}.")
        if audio.ndim != 3 or tuple(audio.shape[1:]) != (self.num_samples, 1) or audio.shape[0] != images.shape[0]:
            raise ValueError(f"{where}: audio must be [B={images.shape[0]}, {self.num_samples}, 1]; "
                             f"got {tuple(audio.shape)}.")
        check_batch(where, "images", images, layout)
        check_range(where, "images", images, -VALUE_LIMIT, VALUE_LIMIT,
                    "must hold pixels scaled as the colab does (x / 255, in [0, 1]), not 0-255", any_device=any_device)
        check_range(where, "audio", audio, -VALUE_LIMIT, VALUE_LIMIT,
                    "must hold samples in [-1, 1] (int16 audio / 2**15)", any_device=any_device)

    def _inputs(self, images: torch.Tensor, audio: torch.Tensor) -> dict[str, torch.Tensor]:
        batch = images.shape[0]
        return {
            "image": images.permute(0, 1, 3, 4, 2),  # upstream's channels-last layout
            "audio": audio,
            "label": torch.zeros(batch, self.num_classes, dtype=images.dtype, device=images.device),
        }

    def _subsampled_points(self, where: str, subsample, device: torch.device) -> dict | None:
        """Validated query indices on the model's `device` (indices given on the host or as lists are moved)."""
        if subsample is None:
            return None
        if not isinstance(subsample, Mapping):
            raise TypeError(f"{where}: subsample must be a dict {{'image': idx, 'audio': idx}} of 1-D integer "
                            f"tensors of query indices (or None); got {describe(subsample)}.")
        unknown = sorted(map(repr, set(subsample) - {"image", "audio"}))
        if unknown:
            raise ValueError(f"{where}: subsample keys must be 'image' and/or 'audio'; got unexpected "
                             f"[{', '.join(unknown)[:200]}].")
        return {name: check_indices(where, f"subsample[{name!r}]", subsample[name], limit, device)
                for name, limit in (("image", self.num_image_points), ("audio", self.num_audio_patches))
                if subsample.get(name) is not None}

    def _to_clip(self, image: torch.Tensor, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch = image.shape[0]
        image = image.reshape(batch, self.num_frames, self.image_size, self.image_size, -1).permute(0, 1, 4, 2, 3)
        return image, audio.reshape(batch, self.num_samples, 1)

    def forward(  # type: ignore[override]  # the task's own inputs
        self, images: torch.Tensor, audio: torch.Tensor, subsample: dict | None = None
    ) -> dict:
        """images [B, F, 3, S, S], audio [B, N, 1] -> {'image', 'audio', 'label'}.

        With `subsample` ({'image': idx, 'audio': idx}, LongTensors of query
        indices: flat (frame, row, column) points and audio patches), outputs
        have upstream's shapes: image [B, n_image, 3], audio
        [B, n_audio * samples_per_patch], label [B, num_classes]. Without it
        every point is decoded at once and returned in the input layout
        (image [B, F, 3, S, S], audio [B, N, 1]), its queries on upstream's
        unsubsampled grid (`linspace(-1, 1, n)`). `autoencode` decodes chunks
        of subsampled points, which upstream places at `-1 + 2 * i / n`, as the
        colab does: its reconstructions are the colab's, not this call's.
        Indices may be given on the host; they are moved to the model's device.
        """
        self._check("PerceiverForMultimodalAutoencoding.forward", images, audio, any_device=False)
        # PerceiverIO.forward checks `subsample` (this class's `_subsampled_points`) and moves it to the device.
        outputs = super().forward(self._inputs(images, audio), subsampled_output_points=subsample)
        if subsample is None:
            outputs["image"], outputs["audio"] = self._to_clip(outputs["image"], outputs["audio"])
        return outputs

    @inference_helper
    def autoencode(self, images: torch.Tensor, audio: torch.Tensor, chunks: int | None = None) -> dict:
        """Reconstruct a whole clip in `chunks` decoding chunks (default: config `nchunks`), without a graph.

        The encoder runs once; only the decoder runs per chunk (upstream's
        colab reruns the whole model per chunk; the results are the same).
        Chunk i queries image points [i*c, (i+1)*c) and audio patches alike.
        Returns image [B, F, 3, S, S], audio [B, N, 1] and the label logits
        [B, num_classes] (of the last chunk, as upstream; they do not depend
        on the chunk).
        """
        where = "PerceiverForMultimodalAutoencoding.autoencode"
        if chunks is None:
            chunks = int(self.config.get("nchunks", 1))
        if not is_int(chunks) or chunks < 1:
            raise ValueError(f"{where}: chunks must be a positive integer (or None for the config's "
                             f"nchunks={self.config.get('nchunks', 1)}); got {chunks!r}.")
        chunks = int(chunks)  # a NumPy integer, say
        if self.num_image_points % chunks or self.num_audio_patches % chunks:
            raise ValueError(f"{where}: chunks={chunks} must divide both the {self.num_image_points} image points "
                             f"and the {self.num_audio_patches} audio patches.")
        self._check(where, images, audio, any_device=True)
        z, sizes, inputs, without_pos = self.encode(self._inputs(images, audio))
        image_step, audio_step = self.num_image_points // chunks, self.num_audio_patches // chunks
        device = images.device
        image_parts, audio_parts, label = [], [], None
        for i in range(chunks):
            points = {
                "image": torch.arange(i * image_step, (i + 1) * image_step, device=device),
                "audio": torch.arange(i * audio_step, (i + 1) * audio_step, device=device),
            }
            out = self.decode(z, inputs, sizes, without_pos, points)
            image_parts.append(out["image"])
            audio_parts.append(out["audio"])
            label = out["label"]
        image, audio_out = self._to_clip(torch.cat(image_parts, dim=1), torch.cat(audio_parts, dim=1))
        return {"image": image, "audio": audio_out, "label": label}

    @property
    def labels(self) -> tuple[str, ...]:
        """Class names in logit order: the model's `class_names` if it has them, else the Kinetics-700 names for
        700 classes, else the class indices."""
        return names_or_indices(kinetics700_labels, 700, self.num_classes, self.class_names)

    def top_labels(self, logits: torch.Tensor, k: int = 5) -> list[list[tuple[str, float]]]:
        """Per example of the label logits [B, num_classes], the k most probable classes with their probabilities."""
        where = "PerceiverForMultimodalAutoencoding.top_labels"
        if (not isinstance(logits, torch.Tensor) or logits.ndim != 2 or logits.shape[1] != self.num_classes
                or not logits.is_floating_point()):
            raise ValueError(f"{where}: logits must be a floating-point tensor [B, {self.num_classes}] (the 'label' "
                             f"output); got {describe(logits)}.")
        k = check_top_k(where, k, self.num_classes)
        names = self.labels
        probs, idx = logits.softmax(-1).topk(k, dim=-1)
        return [[(names[j], float(p)) for p, j in zip(row_p, row_i, strict=True)]
                for row_p, row_i in zip(probs.tolist(), idx.tolist(), strict=True)]
