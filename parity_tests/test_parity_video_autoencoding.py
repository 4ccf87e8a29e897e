"""Video autoencoding (multimodal): JAX reference vs converted Torch model, with one decoding chunk's queries."""

from hypothesis import strategies as st

from .conftest import golden_config
from .parity_check import check_parity, grid_parity_test, hypothesis_parity_test, jax_reference, merged

BASE = golden_config("video_autoencoding")  # 2 frames of 16x16, 128 audio samples, 7 classes, 4 chunks

# name -> (config, batch); example inputs decode chunk 1 of nchunks (all points when nchunks is 1).
GRID = {
    "golden": (BASE, 1),
    "whole_clip_batch3": (merged(BASE, nchunks=1), 3),
    "odd_sizes_encoder_variants": ({
        "num_frames": 3, "image_size": 8, "audio_samples_per_frame": 48, "samples_per_patch": 16,
        "num_classes": 5, "audio_bands": 3, "image_bands": 5, "decoder_z_channels": 40,
        "decoder_output_channels": 24, "nchunks": 3,
        "encoder": {"num_self_attends_per_block": 1, "num_blocks": 2, "z_index_dim": 7, "num_z_channels": 48,
                    "num_cross_attend_heads": 2, "num_self_attend_heads": 3, "qk_channels": 24, "v_channels": 48,
                    "cross_attend_widening_factor": 2, "self_attend_widening_factor": 1,
                    "use_query_residual": False},
    }, 3),
}


SLOW = {"whole_clip_batch3"}  # the most expensive to compile; batch 3 is covered by odd_sizes_encoder_variants


test_video_autoencoding_parity = grid_parity_test("video_autoencoding", GRID, SLOW)


def test_video_autoencoding_parity_first_chunk(device):
    """Chunk 0 (the golden fixture decodes chunk 1): the subsampled query positions start at zero."""
    inputs = jax_reference.example_inputs("video_autoencoding", BASE, batch=1)
    chunk = jax_reference.video_subsampling(BASE, 0)
    inputs.update(subsample_image=chunk["image"], subsample_audio=chunk["audio"])
    check_parity("video_autoencoding", BASE, device, inputs=inputs)


@st.composite
def video_configs(draw):
    # One frame is not a video upstream: its patches preprocessor squeezes a time axis of 1 (the flow
    # case) and the 3-D position features no longer fit. So 2 or 3 frames.
    frames, size, spp = draw(st.integers(2, 3)), draw(st.sampled_from([4, 8])), draw(st.sampled_from([4, 8]))
    heads = draw(st.sampled_from([1, 2]))
    return {
        "num_frames": frames, "image_size": size, "samples_per_patch": spp,
        "audio_samples_per_frame": spp * draw(st.integers(1, 3)),  # whole audio patches per frame
        "num_classes": draw(st.integers(2, 6)), "audio_bands": draw(st.integers(1, 3)),
        "image_bands": draw(st.integers(1, 3)), "decoder_z_channels": draw(st.integers(4, 24)),
        "decoder_output_channels": draw(st.integers(4, 16)),
        "nchunks": draw(st.sampled_from([1, frames])),  # frames divides both the image and the audio points
        "encoder": {"num_blocks": draw(st.integers(1, 2)), "num_self_attends_per_block": draw(st.integers(1, 2)),
                    "z_index_dim": draw(st.integers(1, 8)), "num_z_channels": heads * draw(st.integers(2, 8)),
                    "num_cross_attend_heads": 1, "num_self_attend_heads": heads},
    }


test_video_autoencoding_parity_hypothesis = hypothesis_parity_test("video_autoencoding", video_configs(),
                                                                   max_examples=1)
test_video_autoencoding_parity_hypothesis_more = hypothesis_parity_test("video_autoencoding", video_configs(),
                                                                        max_examples=6, slow=True)
