"""Input/output processors of upstream's `perceiver/io_processors.py`, same API and Haiku paths.

Upstream rearranges with einops; these reshapes/transposes do the same without that dependency.
"""

from __future__ import annotations

import functools
import math

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

from . import position_encoding

# ---------------------------------------------------------------- layout helpers


def space_to_depth(frames, temporal_block_size=1, spatial_block_size=1):
    """[B, H, W, C] -> [B, H/s, W/s, s*s*C]; [B, T, H, W, C] -> [B, T/t, H/s, W/s, t*s*s*C]."""
    s, t = spatial_block_size, temporal_block_size
    if frames.ndim == 4:
        b, h, w, c = frames.shape
        x = frames.reshape(b, h // s, s, w // s, s, c)
        return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, h // s, w // s, s * s * c)
    if frames.ndim == 5:
        b, f, h, w, c = frames.shape
        x = frames.reshape(b, f // t, t, h // s, s, w // s, s, c)
        return x.transpose(0, 1, 3, 5, 2, 4, 6, 7).reshape(b, f // t, h // s, w // s, t * s * s * c)
    raise ValueError("Frames should be of rank 4 (batch, height, width, channels)"
                     " or rank 5 (batch, time, height, width, channels)")


def reverse_space_to_depth(frames, temporal_block_size=1, spatial_block_size=1):
    """Inverse of `space_to_depth`."""
    s, t = spatial_block_size, temporal_block_size
    if frames.ndim == 4:
        b, h, w, _ = frames.shape
        x = frames.reshape(b, h, w, s, s, -1)
        return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, h * s, w * s, -1)
    if frames.ndim == 5:
        b, f, h, w, _ = frames.shape
        x = frames.reshape(b, f, h, w, t, s, s, -1)
        return x.transpose(0, 1, 4, 2, 5, 3, 6, 7).reshape(b, f * t, h * s, w * s, -1)
    raise ValueError("Frames should be of rank 4 (batch, height, width, channels)"
                     " or rank 5 (batch, time, height, width, channels)")


def extract_patches(images, sizes, strides, padding, rates):
    """tf.image.extract_patches for stride 1, rate 1, VALID padding: [B, H', W', ph * pw * C] (row, col, chan)."""
    if list(strides) != [1, 1, 1, 1] or list(rates) != [1, 1, 1, 1] or padding != "VALID":
        raise ValueError("only strides=rates=[1, 1, 1, 1] with VALID padding are supported (what flow uses).")
    if images.ndim != 4:
        raise ValueError(f"Rank of images must be 4 (got tensor of shape {images.shape})")
    ph, pw = sizes[1], sizes[2]
    b, h, w, c = images.shape
    oh, ow = h - ph + 1, w - pw + 1
    # Pure slicing, no arithmetic: bit-identical to upstream's conv_general_dilated_patches.
    windows = [images[:, dy:dy + oh, dx:dx + ow, :] for dy in range(ph) for dx in range(pw)]
    return jnp.stack(windows, axis=3).reshape(b, oh, ow, ph * pw * c)


def patches_for_flow(inputs):
    """[B, T, H, W, C] -> [B, T, H, W, 9 * C]: each pixel's zero-padded 3x3 neighbourhood, per frame."""
    def one_frame(frames):
        padded = jnp.pad(frames, [[0, 0], [1, 1], [1, 1], [0, 0]], mode="constant")
        return extract_patches(padded, sizes=[1, 3, 3, 1], strides=[1, 1, 1, 1], padding="VALID",
                               rates=[1, 1, 1, 1])
    return jax.vmap(one_frame, in_axes=1, out_axes=1)(inputs)


# ---------------------------------------------------------------- convolutional stems


class Conv2DDownsample(hk.Module):
    """`num_layers` x (7x7 stride-2 SAME conv -> batch norm -> ReLU -> 3x3 stride-2 SAME max-pool)."""

    def __init__(self, num_layers=1, num_channels=64, use_batchnorm=True, bn_config=None, name=None):
        super().__init__(name=name)
        self._num_layers = num_layers
        self._use_batchnorm = use_batchnorm
        bn_config = {"decay_rate": 0.9, "eps": 1e-5, "create_scale": True, "create_offset": True,
                     **(bn_config or {})}
        self.layers = []
        for _ in range(num_layers):
            conv = hk.Conv2D(output_channels=num_channels, kernel_shape=7, stride=2, with_bias=False,
                             padding="SAME", name="conv")
            norm = hk.BatchNorm(name="batchnorm", **bn_config) if use_batchnorm else None
            self.layers.append({"conv": conv, "batchnorm": norm})

    def __call__(self, inputs, *, is_training, test_local_stats=False):
        out = inputs
        for layer in self.layers:
            out = layer["conv"](out)
            if layer["batchnorm"] is not None:
                out = layer["batchnorm"](out, is_training, test_local_stats)
            out = jax.nn.relu(out)
            out = hk.max_pool(out, window_shape=(1, 3, 3, 1), strides=(1, 2, 2, 1), padding="SAME")
        return out


class Conv2DUpsample(hk.Module):
    """Two 4x4 stride-2 transposed convolutions (ReLU between): 4x spatial upsampling."""

    def __init__(self, n_outputs, name=None):
        super().__init__(name=name)
        self.transp_conv1 = hk.Conv2DTranspose(output_channels=n_outputs * 2, kernel_shape=4, stride=2,
                                               with_bias=True, padding="SAME", name="transp_conv_1")
        self.transp_conv2 = hk.Conv2DTranspose(output_channels=n_outputs, kernel_shape=4, stride=2,
                                               with_bias=True, padding="SAME", name="transp_conv_2")

    def __call__(self, inputs, *, is_training, test_local_stats=False):
        return self.transp_conv2(jax.nn.relu(self.transp_conv1(inputs)))


class Conv3DUpsample(hk.Module):
    """Stacked 4x4x4 transposed 3D convolutions, stride 2 in time/space for the first few layers."""

    def __init__(self, n_outputs, n_time_upsamples=2, n_space_upsamples=4, name=None):
        super().__init__(name=name)
        self._n_outputs = n_outputs
        self._n_time_upsamples = n_time_upsamples
        self._n_space_upsamples = n_space_upsamples

    def __call__(self, x, *, is_training):
        n = max(self._n_time_upsamples, self._n_space_upsamples)
        for i in range(n):
            t_stride = 2 if i < self._n_time_upsamples else 1
            s_stride = 2 if i < self._n_space_upsamples else 1
            x = hk.Conv3DTranspose(output_channels=self._n_outputs * 2 ** (n - 1 - i),
                                   stride=[t_stride, s_stride, s_stride], kernel_shape=[4, 4, 4],
                                   name=f"conv3d_transpose_{i}")(x)
            if i != n - 1:
                x = jax.nn.relu(x)
        return x


# ---------------------------------------------------------------- preprocessors


def _add_position_encoding(encoding_ctor, n_extra_pos_mlp, concat_or_add_pos, inputs, index_dims, pos,
                           reshape_to=None):
    """Shared tail of the image/audio preprocessors' `_build_network_inputs` (call it from that method)."""
    batch_size = inputs.shape[0]
    pos_enc = encoding_ctor(index_dims=index_dims)(batch_size=batch_size, pos=pos)
    for i in range(n_extra_pos_mlp):
        pos_enc += hk.Linear(pos_enc.shape[-1])(pos_enc)
        if i < n_extra_pos_mlp - 1:
            pos_enc = jax.nn.relu(pos_enc)
    if reshape_to is not None:
        pos_enc = jnp.reshape(pos_enc, [*reshape_to, -1])
    if concat_or_add_pos == "concat":
        return jnp.concatenate([inputs, pos_enc], axis=-1)
    return inputs + pos_enc


class ImagePreprocessor(hk.Module):
    """Images/videos -> features ('conv' stem, 'conv1x1', space-to-depth 'patches', or 'pixels') + positions."""

    def __init__(self, prep_type="conv", spatial_downsample=4, temporal_downsample=1,
                 position_encoding_type="fourier", n_extra_pos_mlp=0, num_channels=64, conv_after_patching=False,
                 conv2d_use_batchnorm=True, concat_or_add_pos="concat", name=None, **position_encoding_kwargs):
        super().__init__(name=name)
        if prep_type not in ("conv", "patches", "pixels", "conv1x1"):
            raise ValueError("Invalid prep_type!")
        if concat_or_add_pos not in ("concat", "add"):
            raise ValueError(f"Invalid value {concat_or_add_pos} for concat_or_add_pos.")
        self._prep_type = prep_type
        self._spatial_downsample = spatial_downsample
        self._temporal_downsample = temporal_downsample
        self._concat_or_add_pos = concat_or_add_pos
        self._conv_after_patching = conv_after_patching
        self._num_channels = num_channels
        if prep_type == "conv":
            layers = math.log(spatial_downsample, 4)
            if layers != np.round(layers) or temporal_downsample != 1:
                raise ValueError("Only powers of 4 expected for spatial and 1 expected for temporal "
                                 "downsampling with conv.")
            self.convnet = Conv2DDownsample(num_layers=int(layers), num_channels=num_channels,
                                            use_batchnorm=conv2d_use_batchnorm)
        elif prep_type == "conv1x1":
            assert temporal_downsample == 1, "conv1x1 does not downsample in time."
            self.convnet_1x1 = hk.Conv2D(num_channels, kernel_shape=[1, 1],
                                         stride=[spatial_downsample, spatial_downsample])
        # The encoding needs the feature grid's size, known only at call time.
        self._positional_encoding_ctor = functools.partial(
            position_encoding.build_position_encoding, position_encoding_type=position_encoding_type,
            **position_encoding_kwargs)
        self._n_extra_pos_mlp = n_extra_pos_mlp

    def _build_network_inputs(self, inputs, pos, network_input_is_1d=True):
        index_dims = inputs.shape[1:-1]
        if inputs.ndim > 3 and network_input_is_1d:
            inputs = jnp.reshape(inputs, [inputs.shape[0], int(np.prod(index_dims)), -1])
        with_pos = _add_position_encoding(
            self._positional_encoding_ctor, self._n_extra_pos_mlp, self._concat_or_add_pos, inputs, index_dims,
            pos, reshape_to=None if network_input_is_1d else list(inputs.shape)[:-1])
        return with_pos, inputs

    def __call__(self, inputs, *, is_training, pos=None, network_input_is_1d=True):
        if self._prep_type == "conv":
            conv = self.convnet
            if inputs.ndim == 5:
                conv = hk.BatchApply(conv)
            inputs = conv(inputs, is_training=is_training)
        elif self._prep_type == "conv1x1":
            conv = self.convnet_1x1
            if inputs.ndim == 5:
                conv = hk.BatchApply(conv)
            inputs = conv(inputs)
        elif self._prep_type == "patches":
            inputs = space_to_depth(inputs, temporal_block_size=self._temporal_downsample,
                                    spatial_block_size=self._spatial_downsample)
            if inputs.ndim == 5 and inputs.shape[1] == 1:
                inputs = jnp.squeeze(inputs, axis=1)  # flow: the two frames became one
            if self._conv_after_patching:
                inputs = hk.Linear(self._num_channels, name="patches_linear")(inputs)
        elif self._prep_type == "pixels":
            s, t = self._spatial_downsample, self._temporal_downsample
            if inputs.ndim == 4:
                inputs = inputs[:, ::s, ::s]
            elif inputs.ndim == 5:
                inputs = inputs[:, ::t, ::s, ::s]
            else:
                raise ValueError("Unsupported data format for pixels.")
        inputs, inputs_without_pos = self._build_network_inputs(inputs, pos, network_input_is_1d)
        return inputs, None, inputs_without_pos


class OneHotPreprocessor(hk.Module):
    """[B, C] -> [B, 1, C]; no positions."""

    def __init__(self, name=None):
        super().__init__(name=name)

    def __call__(self, inputs, *, is_training, pos=None, network_input_is_1d=True):
        inputs = inputs[:, None, :]
        return inputs, None, inputs


class AudioPreprocessor(hk.Module):
    """[B, samples, 1] -> patches [B, n, samples_per_patch] + positions."""

    def __init__(self, prep_type="patches", samples_per_patch=96, position_encoding_type="fourier",
                 n_extra_pos_mlp=0, concat_or_add_pos="concat", name=None, **position_encoding_kwargs):
        super().__init__(name=name)
        if prep_type not in ("patches",):
            raise ValueError("Invalid prep_type!")
        if concat_or_add_pos not in ("concat", "add"):
            raise ValueError(f"Invalid value {concat_or_add_pos} for concat_or_add_pos.")
        self._samples_per_patch = samples_per_patch
        self._concat_or_add_pos = concat_or_add_pos
        self._positional_encoding_ctor = functools.partial(
            position_encoding.build_position_encoding, position_encoding_type=position_encoding_type,
            **position_encoding_kwargs)
        self._n_extra_pos_mlp = n_extra_pos_mlp

    def _build_network_inputs(self, inputs, pos):
        with_pos = _add_position_encoding(self._positional_encoding_ctor, self._n_extra_pos_mlp,
                                          self._concat_or_add_pos, inputs, inputs.shape[1:-1], pos)
        return with_pos, inputs

    def __call__(self, inputs, *, is_training, pos=None, network_input_is_1d=True):
        inputs = jnp.reshape(inputs, [inputs.shape[0], -1, self._samples_per_patch])
        inputs, inputs_without_pos = self._build_network_inputs(inputs, pos)
        return inputs, None, inputs_without_pos


def restructure(modality_sizes, inputs):
    """Split [B, N, C] along N into {modality: slice}, modalities in sorted order."""
    outputs, start = {}, 0
    for modality in sorted(modality_sizes):
        size = modality_sizes[modality]
        outputs[modality] = inputs[:, start:start + size]
        start += size
    return outputs


class MultimodalPreprocessor(hk.Module):
    """Preprocess each modality, pad to a common width with learned channels, optionally mask, concatenate."""

    def __init__(self, modalities, mask_probs=None, min_padding_size=2, name=None):
        super().__init__(name=name)
        self._modalities = modalities
        self._mask_probs = mask_probs
        self._min_padding_size = min_padding_size

    def __call__(self, inputs, *, is_training, pos=None, network_input_is_1d=True):
        outputs, inputs_without_pos = {}, {}
        for modality, preprocessor in self._modalities.items():
            outputs[modality], _, inputs_without_pos[modality] = preprocessor(
                inputs[modality], is_training=is_training, pos=pos, network_input_is_1d=network_input_is_1d)
        width = max(o.shape[2] for o in outputs.values()) + self._min_padding_size
        padded, modality_sizes = {}, {}
        for modality, output in outputs.items():
            batch, n, c = output.shape
            padding = position_encoding.TrainablePositionEncoding(
                1, num_channels=width - c, init_scale=0.02, name=f"{modality}_padding")
            padding = jnp.broadcast_to(padding(batch_size=batch), [batch, n, width - c])
            output = jnp.concatenate([output, padding], axis=2)
            if self._mask_probs is not None:
                token = position_encoding.TrainablePositionEncoding(
                    1, num_channels=width, init_scale=0.02, name=f"{modality}_mask_token")(batch)
                drop = jax.random.bernoulli(hk.next_rng_key(), self._mask_probs[modality], shape=[batch, n])
                drop = jnp.expand_dims(drop, axis=2)
                output = (1 - drop) * output + drop * token
            padded[modality] = output
            modality_sizes[modality] = output.shape[1]
        return jnp.concatenate([padded[m] for m in sorted(padded)], axis=1), modality_sizes, inputs_without_pos


# ---------------------------------------------------------------- postprocessors


class ImagePostprocessor(hk.Module):
    """Decoder outputs -> images: 'pixels' (as is), 'patches' (depth-to-space), 'conv1x1', 'conv'/'raft'."""

    def __init__(self, postproc_type="pixels", spatial_upsample=1, temporal_upsample=1, n_outputs=-1,
                 input_reshape_size=None, name=None):
        super().__init__(name=name)
        if postproc_type not in ("conv", "patches", "pixels", "raft", "conv1x1"):
            raise ValueError("Invalid postproc_type!")
        self._postproc_type = postproc_type
        self._temporal_upsample = temporal_upsample
        self._spatial_upsample = spatial_upsample
        self._input_reshape_size = input_reshape_size
        if postproc_type == "pixels":
            if temporal_upsample != 1 or spatial_upsample != 1:
                raise ValueError("Pixels postprocessing should not currently upsample.")
        elif postproc_type == "conv1x1":
            assert temporal_upsample == 1, "conv1x1 does not upsample in time."
            if n_outputs == -1:
                raise ValueError("Expected value for n_outputs")
            self.conv1x1 = hk.Conv2D(n_outputs, kernel_shape=[1, 1], stride=[spatial_upsample, spatial_upsample])
        elif postproc_type == "conv":
            if n_outputs == -1:
                raise ValueError("Expected value for n_outputs")
            if temporal_upsample != 1:
                def log2(x):
                    return int(np.round(np.log(x) / np.log(2)))
                self.convnet = Conv3DUpsample(n_outputs, log2(temporal_upsample), log2(spatial_upsample))
            else:
                self.convnet = Conv2DUpsample(n_outputs)

    def __call__(self, inputs, *, is_training, pos=None, modality_sizes=None):
        if self._input_reshape_size is not None:
            inputs = jnp.reshape(inputs, [inputs.shape[0], *self._input_reshape_size, inputs.shape[-1]])
        if self._postproc_type in ("conv", "raft"):
            conv = self.convnet
            if inputs.ndim == 5 and self._temporal_upsample == 1:
                conv = hk.BatchApply(conv)
            inputs = conv(inputs, is_training=is_training)
        elif self._postproc_type == "conv1x1":
            inputs = self.conv1x1(inputs)
        elif self._postproc_type == "patches":
            inputs = reverse_space_to_depth(inputs, self._temporal_upsample, self._spatial_upsample)
        return inputs


class AudioPostprocessor(hk.Module):
    """[B, n, C] -> Linear(samples_per_patch) -> [B, n * samples_per_patch]."""

    def __init__(self, postproc_type="patches", samples_per_patch=96, name=None):
        super().__init__(name=name)
        if postproc_type not in ("patches",):
            raise ValueError("Invalid postproc_type!")
        self._postproc_type = postproc_type
        self._samples_per_patch = samples_per_patch

    def __call__(self, inputs, *, is_training, pos=None, modality_sizes=None):
        return jnp.reshape(hk.Linear(self._samples_per_patch)(inputs), [inputs.shape[0], -1])


class IdentityPostprocessor(hk.Module):
    def __init__(self, name=None):
        super().__init__(name=name)

    def __call__(self, inputs, *, is_training, pos=None, modality_sizes=None):
        return inputs


class MultimodalPostprocessor(hk.Module):
    """Splits decoder outputs by modality (unless already a dict) and postprocesses each."""

    def __init__(self, modalities, input_is_dict=False, name=None):
        super().__init__(name=name)
        self._modalities = modalities
        self._input_is_dict = input_is_dict

    def __call__(self, inputs, *, is_training, pos=None, modality_sizes=None):
        if not self._input_is_dict:
            assert modality_sizes is not None
            inputs = restructure(modality_sizes=modality_sizes, inputs=inputs)
        return {m: post(inputs[m], is_training=is_training, pos=pos, modality_sizes=None)
                for m, post in self._modalities.items()}


class ClassificationPostprocessor(hk.Module):
    """[B, 1, C] -> Linear(num_classes) -> [B, num_classes]."""

    def __init__(self, num_classes, name=None):
        super().__init__(name=name)
        self._num_classes = num_classes

    def __call__(self, inputs, *, is_training, pos=None, modality_sizes=None):
        return hk.Linear(self._num_classes)(inputs)[:, 0, :]


class ProjectionPostprocessor(hk.Module):
    """Position-wise Linear(num_outputs)."""

    def __init__(self, num_outputs, name=None):
        super().__init__(name=name)
        self._num_outputs = num_outputs

    def __call__(self, inputs, *, is_training, pos=None, modality_sizes=None):
        return hk.Linear(self._num_outputs)(inputs)


class EmbeddingDecoder(hk.Module):
    """Logits against a (tied) embedding matrix [vocab, d_model], plus a learned `bias`."""

    def __init__(self, embedding_matrix, name="embedding_decoder"):
        super().__init__(name=name)
        self._embedding_matrix = embedding_matrix
        self._vocab_size, self._d_model = embedding_matrix.shape

    def __call__(self, embeddings):
        batch, length, _ = embeddings.shape
        logits = jnp.matmul(embeddings.reshape(-1, self._d_model), jnp.transpose(self._embedding_matrix))
        logits = logits + hk.get_parameter("bias", shape=[self._vocab_size], init=jnp.zeros)
        return logits.reshape(batch, length, self._vocab_size)
