"""Byte-level MLM: JAX reference vs converted Torch model over a grid of configurations."""

import numpy as np
from hypothesis import strategies as st

from .conftest import golden_config
from .parity_check import check_parity, grid_parity_test, hypothesis_parity_test, jax_reference, merged

BASE = golden_config("language")  # d_model 32, 4 heads, qk 32 / v 48, 3 self-attends, no final projection

# name -> (config, batch); batch 1 and 3 alternate so every dimension is covered at both.
GRID = {
    "golden": (BASE, 1),
    "golden_batch3": (BASE, 3),
    "heads": (merged(BASE, encoder={"num_self_attend_heads": 1, "num_cross_attend_heads": 2},
                     decoder={"num_heads": 8}), 1),
    "default_qk_v_channels": (merged(BASE, encoder={"qk_channels": None, "v_channels": None},
                                     decoder={"qk_channels": None, "v_channels": None}), 3),
    # The encoder's self-attention output width is its v_channels, so v must stay num_z_channels there.
    "qk_differs_from_v": (merged(BASE, encoder={"qk_channels": 16, "v_channels": 48},
                                 decoder={"qk_channels": 24, "v_channels": 40}), 1),
    "widening": (merged(BASE, encoder={"cross_attend_widening_factor": 2, "self_attend_widening_factor": 3}), 3),
    "shared_blocks": (merged(BASE, encoder={"num_blocks": 3, "num_self_attends_per_block": 2}), 1),
    "query_residuals_flipped_one_self_attend": (
        merged(BASE, encoder={"use_query_residual": False, "num_self_attends_per_block": 1},
               decoder={"use_query_residual": True}), 3),
    "final_project": (merged(BASE, decoder={"final_project": True, "output_num_channels": 32,
                                            "trainable_position_encoding_kwargs": {"num_channels": 24}}), 1),
    "cross_attention_shape_q": (merged(BASE, encoder={"qk_channels": None, "v_channels": None,
                                                      "cross_attention_shape_for_attn": "q"}), 3),
    "odd_sizes": ({
        "d_model": 15, "max_seq_len": 13, "vocab_size": 262,
        "encoder": {"num_self_attends_per_block": 2, "num_blocks": 2, "z_index_dim": 7, "num_z_channels": 21,
                    "num_self_attend_heads": 3, "num_cross_attend_heads": 3, "qk_channels": 9, "v_channels": 21,
                    "cross_attend_widening_factor": 3, "self_attend_widening_factor": 1},
        "decoder": {"output_num_channels": 15, "position_encoding_type": "trainable", "output_index_dims": 13,
                    "num_z_channels": 21, "qk_channels": 9, "v_channels": 15, "num_heads": 3,
                    "final_project": True, "use_query_residual": True,
                    "trainable_position_encoding_kwargs": {"num_channels": 5}},
    }, 3),
}


# odd_sizes alone covers 3 heads, qk != v, widening 3, 2 shared blocks, final projection and the
# decoder's query residual; the single-dimension configurations run with -m slow.
SLOW = {"golden_batch3", "heads", "default_qk_v_channels", "qk_differs_from_v", "widening", "shared_blocks",
        "final_project"}


test_language_parity = grid_parity_test("language", GRID, SLOW)


def test_language_parity_with_uneven_padding(device):
    """Rows fully valid, half padded and a single valid token: masks reach encoder and decoder."""
    inputs = jax_reference.example_inputs("language", BASE, batch=3, seed=1)
    mask = np.ones_like(inputs["input_mask"])
    mask[1, BASE["max_seq_len"] // 2:] = 0
    mask[2, 1:] = 0
    inputs = {"inputs": np.where(mask == 1, inputs["inputs"], 0).astype(inputs["inputs"].dtype),
              "input_mask": mask.astype(inputs["input_mask"].dtype)}
    check_parity("language", BASE, device, inputs=inputs)


@st.composite
def language_configs(draw):
    heads = draw(st.sampled_from([1, 2, 3]))
    per_head = draw(st.integers(1, 6))
    d_model, z_channels = heads * per_head, heads * draw(st.integers(1, 6))
    max_seq_len = draw(st.integers(2, 11))
    final_project = draw(st.booleans())
    query_channels = draw(st.integers(1, 9)) if final_project else d_model
    channels = st.one_of(st.none(), st.integers(1, 4).map(lambda k: heads * k))
    return {
        "d_model": d_model, "max_seq_len": max_seq_len, "vocab_size": 262,
        "encoder": {
            "num_self_attends_per_block": draw(st.integers(1, 2)), "num_blocks": draw(st.integers(1, 2)),
            "z_index_dim": draw(st.integers(1, 6)), "num_z_channels": z_channels,
            "num_self_attend_heads": heads, "num_cross_attend_heads": heads,
            # Self-attention outputs v_channels (default: qk_channels, default: num_z_channels) channels,
            # which its residual needs to be num_z_channels.
            "qk_channels": (qk := draw(channels)), "v_channels": draw(st.sampled_from([None, z_channels]))
            if qk is None else z_channels,
            "use_query_residual": draw(st.booleans()),
            "cross_attend_widening_factor": draw(st.integers(1, 2)),
            "self_attend_widening_factor": draw(st.integers(1, 2)),
        },
        "decoder": {
            "output_num_channels": d_model, "position_encoding_type": "trainable", "output_index_dims": max_seq_len,
            "num_z_channels": z_channels, "qk_channels": draw(channels), "v_channels": draw(channels),
            "num_heads": heads, "final_project": final_project, "use_query_residual": draw(st.booleans()),
            "trainable_position_encoding_kwargs": {"num_channels": query_channels},
        },
    }


test_language_parity_hypothesis = hypothesis_parity_test("language", language_configs(), max_examples=2)
test_language_parity_hypothesis_more = hypothesis_parity_test("language", language_configs(), max_examples=12,
                                                              slow=True)
