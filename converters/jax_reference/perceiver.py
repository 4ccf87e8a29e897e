"""Perceiver IO modules of upstream's `perceiver/perceiver.py`, same classes, arguments and Haiku paths.

Haiku names parameters after the module class (snake-cased), where a submodule is created
(`~/` for the constructor, `~method/` for another method, nothing for `__call__`) and how many
siblings of that class came before. So every submodule here is created in the same method
and order as upstream: that is what lets an upstream checkpoint load unchanged.
"""

from __future__ import annotations

import abc
import math

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

from . import io_processors, position_encoding

# ---------------------------------------------------------------- primitives


def attend(q, k, v, dropout_prob=0.0, attention_mask=None):
    """Multi-head scaled dot-product attention: q/k/v [B, N, H, D] -> [B, Nq, H * Dv]."""
    batch, num_queries, num_heads, head_dim = q.shape
    logits = jnp.einsum("bthd,bThd->bhtT", q, k) * (1.0 / math.sqrt(head_dim))
    if attention_mask is not None:
        # A finite "minus infinity": -inf would give NaN rows when a whole row is masked.
        big = jnp.array(1e4 if logits.dtype == jnp.float16 else 1e30, dtype=logits.dtype)
        logits = jnp.where(attention_mask[:, None, :, :], logits, -big)
    weights = jax.nn.softmax(logits)
    if dropout_prob > 0:
        weights = hk.dropout(hk.next_rng_key(), dropout_prob, weights)
    out = jnp.einsum("bhtT,bThd->bthd", weights, v).reshape(batch, num_queries, num_heads * v.shape[-1])
    if attention_mask is not None:
        # A query that may attend to nothing gets a uniform softmax; upstream zeroes its output.
        nothing_to_attend = jnp.all(attention_mask == 0, axis=2, keepdims=True)
        out = jnp.where(nothing_to_attend, jnp.zeros_like(out), out)
    return out


def conv_1d(output_channels, init_scale=1.0, with_bias=True, name=None):
    """A position-wise Linear (upstream calls it a 1D convolution)."""
    return hk.Linear(output_size=output_channels, with_bias=with_bias,
                     w_init=hk.initializers.VarianceScaling(init_scale), name=name)


def layer_norm(x, name=None):
    return hk.LayerNorm(axis=-1, create_scale=True, create_offset=True, name=name)(x)


def make_cross_attention_mask(query_mask, kv_mask):
    """[B, Nq] x [B, Nkv] -> [B, Nq, Nkv] outer product per batch element."""
    mask = jax.vmap(jnp.outer)(query_mask, kv_mask)
    assert mask.shape == (query_mask.shape[0], query_mask.shape[1], kv_mask.shape[1])
    return mask


# ---------------------------------------------------------------- attention blocks


