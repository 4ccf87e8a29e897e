"""Haiku language colab -> PerceiverForMaskedLM."""

from __future__ import annotations

from ..rules import BIAS_ONLY, EMBED, POSITION_TABLE, ModuleRule, basic_decoder_rules, encoder_rules


def rules(config: dict) -> list[ModuleRule]:
    decoder = config["decoder"]
    return [
        ModuleRule("embed", "input_preprocessor.embed", EMBED),
        ModuleRule("trainable_position_encoding", "input_preprocessor.positions", POSITION_TABLE),
        *encoder_rules("perceiver_encoder", "encoder", config["encoder"].get("num_self_attends_per_block", 6)),
        *basic_decoder_rules(
            "basic_decoder", "decoder",
            trainable_queries=decoder.get("position_encoding_type", "trainable") == "trainable",
            final_project=decoder.get("final_project", True),
        ),
        ModuleRule("embedding_decoder", "embedding_decoder", BIAS_ONLY),
    ]


IGNORED: list = []
