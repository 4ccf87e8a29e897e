"""ImageNet classifiers: JAX reference vs converted Torch model over every prep and position-encoding type."""

from hypothesis import strategies as st

from .conftest import golden_config
from .parity_check import grid_parity_test, hypothesis_parity_test, merged

CONV = golden_config("imagenet_conv")  # 32x32, conv stem + batch norm, Fourier features
LEARNED = golden_config("imagenet_learned")  # conv1x1, trainable positions projected, concat
PIXELS = golden_config("imagenet_fourier")  # pixels, Fourier features

# name -> (config, batch)
GRID = {
    "conv_fourier": (CONV, 1),
    "conv1x1_trainable_project_concat": (LEARNED, 3),
    "pixels_fourier": (PIXELS, 1),
    "patches_linear_trainable_add": ({**PIXELS, "input_preprocessor": {
        "prep_type": "patches", "spatial_downsample": 4, "conv_after_patching": True, "num_channels": 24,
        "position_encoding_type": "trainable", "trainable_position_encoding_kwargs": {"num_channels": 24},
        "concat_or_add_pos": "add"}}, 3),
    "patches_raw_fourier_sine_only": (merged(PIXELS, input_preprocessor={
        "prep_type": "patches", "spatial_downsample": 2,
        "fourier_position_encoding_kwargs": {"num_bands": 3, "max_resolution": [8, 8], "sine_only": True,
                                             "concat_pos": False}}), 1),
    "pixels_downsampled_extra_pos_mlp_project": (merged(PIXELS, input_preprocessor={
        "spatial_downsample": 2, "n_extra_pos_mlp": 2, "project_pos_dim": 12,
        "fourier_position_encoding_kwargs": {"max_resolution": [8, 8]}}), 1),
    "conv1x1_strided_fourier_add": (merged(PIXELS, input_preprocessor={
        "prep_type": "conv1x1", "spatial_downsample": 2, "num_channels": 16, "concat_or_add_pos": "add",
        "project_pos_dim": 16, "fourier_position_encoding_kwargs": {"max_resolution": [8, 8]}}), 3),
    "encoder_decoder_variants": (merged(PIXELS, encoder={
        "num_blocks": 3, "num_self_attends_per_block": 1, "num_cross_attend_heads": 2, "num_self_attend_heads": 2,
        "qk_channels": 32, "v_channels": 64, "cross_attend_widening_factor": 2, "self_attend_widening_factor": 3,
        "use_query_residual": False, "cross_attention_shape_for_attn": "q"},
        decoder={"use_query_residual": False, "num_heads": 4, "qk_channels": 16, "v_channels": 48,
                 "trainable_position_encoding_kwargs": {"num_channels": 40}}), 1),
    "odd_sizes_conv_no_batchnorm": ({
        "image_size": [13, 11], "num_classes": 7,
        "input_preprocessor": {"prep_type": "conv", "num_channels": 10, "conv2d_use_batchnorm": False,
                               "position_encoding_type": "fourier",
                               "fourier_position_encoding_kwargs": {"num_bands": 3, "max_resolution": [4, 3],
                                                                    "sine_only": False, "concat_pos": True}},
        "encoder": {"num_blocks": 2, "num_self_attends_per_block": 2, "z_index_dim": 5, "num_z_channels": 24,
                    "num_cross_attend_heads": 1, "num_self_attend_heads": 3, "use_query_residual": True},
        "decoder": {"num_z_channels": 24, "position_encoding_type": "trainable", "use_query_residual": True,
                    "trainable_position_encoding_kwargs": {"num_channels": 24}},
    }, 3),
}


# Covered by the others in the default run (pixels, conv1x1, add, Fourier): run with -m slow.
SLOW = {"pixels_fourier", "conv1x1_strided_fourier_add"}


test_imagenet_parity = grid_parity_test("imagenet", GRID, SLOW)


@st.composite
def imagenet_configs(draw):
    height, width = draw(st.integers(3, 12)), draw(st.integers(3, 12))
    prep = draw(st.sampled_from(["pixels", "conv1x1"]))
    heads = draw(st.sampled_from([1, 2, 4]))
    z_channels = heads * draw(st.integers(2, 6))
    num_bands = draw(st.integers(1, 4))
    preprocessor = {"prep_type": prep, "spatial_downsample": 1, "position_encoding_type": "fourier",
                    "fourier_position_encoding_kwargs": {"num_bands": num_bands, "max_resolution": [height, width],
                                                         "sine_only": draw(st.booleans()), "concat_pos": True}}
    if prep == "conv1x1":
        preprocessor["num_channels"] = draw(st.integers(1, 9))
    return {
        "image_size": [height, width], "num_classes": draw(st.integers(2, 11)),
        "input_preprocessor": preprocessor,
        "encoder": {"num_blocks": draw(st.integers(1, 2)), "num_self_attends_per_block": draw(st.integers(1, 2)),
                    "z_index_dim": draw(st.integers(1, 6)), "num_z_channels": z_channels,
                    "num_cross_attend_heads": 1, "num_self_attend_heads": heads,
                    "use_query_residual": draw(st.booleans())},
        "decoder": {"num_z_channels": z_channels, "position_encoding_type": "trainable",
                    "use_query_residual": draw(st.booleans()),
                    "trainable_position_encoding_kwargs": {"num_channels": draw(st.integers(1, 9))}},
    }


test_imagenet_parity_hypothesis = hypothesis_parity_test("imagenet", imagenet_configs(), max_examples=2)
test_imagenet_parity_hypothesis_more = hypothesis_parity_test("imagenet", imagenet_configs(), max_examples=12,
                                                              slow=True)
