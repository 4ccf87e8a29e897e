"""Haiku video autoencoding colab -> PerceiverForMultimodalAutoencoding."""

from __future__ import annotations

from ..rules import LINEAR, POSITION_TABLE, ModuleRule, basic_decoder_rules, encoder_rules

MODALITIES = ("audio", "image", "label")
POSTPROCESSORS = {"audio": "audio_postprocessor", "image": "projection_postprocessor",
                  "label": "classification_postprocessor"}


def rules(config: dict) -> list[ModuleRule]:
    table = encoder_rules("encoder", "encoder", config["encoder"].get("num_self_attends_per_block", 6))
    for m in MODALITIES:
        table += [
            ModuleRule(f"multimodal_preprocessor/{m}_padding", f"input_preprocessor.padding.{m}", POSITION_TABLE),
            ModuleRule(f"multimodal_preprocessor/{m}_mask_token", f"input_preprocessor.mask_tokens.{m}",
                       POSITION_TABLE),
            ModuleRule(f"multimodal_decoder/~decoder_query/{m}_padding", f"decoder.padding.{m}", POSITION_TABLE),
            ModuleRule(f"{POSTPROCESSORS[m]}/linear", f"output_postprocessor.modalities.{m}.linear", LINEAR),
        ]
    # Only the label's ClassificationDecoder has parameters of its own: its trainable query table.
    table.append(ModuleRule("classification_decoder/~/basic_decoder/~/trainable_position_encoding",
                            "decoder.modalities.label.output_queries", POSITION_TABLE))
    table += basic_decoder_rules("multimodal_decoder/~/basic_decoder", "decoder.decoder",
                                 trainable_queries=False, final_project=True)
    return table


IGNORED: list = []
