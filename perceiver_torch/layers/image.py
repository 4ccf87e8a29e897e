"""Image and video input: upstream `ImagePreprocessor` (conv stem, 1x1 conv, pixels, patches) + positions.

Inputs are upstream's channels-last layout, [B, H, W, C] images or
[B, T, H, W, C] videos; the public task models move channels last before
calling this. Convolutions run channels-first internally, with TensorFlow's
"SAME" padding computed from the input size as Haiku does (for a 224-pixel
side and a 7x7 stride-2 kernel: 2 before, 3 after; the 3x3 stride-2 max pool
then pads 0 before and 1 after with -inf, giving 56x56 from 112x112).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .position_encoding import PositionEncoding, build_position_encoding
from .precision import InputLinear

PREP_TYPES = ("conv", "conv1x1", "pixels", "patches")


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF/Haiku 'SAME' padding (before, after) of one spatial side: output ceil(size / stride)."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _pad_same(x: torch.Tensor, kernel: int, stride: int, value: float = 0.0) -> torch.Tensor:
    """Pad a channels-first [N, C, H, W] tensor for a 'SAME' window (the extra pixel goes after)."""
    top, bottom = same_padding(x.shape[-2], kernel, stride)
    left, right = same_padding(x.shape[-1], kernel, stride)
    if top == bottom == left == right == 0:
        return x
    return F.pad(x, (left, right, top, bottom), value=value)


def space_to_depth(x: torch.Tensor, temporal_block_size: int = 1, spatial_block_size: int = 1) -> torch.Tensor:
    """Upstream's space-to-depth on channels-last input.

    [B, H, W, C] -> [B, H/s, W/s, s*s*C] and [B, T, H, W, C] ->
    [B, T/t, H/s, W/s, t*s*s*C], the new channels ordered (dt, dh, dw, c)
    as upstream's einops pattern orders them.
    """
    s, t = spatial_block_size, temporal_block_size
    if x.ndim == 4:
        b, h, w, c = x.shape
        if h % s or w % s:
            raise ValueError(f"image size {h}x{w} is not divisible by spatial_downsample={s}.")
        x = x.reshape(b, h // s, s, w // s, s, c).permute(0, 1, 3, 2, 4, 5)
        return x.reshape(b, h // s, w // s, s * s * c)
    if x.ndim == 5:
        b, n, h, w, c = x.shape
        if n % t or h % s or w % s:
            raise ValueError(f"video of {n} frames of {h}x{w} is not divisible by temporal_downsample={t} "
                             f"and spatial_downsample={s}.")
        x = x.reshape(b, n // t, t, h // s, s, w // s, s, c).permute(0, 1, 3, 5, 2, 4, 6, 7)
        return x.reshape(b, n // t, h // s, w // s, t * s * s * c)
    raise ValueError(f"space_to_depth takes [B, H, W, C] or [B, T, H, W, C]; got {tuple(x.shape)}.")


class BatchNorm(nn.Module):
    """Haiku `BatchNorm` over the channel axis of [N, C, H, W], its moving averages as buffers.

    Evaluation normalises with `running_mean` / `running_var` (Haiku's
    `mean_ema` / `var_ema` averages). Training normalises with the batch's
    statistics and updates the buffers PyTorch-style (momentum
    1 - decay_rate); Haiku's zero-debiased EMA bookkeeping (`hidden`,
    `counter`) is not reproduced, as only its `average` matters at inference.
    """

    running_mean: torch.Tensor  # buffers, registered in __init__
    running_var: torch.Tensor

    def __init__(self, num_features: int, decay_rate: float = 0.9, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self.decay_rate = decay_rate
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                            training=self.training, momentum=1.0 - self.decay_rate, eps=self.eps)


class Conv2DDownsample(nn.Module):
    """Upstream `Conv2DDownsample`: per layer a 7x7 stride-2 conv (no bias), batch norm, ReLU, 3x3 stride-2
    max pool, all 'SAME'-padded; each layer downsamples 4x. Channels-first [N, C, H, W] in and out."""

    def __init__(self, in_channels: int, num_layers: int = 1, num_channels: int = 64, use_batchnorm: bool = True):
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv2d(in_channels if i == 0 else num_channels, num_channels, 7, stride=2, bias=False)
            for i in range(num_layers)
        )
        self.batchnorms = nn.ModuleList(BatchNorm(num_channels) for _ in range(num_layers)) if use_batchnorm \
            else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, conv in enumerate(self.convs):
            x = conv(_pad_same(x, 7, 2))
            if self.batchnorms is not None:
                x = self.batchnorms[i](x)
            x = torch.relu(x)
            x = F.max_pool2d(_pad_same(x, 3, 2, value=-math.inf), 3, stride=2)
        return x


def conv_stem_layers(spatial_downsample: int, temporal_downsample: int = 1) -> int:
    """Layers of the 'conv' stem for `spatial_downsample` (each downsamples 4x), as upstream derives them."""
    layers = math.log(spatial_downsample, 4)
    if layers != round(layers) or temporal_downsample != 1:
        raise ValueError("prep_type='conv' needs spatial_downsample a power of 4 and temporal_downsample 1; "
                         f"got {spatial_downsample} and {temporal_downsample}.")
    return round(layers)


def _channels_first_2d(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Apply a channels-first 2D module to channels-last [B, H, W, C] or [B, T, H, W, C] (frames batched)."""
    lead = x.shape[:-3]
    frames = x.reshape(-1, *x.shape[-3:]).permute(0, 3, 1, 2)
    out = module(frames).permute(0, 2, 3, 1)
    return out.reshape(*lead, *out.shape[1:])


