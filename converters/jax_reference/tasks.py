"""The four task models exactly as the upstream colabs build them, configured by the golden config.json.

Each builder runs inside a Haiku transform: it takes the inputs dict (golden names, upstream
layout) and returns the outputs dict (golden names), always with is_training=False.
`modules` is a namespace with upstream's `perceiver`, `io_processors` and `position_encoding`
(ours by default, or DeepMind's from `upstream_modules`).
"""

from __future__ import annotations

import haiku as hk
import jax.numpy as jnp


def _fourier(num_bands, max_resolution):
    return dict(num_bands=num_bands, max_resolution=tuple(max_resolution), sine_only=False, concat_pos=True)


def language(m, config, inputs):
    ids, mask = inputs["inputs"], inputs["input_mask"]
    embed = hk.Embed(vocab_size=config["vocab_size"], embed_dim=config["d_model"])
    embedded = embed(ids)
    positions = m.position_encoding.TrainablePositionEncoding(
        index_dim=config["max_seq_len"], num_channels=config["d_model"])
    embedded = embedded + positions(embedded.shape[0])
    model = m.perceiver.Perceiver(encoder=m.perceiver.PerceiverEncoder(**config["encoder"]),
                                  decoder=m.perceiver.BasicDecoder(**config["decoder"]))
    # The one mask serves both the encoder's inputs and the decoder's queries.
    out = model(embedded, is_training=False, input_mask=mask, query_mask=mask)
    return {"logits": m.io_processors.EmbeddingDecoder(embedding_matrix=embed.embeddings)(out)}


def imagenet(m, config, inputs, is_training=False):
    model = m.perceiver.Perceiver(
        encoder=m.perceiver.PerceiverEncoder(**config["encoder"]),
        decoder=m.perceiver.ClassificationDecoder(config["num_classes"], **config["decoder"]),
        input_preprocessor=m.io_processors.ImagePreprocessor(**config["input_preprocessor"]),
    )
    # is_training=True only while `init` creates the batch-norm statistics (Haiku makes them on update).
    return {"logits": model(inputs["images"], is_training=is_training)}


def optical_flow(m, config, inputs):
    train_size = tuple(config["train_size"])
    fourier = _fourier(config["num_bands"], train_size)
    preprocessor = m.io_processors.ImagePreprocessor(
        position_encoding_type="fourier", fourier_position_encoding_kwargs=fourier, n_extra_pos_mlp=0,
        prep_type="patches", spatial_downsample=1, conv_after_patching=True, temporal_downsample=2)
    encoder = m.perceiver.PerceiverEncoder(**{"name": "perceiver_encoder", **config["encoder"]})
    # The queries are the first-frame features, so the decoder's own encoding is never evaluated.
    decoder = m.perceiver.FlowDecoder(
        train_size, rescale_factor=config.get("rescale_factor", 100.0), use_query_residual=False,
        output_num_channels=2, output_w_init=jnp.zeros, position_encoding_type="fourier",
        fourier_position_encoding_kwargs=fourier)
    model = m.perceiver.Perceiver(input_preprocessor=preprocessor, encoder=encoder, decoder=decoder,
                                  output_postprocessor=None)
    patches = _patches_for_flow(m)(inputs["images"])
    return {"flow": model(patches, is_training=False) * config["flow_scale_factor"]}


def _patches_for_flow(m):
    # Older upstream checkouts keep patches_for_flow only in the flow colab, not in io_processors.
    found = getattr(m.io_processors, "patches_for_flow", None)
    if found is None:
        from .io_processors import patches_for_flow as found
    return found


def video_autoencoding(m, config, inputs):
    images, audio = inputs["images"], inputs["audio"]
    frames, size = config["num_frames"], config["image_size"]
    spp, num_classes = config["samples_per_patch"], config["num_classes"]
    z_channels, out_channels = config["decoder_z_channels"], config["decoder_output_channels"]
    n_audio_samples = frames * config["audio_samples_per_frame"]
    audio_fourier = _fourier(config["audio_bands"], (n_audio_samples,))
    # The colab's IMG_SZ (56 in the released preset); the golden fixture was made with image_size.
    pos_size = config.get("image_position_resolution", size)
    image_fourier = _fourier(config["image_bands"], (frames, pos_size, pos_size))
    io, pc = m.io_processors, m.perceiver

    # Without indices, decode every point (the colab always passes one chunk's).
    subsampling = {
        "image": inputs.get("subsample_image", jnp.arange(frames * size * size)),
        "audio": inputs.get("subsample_audio", jnp.arange(n_audio_samples // spp)),
        "label": None,
    }
    preprocessor = io.MultimodalPreprocessor(
        min_padding_size=4,
        modalities={
            "audio": io.AudioPreprocessor(position_encoding_type="fourier",
                                          fourier_position_encoding_kwargs=audio_fourier, n_extra_pos_mlp=0,
                                          prep_type="patches", samples_per_patch=spp),
            "image": io.ImagePreprocessor(position_encoding_type="fourier",
                                          fourier_position_encoding_kwargs=image_fourier, n_extra_pos_mlp=0,
                                          prep_type="patches", spatial_downsample=4, temporal_downsample=1),
            "label": io.OneHotPreprocessor(),
        },
        mask_probs={"image": 0.0, "audio": 0.0, "label": 1.0},
    )
    postprocessor = io.MultimodalPostprocessor(modalities={
        "audio": io.AudioPostprocessor(samples_per_patch=spp),
        "image": io.ProjectionPostprocessor(num_outputs=3),
        "label": io.ClassificationPostprocessor(num_classes=num_classes),
    })
    encoder = pc.PerceiverEncoder(**{**config["encoder"], "name": "encoder"})
    image_decoder = pc.BasicVideoAutoencodingDecoder(
        concat_preprocessed_input=False, subsampled_index_dims=subsampling["image"], output_shape=images.shape[:4],
        num_z_channels=z_channels, output_num_channels=out_channels, use_query_residual=False,
        position_encoding_type="fourier", fourier_position_encoding_kwargs=image_fourier)
    decoder = pc.MultimodalDecoder(
        concat_preprocessed_input=False,
        subsampled_index_dims={"audio": subsampling["audio"].shape[0], "image": subsampling["image"].shape[0],
                               "label": 1},
        modalities={
            "audio": pc.BasicDecoder(
                concat_preprocessed_input=False, subsampled_index_dims=subsampling["audio"],
                output_index_dims=(n_audio_samples // spp,), num_z_channels=z_channels,
                output_num_channels=out_channels, use_query_residual=False, position_encoding_type="fourier",
                fourier_position_encoding_kwargs=audio_fourier),
            "image": image_decoder,
            "label": pc.ClassificationDecoder(
                concat_preprocessed_input=False, num_classes=num_classes, num_z_channels=z_channels,
                use_query_residual=False, position_encoding_type="trainable",
                trainable_position_encoding_kwargs=dict(num_channels=z_channels, init_scale=0.02)),
        },
        num_outputs=None, output_num_channels=out_channels, use_query_residual=False)
    model = pc.Perceiver(input_preprocessor=preprocessor, encoder=encoder, decoder=decoder,
                         output_postprocessor=postprocessor)
    # The label is an all-zero input, always masked (probability 1), as in the colab.
    label = jnp.zeros((images.shape[0], num_classes), dtype=images.dtype)
    return dict(model({"image": images, "audio": audio, "label": label}, is_training=False,
                      subsampled_output_points=subsampling))
