"""Optical flow between two frames, built as the upstream optical-flow colab builds it."""

from __future__ import annotations

import torch

from ..flow_tiling import stitch_tiles
from ..layers.encoder import PerceiverEncoder
from ..layers.flow import FlowDecoder, patches_for_flow
from ..layers.image import ImagePreprocessor
from ..layers.perceiver import Perceiver
from .inference_helpers import inference_helper
from .input_checks import check_batch, check_range, describe
from .owned_config import check_own_config, own_config
from .pretrained import PretrainedMixin

# The colab scales pixels to [-1, 1] (x / 255 * 2 - 1). A resampled frame can overshoot that a little;
# values beyond +-1.5 mean the scaling was skipped (0-255 frames) and the flow would be garbage.
PIXEL_LIMIT = 1.5

PATCH_CHANNELS = 64  # upstream ImagePreprocessor's default num_channels for its patches_linear layer


def _image_preprocessor(train_size: tuple[int, int], num_bands: int) -> ImagePreprocessor:
    fourier = dict(num_bands=num_bands, max_resolution=train_size, sine_only=False, concat_pos=True)
    return ImagePreprocessor(
        prep_type="patches", spatial_downsample=1, temporal_downsample=2, conv_after_patching=True,
        num_channels=PATCH_CHANNELS, position_encoding_type="fourier", n_extra_pos_mlp=0,
        fourier_position_encoding_kwargs=fourier, input_shape=(2, *train_size, 27),
    )


class PerceiverForOpticalFlow(PretrainedMixin, Perceiver):
    """Two frames [B, 3, H, W] (pixels in [-1, 1], H x W = train_size) -> flow [B, 2, H, W] in pixels.

    `config` is the golden/released `config.json` layout: `train_size`
    [H, W], `num_bands`, `flow_scale_factor`, `rescale_factor`, upstream
    `encoder` kwargs and optionally `decoder` kwargs for the flow decoder's
    cross-attention (`num_heads`, `qk_channels`, `v_channels`). Every pixel's
    3x3 neighbourhood in both frames (`patches_for_flow`) is projected and
    given Fourier position features; those same per-pixel features query the
    latents. Flow channels are (u, v) = (horizontal, vertical) displacement.
    `estimate_flow` handles larger frames by tiling.
    """

    task = "optical_flow"
    # The parts' own types (nn.Module types a submodule attribute as Tensor | Module); config: own_config's.
    config: dict
    input_preprocessor: ImagePreprocessor
    encoder: PerceiverEncoder
    decoder: FlowDecoder

    def __init__(self, config: dict):
        check_own_config(self.task, config, type(self).__name__)
        train_size = tuple(int(d) for d in config["train_size"])
        if len(train_size) != 2 or min(train_size) < 1:
            raise ValueError(f"train_size must be [height, width]; got {config['train_size']}.")
        preprocessor = _image_preprocessor(train_size, config["num_bands"])
        encoder = PerceiverEncoder(input_channels=preprocessor.num_channels, **config["encoder"])
        super().__init__(
            input_preprocessor=preprocessor,
            encoder=encoder,
            decoder=FlowDecoder(
                train_size, query_channels=preprocessor.num_channels, num_z_channels=encoder.latents.num_channels,
                output_num_channels=2, rescale_factor=config["rescale_factor"], use_query_residual=False,
                **config.get("decoder", {}),
            ),
        )
        own_config(self, config)
        self.train_size = train_size
        self.flow_scale_factor = float(config["flow_scale_factor"])

    def _check_frames(self, image1: torch.Tensor, image2: torch.Tensor, *, exact_size: bool) -> None:
        """Layout always; pixel scale in eager on CPU, or on any device for `estimate_flow` (a helper)."""
        where = f"PerceiverForOpticalFlow.{'forward' if exact_size else 'estimate_flow'}"
        for name, image in (("image1", image1), ("image2", image2)):
            if not isinstance(image, torch.Tensor) or not image.is_floating_point():
                raise TypeError(f"{where}: {name} must be a floating-point tensor with pixels in [-1, 1]; got "
                                f"{describe(image)}.")
            if image.ndim != 4 or image.shape[1] != 3:
                hint = " (it looks channels-last; permute to [B, 3, H, W])" if image.ndim == 4 and \
                    image.shape[-1] == 3 else ""
                raise ValueError(f"{where}: {name} must be channels-first RGB [B, 3, H, W]; got shape "
                                 f"{tuple(image.shape)}{hint}.")
        if image1.shape != image2.shape:
            raise ValueError(f"{where}: image1 and image2 must have the same shape; got {tuple(image1.shape)} and "
                             f"{tuple(image2.shape)}.")
        check_batch(where, "image1", image1, "[B, 3, H, W]")
        size, (th, tw) = tuple(image1.shape[-2:]), self.train_size
        if exact_size and size != self.train_size:
            raise ValueError(f"{where}: forward takes frames of the training size {th}x{tw}; got "
                             f"{size[0]}x{size[1]}. Use estimate_flow for larger frames.")
        if size[0] < th or size[1] < tw:
            raise ValueError(f"{where}: frames of {size[0]}x{size[1]} are smaller than the training size "
                             f"{th}x{tw}; pad or resize them to at least that size.")
        for name, image in (("image1", image1), ("image2", image2)):
            check_range(where, name, image, -PIXEL_LIMIT, PIXEL_LIMIT,
                        "must hold pixels scaled to [-1, 1] as the colab does (x / 255 * 2 - 1)",
                        any_device=not exact_size)

    def forward(  # type: ignore[override]  # the task's own inputs
        self, image1: torch.Tensor, image2: torch.Tensor
    ) -> torch.Tensor:
        """image1, image2 [B, 3, H, W] at train_size -> flow [B, 2, H, W] in pixels (upstream x flow_scale_factor)."""
        self._check_frames(image1, image2, exact_size=True)
        patches = patches_for_flow(torch.stack([image1, image2], dim=1))  # [B, 2, H, W, 27], upstream layout
        flow = super().forward(patches)  # [B, H, W, 2]
        return (flow * self.flow_scale_factor).permute(0, 3, 1, 2)

    @inference_helper
    def estimate_flow(self, image1: torch.Tensor, image2: torch.Tensor, *, min_overlap: int | None = None,
                      tile_batch_size: int = 8) -> torch.Tensor:
        """Flow [B, 2, H, W] for frames [B, 3, H, W] (or [3, H, W]) of any size >= train_size.

        As the upstream colab: overlapping train_size tiles (stride
        train_size - min_overlap, the last flush with the frame edge),
        blended with weights falling off towards each tile's edges. Tiles go
        through the model `tile_batch_size` at a time. `min_overlap` defaults
        to the colab's 20 pixels (a quarter of the tile for tiles of 20 or less).
        """
        ranks = tuple(getattr(image, "ndim", None) for image in (image1, image2))
        if 3 in ranks and ranks != (3, 3):  # one unbatched frame: the other is not its pair, whatever it is
            raise ValueError(f"PerceiverForOpticalFlow.estimate_flow: image1 and image2 must both be channels-first "
                             f"RGB [B, 3, H, W] (or both [3, H, W]); got {describe(image1)} and {describe(image2)}.")
        unbatched = ranks == (3, 3)
        if unbatched:
            image1, image2 = image1[None], image2[None]
        self._check_frames(image1, image2, exact_size=False)
        flow = stitch_tiles(image1, image2, self, self.train_size, min_overlap, tile_batch_size)
        return flow[0] if unbatched else flow