def _to_weight_dtype(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`x` in the dtype of `module`'s parameters (an input meeting the first layer: float32 pixels into a
    bfloat16 model); unchanged for a module without parameters."""
    weight = next(module.parameters(), None)
    return x if weight is None else x.to(weight.dtype)


class ImagePreprocessor(nn.Module):
    """Upstream `ImagePreprocessor`: featurise images or videos, flatten, add position features.

    Takes upstream's constructor arguments (`prep_type` 'conv', 'conv1x1',
    'pixels' or 'patches'; `spatial_downsample`, `temporal_downsample`,
    `position_encoding_type` 'trainable' or 'fourier', `n_extra_pos_mlp`,
    `num_channels` (the conv / patch-projection width), `conv_after_patching`,
    `conv2d_use_batchnorm`, `concat_or_add_pos` 'concat' or 'add', and the
    position-encoding kwargs such as `project_pos_dim`,
    `trainable_position_encoding_kwargs`, `fourier_position_encoding_kwargs`).

    `input_shape` is one example's channels-last shape, (H, W, C) or
    (T, H, W, C). Upstream sizes layers lazily from the first input; here a
    trainable or projected position encoding and `n_extra_pos_mlp` need
    `input_shape` up front, and with it inputs of another shape are refused.
    Without it, Fourier features follow each input's size and `in_channels`
    (default 3) gives the input channels of the conv / patch layers.

    `num_channels` (the attribute) is the width of the returned inputs.
    Returns `(inputs_with_pos [B, N, C], None, inputs_without_pos [B, N, C'])`.
    """

    def __init__(
        self,
        prep_type: str = "conv",
        spatial_downsample: int = 4,
        temporal_downsample: int = 1,
        position_encoding_type: str = "fourier",
        n_extra_pos_mlp: int = 0,
        num_channels: int = 64,
        conv_after_patching: bool = False,
        conv2d_use_batchnorm: bool = True,
        concat_or_add_pos: str = "concat",
        input_shape: Sequence[int] | None = None,
        in_channels: int = 3,
        **position_encoding_kwargs,
    ):
        super().__init__()
        if prep_type not in PREP_TYPES:
            raise ValueError(f"Invalid prep_type {prep_type!r}; expected one of {PREP_TYPES}.")
        if concat_or_add_pos not in ("concat", "add"):
            raise ValueError(f"Invalid value {concat_or_add_pos!r} for concat_or_add_pos; expected 'concat' or 'add'.")
        self.input_shape = tuple(int(d) for d in input_shape) if input_shape is not None else None
        if self.input_shape is not None:
            if len(self.input_shape) not in (3, 4):
                raise ValueError(f"input_shape must be (H, W, C) or (T, H, W, C); got {self.input_shape}.")
            in_channels = self.input_shape[-1]
        self.prep_type = prep_type
        self.in_channels = in_channels
        self.spatial_downsample = spatial_downsample
        self.temporal_downsample = temporal_downsample
        self.concat_or_add_pos = concat_or_add_pos
        self.conv_after_patching = conv_after_patching
        self._position_encoding_type = position_encoding_type
        self._position_encoding_kwargs = position_encoding_kwargs

        self.convnet = self.convnet_1x1 = self.patches_linear = None
        if prep_type == "conv":
            layers = conv_stem_layers(spatial_downsample, temporal_downsample)
            self.convnet = Conv2DDownsample(in_channels, layers, num_channels, conv2d_use_batchnorm)
            feature_channels = num_channels if layers else in_channels  # spatial_downsample=1: no layers
        elif prep_type == "conv1x1":
            if temporal_downsample != 1:
                raise ValueError("prep_type='conv1x1' does not downsample in time: temporal_downsample must be 1.")
            self.convnet_1x1 = nn.Conv2d(in_channels, num_channels, 1, stride=spatial_downsample)
            feature_channels = num_channels
        elif prep_type == "patches":
            # Upstream's block size along time only applies to videos.
            time_block = temporal_downsample if self.input_shape is None or len(self.input_shape) == 4 else 1
            feature_channels = time_block * spatial_downsample ** 2 * in_channels
            if conv_after_patching:
                self.patches_linear = InputLinear(feature_channels, num_channels)
                feature_channels = num_channels
        else:  # pixels
            feature_channels = in_channels
        self.feature_channels = feature_channels

        has_params = position_encoding_type != "fourier" or position_encoding_kwargs.get("project_pos_dim", -1) > 0
        if (has_params or n_extra_pos_mlp) and self.input_shape is None:
            raise ValueError(f"position_encoding_type={position_encoding_type!r} (or a projected encoding, or "
                             "n_extra_pos_mlp) has parameters sized by the input: pass input_shape.")
        self.index_dims = self._index_dims(self.input_shape) if self.input_shape is not None else None
        self.position_encoding = self._build_positions(self.index_dims) if self.index_dims is not None else None
        # Without input_shape the encoding is a parameter-free Fourier one, rebuilt per input in forward;
        # its width is taken from a stand-in for a 2-D grid.
        probe = self.position_encoding if self.position_encoding is not None else self._build_positions((1, 1))
        pos_channels = probe.num_channels
        self.extra_pos_mlp = nn.ModuleList(nn.Linear(pos_channels, pos_channels) for _ in range(n_extra_pos_mlp))
        if concat_or_add_pos == "add" and pos_channels != feature_channels:
            raise ValueError(f"concat_or_add_pos='add' needs {pos_channels} position channels to equal the "
                             f"{feature_channels} feature channels.")
        self._pos_channels = pos_channels

    @property
    def num_channels(self) -> int:
        return self.feature_channels + (self._pos_channels if self.concat_or_add_pos == "concat" else 0)

    def _build_positions(self, index_dims: Sequence[int]) -> PositionEncoding:
        return build_position_encoding(self._position_encoding_type, tuple(index_dims),
                                       **self._position_encoding_kwargs)

    def _index_dims(self, input_shape: Sequence[int]) -> tuple[int, ...]:
        """Index dims of the featurised input for one example of `input_shape` (what `featurize` gives)."""
        *time, height, width, _ = input_shape
        s, t = self.spatial_downsample, self.temporal_downsample

        def ceil_div(a: int, b: int) -> int:
            return -(-a // b)

        if self.prep_type == "conv":
            assert self.convnet is not None  # built for prep_type 'conv', before this is called
            for _ in self.convnet.convs:  # 'SAME' conv then 'SAME' pool, each stride 2
                height, width = ceil_div(ceil_div(height, 2), 2), ceil_div(ceil_div(width, 2), 2)
        elif self.prep_type == "patches":
            if height % s or width % s or (time and time[0] % t):
                raise ValueError(f"input_shape {tuple(input_shape)} is not divisible by spatial_downsample={s}"
                                 f"{f' and temporal_downsample={t}' if time else ''}.")
            height, width = height // s, width // s
            time = [time[0] // t] if time and time[0] // t != 1 else []
        else:  # conv1x1 and pixels keep every s-th pixel (and every t-th frame for pixels)
            height, width = ceil_div(height, s), ceil_div(width, s)
            if time and self.prep_type == "pixels":
                time = [ceil_div(time[0], t)]
        return (*time, height, width)

    def featurize(self, inputs: torch.Tensor) -> torch.Tensor:
        """Channels-last images/videos -> channels-last features (before flattening and positions)."""
        if inputs.ndim not in (4, 5):
            raise ValueError(f"ImagePreprocessor takes channels-last [B, H, W, C] images or [B, T, H, W, C] "
                             f"videos; got {tuple(inputs.shape)}.")
        s, t = self.spatial_downsample, self.temporal_downsample
        if self.prep_type == "conv":
            assert self.convnet is not None  # built for prep_type 'conv'
            return _channels_first_2d(self.convnet, _to_weight_dtype(self.convnet, inputs))
        if self.prep_type == "conv1x1":
            # A 1x1 convolution is a linear map of each kept pixel's channels: applied channels-last, its output
            # needs no permute back (a copy of the whole [B, H, W, C] feature map: 42 of 1,845 ms, ImageNet).
            conv, x = self.convnet_1x1, inputs[..., ::s, ::s, :]
            assert conv is not None  # built for prep_type 'conv1x1'
            return F.linear(_to_weight_dtype(conv, x), conv.weight.flatten(1), conv.bias)
        if self.prep_type == "patches":
            x = space_to_depth(inputs, temporal_block_size=t, spatial_block_size=s)
            if x.ndim == 5 and x.shape[1] == 1:
                x = x.squeeze(1)  # one time step left (optical flow's frame pair)
            return self.patches_linear(x) if self.patches_linear is not None else x
        if inputs.ndim == 4:  # pixels: the crudest downsampling, as upstream
            return inputs[:, ::s, ::s]
        return inputs[:, ::t, ::s, ::s]

    def _check(self, inputs: torch.Tensor) -> None:
        if self.input_shape is not None and tuple(inputs.shape[1:]) != self.input_shape:
            raise ValueError(f"ImagePreprocessor was built for channels-last inputs [B, "
                             f"{', '.join(map(str, self.input_shape))}]; got {tuple(inputs.shape)}.")
        if inputs.ndim in (4, 5) and inputs.shape[-1] != self.in_channels:
            raise ValueError(f"expected {self.in_channels} input channels last (channels-last layout); "
                             f"got {tuple(inputs.shape)}.")

    def forward(self, inputs: torch.Tensor, pos: torch.Tensor | None = None):
        self._check(inputs)
        features = self.featurize(inputs)
        batch_size, index_dims = features.shape[0], tuple(features.shape[1:-1])
        features = features.reshape(batch_size, math.prod(index_dims), features.shape[-1])
        encoding = self.position_encoding if self.position_encoding is not None else self._build_positions(index_dims)
        # Position features are the same for every example: computed once, broadcast over the batch.
        pos_batch = batch_size if pos is not None else 1
        pos_enc = encoding(pos_batch, pos, dtype=features.dtype, device=features.device)
        for i, layer in enumerate(self.extra_pos_mlp):
            pos_enc = pos_enc + layer(pos_enc)
            if i < len(self.extra_pos_mlp) - 1:
                pos_enc = torch.relu(pos_enc)
        pos_enc = pos_enc.to(features.dtype).expand(batch_size, -1, -1)
        if self.concat_or_add_pos == "concat":
            with_pos = torch.cat([features, pos_enc], dim=-1)
        else:
            with_pos = features + pos_enc
        return with_pos, None, features
