"""Optical flow: JAX reference vs converted Torch model (patches_for_flow, Fourier features, FlowDecoder)."""

from hypothesis import strategies as st

from .conftest import golden_config
from .parity_check import grid_parity_test, hypothesis_parity_test, merged

BASE = golden_config("optical_flow")  # 12x16 frames, 4 bands, 1 block x 2 self-attends, 32 x 64 latents

# name -> (config, batch). The perturbed zero-initialised flow head gives flow of ~1e-2 at the golden
# flow_scale_factor (20), where atol=1e-4 would be loose; the larger factors make float32 errors relative.
GRID = {
    "golden": (BASE, 1),
    "golden_batch3": (BASE, 3),
    "odd_frame_size_bands": (merged(BASE, train_size=[7, 9], num_bands=3, flow_scale_factor=700.5), 1),
    "encoder_variants": (merged(BASE, encoder={
        "num_blocks": 2, "num_self_attends_per_block": 1, "num_cross_attend_heads": 2, "num_self_attend_heads": 2,
        "qk_channels": 32, "v_channels": 64, "cross_attend_widening_factor": 2, "self_attend_widening_factor": 3,
        "use_query_residual": False, "z_index_dim": 5}, flow_scale_factor=1000), 3),
}


SLOW = {"golden_batch3"}  # batch 3 is covered by encoder_variants


test_optical_flow_parity = grid_parity_test("optical_flow", GRID, SLOW)


@st.composite
def flow_configs(draw):
    heads = draw(st.sampled_from([1, 2, 4]))
    z_channels = heads * draw(st.integers(2, 8))
    return {
        "train_size": [draw(st.integers(3, 10)), draw(st.integers(3, 10))], "num_bands": draw(st.integers(1, 5)),
        "flow_scale_factor": draw(st.sampled_from([20, 1000])), "rescale_factor": draw(st.sampled_from([1.0, 100.0])),
        "encoder": {"num_blocks": draw(st.integers(1, 2)), "num_self_attends_per_block": draw(st.integers(1, 2)),
                    "z_index_dim": draw(st.integers(1, 9)), "num_z_channels": z_channels,
                    "num_cross_attend_heads": 1, "num_self_attend_heads": heads,
                    "use_query_residual": draw(st.booleans())},
    }


test_optical_flow_parity_hypothesis = hypothesis_parity_test("optical_flow", flow_configs(), max_examples=2)
test_optical_flow_parity_hypothesis_more = hypothesis_parity_test("optical_flow", flow_configs(), max_examples=10,
                                                                  slow=True)