class Attention(hk.Module):
    """Multi-head {cross, self}-attention with q/k/v/output projections (linear .. linear_3)."""

    def __init__(self, num_heads=8, init_scale=1.0, with_final_bias=True, final_init_scale_multiplier=1.0,
                 dropout_prob=0.0, qk_channels=None, v_channels=None, output_channels=None, name=None):
        super().__init__(name=name)
        self._num_heads = num_heads
        self._init_scale = init_scale
        self._with_final_bias = with_final_bias
        self._final_init_scale = final_init_scale_multiplier * init_scale
        self._dropout_prob = dropout_prob
        self._qk_channels = qk_channels
        self._v_channels = v_channels
        self._output_channels = output_channels

    def __call__(self, inputs_q, inputs_kv, attention_mask=None):
        # Defaults chain: qk <- query width, v <- qk, output <- v.
        qk_channels = self._qk_channels if self._qk_channels is not None else inputs_q.shape[-1]
        v_channels = self._v_channels if self._v_channels is not None else qk_channels
        out_channels = self._output_channels if self._output_channels is not None else v_channels
        for what, channels in (("qk_channels", qk_channels), ("v_channels", v_channels)):
            if channels % self._num_heads:
                raise ValueError(f"{what} ({channels}) must be divisible by num_heads ({self._num_heads}).")
        heads = self._num_heads
        q = conv_1d(qk_channels, init_scale=self._init_scale)(inputs_q)
        k = conv_1d(qk_channels, init_scale=self._init_scale)(inputs_kv)
        v = conv_1d(v_channels, init_scale=self._init_scale)(inputs_kv)
        batch, nq, _ = q.shape
        nkv = k.shape[1]
        q = q.reshape(batch, nq, heads, qk_channels // heads)
        k = k.reshape(batch, nkv, heads, qk_channels // heads)
        v = v.reshape(batch, nkv, heads, v_channels // heads)
        out = attend(q, k, v, dropout_prob=self._dropout_prob, attention_mask=attention_mask)
        return conv_1d(out_channels, with_bias=self._with_final_bias, init_scale=self._final_init_scale)(out)


class MLP(hk.Module):
    """Linear(widening * C) -> GELU (tanh approximation, JAX's default) -> Linear(C) -> dropout."""

    def __init__(self, widening_factor=4, dropout_prob=0.0, init_scale=1.0, name=None):
        super().__init__(name=name)
        self._widening_factor = widening_factor
        self._dropout_prob = dropout_prob
        self._init_scale = init_scale

    def __call__(self, x, *, is_training):
        rate = self._dropout_prob if is_training else 0.0
        channels = x.shape[-1]
        x = conv_1d(self._widening_factor * channels, init_scale=self._init_scale)(x)
        x = jax.nn.gelu(x)
        x = conv_1d(channels, init_scale=self._init_scale)(x)
        return hk.dropout(hk.next_rng_key(), rate, x)


class SelfAttention(hk.Module):
    """Pre-norm self-attention plus MLP, both residual."""

    def __init__(self, widening_factor=4, dropout_prob=0.0, dropout_attn_prob=0.0, num_heads=8,
                 att_init_scale=1.0, dense_init_scale=1.0, qk_channels=None, v_channels=None, name=None):
        super().__init__(name=name)
        self._widening_factor = widening_factor
        self._dropout_prob = dropout_prob
        self._dropout_attn_prob = dropout_attn_prob
        self._num_heads = num_heads
        self._att_init_scale = att_init_scale
        self._dense_init_scale = dense_init_scale
        self._qk_channels = qk_channels
        self._v_channels = v_channels

    def __call__(self, inputs, *, attention_mask=None, is_training):
        rate = self._dropout_prob if is_training else 0.0
        attn_rate = self._dropout_attn_prob if is_training else 0.0
        normed = layer_norm(inputs)
        attended = Attention(
            num_heads=self._num_heads, init_scale=self._att_init_scale, qk_channels=self._qk_channels,
            v_channels=self._v_channels, dropout_prob=attn_rate,
        )(normed, normed, attention_mask=attention_mask)
        x = inputs + hk.dropout(hk.next_rng_key(), rate, attended)
        mlp = MLP(widening_factor=self._widening_factor, dropout_prob=rate, init_scale=self._dense_init_scale)
        return x + mlp(layer_norm(x), is_training=is_training)


class CrossAttention(hk.Module):
    """Pre-norm cross-attention (output width = query width), optional query residual, plus MLP."""

    def __init__(self, widening_factor=1, dropout_prob=0.0, dropout_attn_prob=0.0, num_heads=8,
                 att_init_scale=1.0, dense_init_scale=1.0, shape_for_attn="kv", use_query_residual=True,
                 qk_channels=None, v_channels=None, name=None):
        super().__init__(name=name)
        self._widening_factor = widening_factor
        self._dropout_prob = dropout_prob
        self._dropout_attn_prob = dropout_attn_prob
        self._num_heads = num_heads
        self._att_init_scale = att_init_scale
        self._dense_init_scale = dense_init_scale
        self._shape_for_attn = shape_for_attn
        self._use_query_residual = use_query_residual
        self._qk_channels = qk_channels
        self._v_channels = v_channels

    def __call__(self, inputs_q, inputs_kv, *, attention_mask=None, is_training):
        rate = self._dropout_prob if is_training else 0.0
        attn_rate = self._dropout_attn_prob if is_training else 0.0
        if self._shape_for_attn == "q":
            qk_channels = inputs_q.shape[-1]
        elif self._shape_for_attn == "kv":
            qk_channels = inputs_kv.shape[-1]
        else:
            raise ValueError(f"Unknown value {self._shape_for_attn} for shape_for_attention.")
        if self._qk_channels is not None:
            qk_channels = self._qk_channels
        attention = Attention(
            num_heads=self._num_heads, init_scale=self._att_init_scale, dropout_prob=attn_rate,
            qk_channels=qk_channels, v_channels=self._v_channels, output_channels=inputs_q.shape[-1],
        )
        attended = attention(layer_norm(inputs_q), layer_norm(inputs_kv), attention_mask=attention_mask)
        attended = hk.dropout(hk.next_rng_key(), rate, attended)
        # Without the residual (queries that are positions, outputs that are pixels) only the attention remains.
        x = inputs_q + attended if self._use_query_residual else attended
        mlp = MLP(widening_factor=self._widening_factor, dropout_prob=rate, init_scale=self._dense_init_scale)
        return x + mlp(layer_norm(x), is_training=is_training)


# ---------------------------------------------------------------- encoder and model


class Perceiver(hk.Module):
    """Preprocess -> encode into latents -> decode queries -> postprocess."""

    def __init__(self, encoder, decoder, input_preprocessor=None, output_postprocessor=None, name="perceiver"):
        super().__init__(name=name)
        self._encoder = encoder
        self._decoder = decoder
        self._input_preprocessor = input_preprocessor
        self._output_postprocessor = output_postprocessor

    def __call__(self, inputs, *, is_training, subsampled_output_points=None, pos=None, input_mask=None,
                 query_mask=None):
        modality_sizes = inputs_without_pos = None
        if self._input_preprocessor:
            inputs, modality_sizes, inputs_without_pos = self._input_preprocessor(
                inputs, pos=pos, is_training=is_training, network_input_is_1d=self._encoder._input_is_1d)
        encoder_query = self._encoder.latents(inputs)
        decoder_query = self._decoder.decoder_query(
            inputs, modality_sizes, inputs_without_pos, subsampled_points=subsampled_output_points)
        z = self._encoder(inputs, encoder_query, is_training=is_training, input_mask=input_mask)
        _, output_modality_sizes = self._decoder.output_shape(inputs)
        outputs = self._decoder(decoder_query, z, is_training=is_training, query_mask=query_mask)
        if self._output_postprocessor:
            outputs = self._output_postprocessor(
                outputs, is_training=is_training, modality_sizes=output_modality_sizes or modality_sizes)
        return outputs


class PerceiverEncoder(hk.Module):
    """One cross-attend into learned latents, then `num_blocks` passes of one shared self-attend stack."""

    def __init__(self, num_self_attends_per_block=6, num_blocks=8, z_index_dim=512, num_z_channels=1024,
                 qk_channels=None, v_channels=None, num_cross_attend_heads=1, num_self_attend_heads=8,
                 cross_attend_widening_factor=1, self_attend_widening_factor=1, dropout_prob=0.0,
                 z_pos_enc_init_scale=0.02, cross_attention_shape_for_attn="kv", use_query_residual=True,
                 name="perceiver_encoder"):
        super().__init__(name=name)
        for what, heads in (("num_self_attend_heads", num_self_attend_heads),
                            ("num_cross_attend_heads", num_cross_attend_heads)):
            if num_z_channels % heads:
                raise ValueError(f"num_z_channels ({num_z_channels}) must be divisible by {what} ({heads}).")
        self._input_is_1d = True
        self._num_blocks = num_blocks
        self.z_pos_enc = position_encoding.TrainablePositionEncoding(
            index_dim=z_index_dim, num_channels=num_z_channels, init_scale=z_pos_enc_init_scale)
        self.cross_attend = CrossAttention(
            dropout_prob=dropout_prob, num_heads=num_cross_attend_heads, widening_factor=cross_attend_widening_factor,
            shape_for_attn=cross_attention_shape_for_attn, qk_channels=qk_channels, v_channels=v_channels,
            use_query_residual=use_query_residual)
        self.self_attends = [
            SelfAttention(num_heads=num_self_attend_heads, dropout_prob=dropout_prob, qk_channels=qk_channels,
                          v_channels=v_channels, widening_factor=self_attend_widening_factor)
            for _ in range(num_self_attends_per_block)
        ]

    def latents(self, inputs):
        return self.z_pos_enc(batch_size=inputs.shape[0])

    def __call__(self, inputs, z, *, is_training, input_mask=None):
        attention_mask = None
        if input_mask is not None:
            attention_mask = make_cross_attention_mask(
                query_mask=jnp.ones(z.shape[:2], dtype=jnp.int32), kv_mask=input_mask)
        z = self.cross_attend(z, inputs, is_training=is_training, attention_mask=attention_mask)
        for _ in range(self._num_blocks):  # the same weights every block
            for block in self.self_attends:
                z = block(z, is_training=is_training)
        return z


# ---------------------------------------------------------------- decoders


class AbstractPerceiverDecoder(hk.Module, metaclass=abc.ABCMeta):
    """Makes the decoder queries, reports the output shape, and decodes latents."""

    @abc.abstractmethod
    def decoder_query(self, inputs, modality_sizes=None, inputs_without_pos=None, subsampled_points=None):
        raise NotImplementedError

    @abc.abstractmethod
    def output_shape(self, inputs):
        raise NotImplementedError

    @abc.abstractmethod
    def __call__(self, query, z, *, is_training, query_mask=None):
        raise NotImplementedError


class ProjectionDecoder(AbstractPerceiverDecoder):
    """No cross-attention: mean over latents, then a zero-initialised Linear `logits`."""

    def __init__(self, num_classes, final_avg_before_project=False, name="projection_decoder"):
        super().__init__(name=name)
        self._final_avg_before_project = final_avg_before_project
        self._num_classes = num_classes
        self.final_layer = hk.Linear(num_classes, w_init=jnp.zeros, name="logits")

    def decoder_query(self, inputs, modality_sizes=None, inputs_without_pos=None, subsampled_points=None):
        return None

    def output_shape(self, inputs):
        return (inputs.shape[0], self._num_classes), None

    def __call__(self, query, z, *, is_training, query_mask=None):
        return self.final_layer(jnp.mean(z, axis=1, dtype=z.dtype))


class BasicDecoder(AbstractPerceiverDecoder):
    """Cross-attends position-encoding queries (or given ones) to the latents, then an `output` Linear."""

    def __init__(self, output_num_channels, position_encoding_type="trainable", output_index_dims=None,
                 subsampled_index_dims=None, num_z_channels=1024, qk_channels=None, v_channels=None,
                 use_query_residual=False, output_w_init=None, concat_preprocessed_input=False, num_heads=1,
                 name="basic_decoder", final_project=True, **position_encoding_kwargs):
        super().__init__(name=name)
        self._position_encoding_type = position_encoding_type
        self.output_pos_enc = None
        if position_encoding_type != "none":  # 'none': the caller supplies the queries
            self.output_pos_enc = position_encoding.build_position_encoding(
                position_encoding_type, index_dims=output_index_dims, **position_encoding_kwargs)
        self._output_index_dim = output_index_dims
        self._subsampled_index_dims = output_index_dims if subsampled_index_dims is None else subsampled_index_dims
        self._output_num_channels = output_num_channels
        self._output_w_init = output_w_init
        self._use_query_residual = use_query_residual
        self._qk_channels = qk_channels
        self._v_channels = v_channels
        self._final_project = final_project
        self._num_heads = num_heads
        self._concat_preprocessed_input = concat_preprocessed_input

    def output_shape(self, inputs):
        return (inputs[0], self._subsampled_index_dims, self._output_num_channels), None

    def decoder_query(self, inputs, modality_sizes=None, inputs_without_pos=None, subsampled_points=None):
        assert self._position_encoding_type != "none"
        batch = inputs.shape[0]
        if subsampled_points is None:
            query = self.output_pos_enc(batch_size=batch)
        else:
            # Flat indices -> coordinates in [-1, 1) of the full output grid, encoded like the grid.
            coords = jnp.stack(jnp.unravel_index(subsampled_points, self._output_index_dim), axis=1)
            coords = -1 + 2 * coords / jnp.array(self._output_index_dim)[None, :]
            coords = jnp.broadcast_to(coords[None], [batch, *coords.shape])
            query = self.output_pos_enc(batch_size=batch, pos=coords)
            query = query.reshape(query.shape[0], -1, query.shape[-1])
        if self._concat_preprocessed_input:
            if inputs_without_pos is None:
                raise ValueError("Value is required for inputs_without_pos if concat_preprocessed_input is True")
            query = jnp.concatenate([inputs_without_pos, query], axis=-1)
        return query

    def __call__(self, query, z, *, is_training, query_mask=None):
        attention_mask = None
        if query_mask is not None:
            attention_mask = make_cross_attention_mask(
                query_mask=query_mask, kv_mask=jnp.ones(z.shape[:2], dtype=jnp.int32))
        cross_attend = CrossAttention(
            dropout_prob=0.0, num_heads=self._num_heads, widening_factor=1, shape_for_attn="kv",
            qk_channels=self._qk_channels, v_channels=self._v_channels, use_query_residual=self._use_query_residual)
        # Created even when unused so that names match upstream's.
        projection = hk.Linear(self._output_num_channels, w_init=self._output_w_init, name="output")
        output = cross_attend(query, z, is_training=is_training, attention_mask=attention_mask)
        return projection(output) if self._final_project else output


class ClassificationDecoder(AbstractPerceiverDecoder):
    """A BasicDecoder with one query; returns [B, num_classes]."""

    def __init__(self, num_classes, name="classification_decoder", **decoder_kwargs):
        super().__init__(name=name)
        self._num_classes = num_classes
        self.decoder = BasicDecoder(output_index_dims=(1,), output_num_channels=num_classes, **decoder_kwargs)

    def decoder_query(self, inputs, modality_sizes=None, inputs_without_pos=None, subsampled_points=None):
        return self.decoder.decoder_query(inputs, modality_sizes, inputs_without_pos,
                                          subsampled_points=subsampled_points)

    def output_shape(self, inputs):
        return (inputs.shape[0], self._num_classes), None

    def __call__(self, query, z, *, is_training, query_mask=None):
        return self.decoder(query, z, is_training=is_training)[:, 0, :]


class MultimodalDecoder(AbstractPerceiverDecoder):
    """Per-modality decoders only make queries; they are padded to a common width and decoded together."""

    def __init__(self, modalities, num_outputs, output_num_channels, min_padding_size=2,
                 subsampled_index_dims=None, name="multimodal_decoder", **decoder_kwargs):
        super().__init__(name=name)
        self._modalities = modalities
        self._num_outputs = num_outputs
        self._output_num_channels = output_num_channels
        self._min_padding_size = min_padding_size
        self._subsampled_index_dims = subsampled_index_dims
        self._decoder = BasicDecoder(output_index_dims=(num_outputs,), output_num_channels=output_num_channels,
                                     position_encoding_type="none", **decoder_kwargs)

    def decoder_query(self, inputs, modality_sizes, inputs_without_pos=None, subsampled_points=None):
        per_modality = io_processors.restructure(modality_sizes, inputs)
        subsampled_points = subsampled_points or {}
        queries = {}
        for modality, decoder in self._modalities.items():
            without_pos = None if inputs_without_pos is None else inputs_without_pos.get(modality)
            queries[modality] = decoder.decoder_query(
                inputs=per_modality[modality], modality_sizes=None, inputs_without_pos=without_pos,
                subsampled_points=subsampled_points.get(modality))
        width = max(q.shape[2] for q in queries.values()) + self._min_padding_size

        def pad(modality, query):
            query = query.reshape(query.shape[0], int(np.prod(query.shape[1:-1])), query.shape[-1])
            padding = position_encoding.TrainablePositionEncoding(
                1, num_channels=width - query.shape[2], init_scale=0.02, name=f"{modality}_padding")(query.shape[0])
            padding = jnp.broadcast_to(padding, [query.shape[0], query.shape[1], width - query.shape[2]])
            return jnp.concatenate([query, padding], axis=2)

        return jnp.concatenate([pad(m, queries[m]) for m in sorted(self._modalities)], axis=1)

    def output_shape(self, inputs):
        if self._subsampled_index_dims is None:
            count = self._num_outputs
        else:
            count = sum(self._subsampled_index_dims.values())
        return (inputs.shape[0], count, self._output_num_channels), self._subsampled_index_dims

    def __call__(self, query, z, *, is_training, query_mask=None):
        return self._decoder(query, z, is_training=is_training)


class BasicVideoAutoencodingDecoder(AbstractPerceiverDecoder):
    """A BasicDecoder over a [T, H, W] output grid, reshaped to `output_shape` + channels."""

    def __init__(self, output_shape, position_encoding_type, name="basic_video_autoencoding_decoder",
                 **decoder_kwargs):
        super().__init__(name=name)
        if len(output_shape) != 4:
            raise ValueError(f"Expected rank 4 output_shape, got {output_shape}.")
        self._output_shape = output_shape
        self._output_num_channels = decoder_kwargs["output_num_channels"]
        self.decoder = BasicDecoder(output_index_dims=self._output_shape[1:4],
                                    position_encoding_type=position_encoding_type, **decoder_kwargs)

    def decoder_query(self, inputs, modality_sizes=None, inputs_without_pos=None, subsampled_points=None):
        return self.decoder.decoder_query(inputs, modality_sizes=modality_sizes,
                                          inputs_without_pos=inputs_without_pos, subsampled_points=subsampled_points)

    def output_shape(self, inputs):
        return [inputs.shape[0], *self._output_shape[1:], self._output_num_channels], None

    def __call__(self, query, z, *, is_training, query_mask=None):
        output = self.decoder(query, z, is_training=is_training)
        return output.reshape(*self._output_shape, output.shape[-1])


class FlowDecoder(AbstractPerceiverDecoder):
    """Queries are the preprocessed inputs themselves; output divided by `rescale_factor`, as [B, H, W, C]."""

    def __init__(self, output_image_shape, output_num_channels=2, rescale_factor=100.0, name="flow_decoder",
                 **decoder_kwargs):
        super().__init__(name=name)
        self._output_image_shape = output_image_shape
        self._output_num_channels = output_num_channels
        self._rescale_factor = rescale_factor
        self.decoder = BasicDecoder(output_num_channels=output_num_channels, **decoder_kwargs)

    def output_shape(self, inputs):
        return (inputs.shape[0], *self._output_image_shape, self._output_num_channels), None

    def decoder_query(self, inputs, modality_sizes=None, inputs_without_pos=None, subsampled_points=None):
        if subsampled_points is not None:
            raise ValueError("FlowDecoder doesn't support subsampling yet.")
        return inputs

    def __call__(self, query, z, *, is_training, query_mask=None):
        preds = self.decoder(query, z, is_training=is_training) / self._rescale_factor
        return preds.reshape(preds.shape[0], *self._output_image_shape, preds.shape[-1])
