"""Haiku optical-flow colab -> PerceiverForOpticalFlow."""

from __future__ import annotations

from ..rules import LINEAR, ModuleRule, basic_decoder_rules, encoder_rules


def rules(config: dict) -> list[ModuleRule]:
    return [
        ModuleRule("image_preprocessor/patches_linear", "input_preprocessor.patches_linear", LINEAR),
        *encoder_rules("perceiver_encoder", "encoder", config["encoder"].get("num_self_attends_per_block", 6)),
        # The flow head: upstream zero-initialises `output`, but a trained checkpoint holds real values.
        *basic_decoder_rules("flow_decoder/~/basic_decoder", "decoder.decoder", trainable_queries=False,
                             final_project=True),
    ]


IGNORED: list = []
