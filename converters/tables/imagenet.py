"""Haiku ImageNet colab (three released variants) -> PerceiverForImageClassification."""

from __future__ import annotations

from ..rules import Ignored, ModuleRule, basic_decoder_rules, encoder_rules, image_preprocessor_rules


def rules(config: dict) -> list[ModuleRule]:
    decoder = config["decoder"]
    return [
        *image_preprocessor_rules("image_preprocessor", "input_preprocessor", config["input_preprocessor"]),
        *encoder_rules("perceiver_encoder", "encoder", config["encoder"].get("num_self_attends_per_block", 6)),
        *basic_decoder_rules(
            "classification_decoder/~/basic_decoder", "decoder",
            trainable_queries=decoder.get("position_encoding_type", "trainable") == "trainable",
            final_project=decoder.get("final_project", True),
        ),
    ]


# Haiku's moving averages keep zero-debiasing bookkeeping next to the average itself. Inference (and
# upstream's evaluation) reads only `average`; `hidden` (the biased running value) and `counter` (the
# update count) matter only for further training updates, which use batch statistics here.
_EMA = "image_preprocessor/~/conv2_d_downsample/~/{batchnorm}/~/{ema}/{leaf}"
IGNORED: list[Ignored] = [
    Ignored(f"state:{_EMA.format(batchnorm=bn, ema=ema, leaf=leaf)}",
            f"Haiku EMA {leaf}: zero-debiasing bookkeeping for training updates; inference uses `average`")
    for bn in ("batchnorm", *(f"batchnorm_{i}" for i in range(1, 4)))
    for ema in ("mean_ema", "var_ema")
    for leaf in ("hidden", "counter")
]
