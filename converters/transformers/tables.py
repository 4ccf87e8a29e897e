"""Declarative tables between transformers' Perceiver state dicts and ours, one per task.

A row is `ModuleRule(hf_module, our_module, kind)`; a kind's `Leaf(hf_name, our_name,
transform)` says which tensor of the module goes where. Both directions are read from the
same rows: importing applies each transform, exporting applies it again, so every transform
here is its own inverse (checked by `export_rules`). `strict_merge` does the checking: every
tensor used once, every target filled, every shape equal.
"""

from __future__ import annotations

import numpy as np

from ..rules import Ignored, Leaf, ModuleRule, identity, takes


@takes("[O, I, A, B] (rank 4)", lambda shape: len(shape) == 4)
def swap_kernel_axes(w: np.ndarray) -> np.ndarray:
    """Conv kernel [O, I, A, B] -> [O, I, B, A].

    transformers' conv stem kernel was made by reversing every axis of Haiku's HWIO kernel,
    which gives [O, I, W, H]: spatially transposed relative to torch's [O, I, H, W]. Swapping
    the two spatial axes turns one layout into the other, in either direction.
    """
    return w.swapaxes(2, 3)


INVOLUTIONS = (identity, swap_kernel_axes)

LINEAR = (Leaf("weight", "weight"), Leaf("bias", "bias"))
LAYER_NORM = LINEAR  # weight/bias on both sides
BATCH_NORM = (*LINEAR, Leaf("running_mean", "running_mean"), Leaf("running_var", "running_var"))
STEM_CONV = (Leaf("weight", "weight", swap_kernel_axes),)


def bare(hf_name: str, our_name: str = "embeddings") -> tuple[Leaf, ...]:
    """A parameter that transformers keeps directly on a module (or in a ParameterDict)."""
    return (Leaf(hf_name, our_name),)


ATTENTION = (
    ("attention.self.query", "attention.query", LINEAR),
    ("attention.self.key", "attention.key", LINEAR),
    ("attention.self.value", "attention.value", LINEAR),
    ("attention.output.dense", "attention.output", LINEAR),
    ("mlp.dense1", "mlp.dense1", LINEAR),
    ("mlp.dense2", "mlp.dense2", LINEAR),
    ("layernorm", "mlp_norm", LAYER_NORM),
)
# transformers' cross-attention layer norms its queries (layernorm1) and inputs (layernorm2);
# its self-attention layer has only layernorm1 (layernorm2 is an Identity).
CROSS_ATTENTION = (*ATTENTION, ("attention.self.layernorm1", "query_norm", LAYER_NORM),
                   ("attention.self.layernorm2", "kv_norm", LAYER_NORM))
SELF_ATTENTION = (*ATTENTION, ("attention.self.layernorm1", "norm", LAYER_NORM))


def layer(hf_prefix: str, our_prefix: str, table) -> list[ModuleRule]:
    return [ModuleRule(f"{hf_prefix}.{h}", f"{our_prefix}.{o}", kind) for h, o, kind in table]


def encoder(config: dict) -> list[ModuleRule]:
    rules = [ModuleRule("perceiver.embeddings", "encoder.latents", bare("latents"))]
    rules += layer("perceiver.encoder.cross_attention", "encoder.cross_attend", CROSS_ATTENTION)
    for i in range(config["encoder"].get("num_self_attends_per_block", 6)):
        rules += layer(f"perceiver.encoder.self_attends.{i}", f"encoder.self_attends.{i}", SELF_ATTENTION)
    return rules


def basic_decoder(hf_prefix: str, our_prefix: str, *, queries: bool, final_layer: bool) -> list[ModuleRule]:
    rules = layer(f"{hf_prefix}.decoding_cross_attention", f"{our_prefix}.cross_attend", CROSS_ATTENTION)
    if queries:
        rules.append(ModuleRule(f"{hf_prefix}.output_position_encodings", f"{our_prefix}.output_queries",
                                bare("position_embeddings")))
    if final_layer:
        rules.append(ModuleRule(f"{hf_prefix}.final_layer", f"{our_prefix}.output", LINEAR))
    return rules


def language(config: dict) -> list[ModuleRule]:
    return [
        ModuleRule("perceiver.input_preprocessor.embeddings", "input_preprocessor.embed", LINEAR[:1]),
        ModuleRule("perceiver.input_preprocessor.position_embeddings", "input_preprocessor.positions",
                   (Leaf("weight", "embeddings"),)),
        *encoder(config),
        *basic_decoder("perceiver.decoder", "decoder", queries=True, final_layer=False),
        ModuleRule("embedding_decoder", "embedding_decoder", LINEAR[1:]),
    ]


def imagenet(config: dict) -> list[ModuleRule]:
    prep = "perceiver.input_preprocessor"
    prep_type = config["input_preprocessor"].get("prep_type", "conv")
    rules: list[ModuleRule] = []
    if prep_type == "conv":
        rules += [ModuleRule(f"{prep}.convnet.conv", "input_preprocessor.convnet.convs.0", STEM_CONV),
                  ModuleRule(f"{prep}.convnet.batchnorm", "input_preprocessor.convnet.batchnorms.0", BATCH_NORM)]
    elif prep_type == "conv1x1":
        rules += [ModuleRule(f"{prep}.convnet_1x1", "input_preprocessor.convnet_1x1", LINEAR),
                  ModuleRule(f"{prep}.position_embeddings", "input_preprocessor.position_encoding.base",
                             bare("position_embeddings")),
                  ModuleRule(f"{prep}.positions_projection", "input_preprocessor.position_encoding.projection",
                             LINEAR)]
    return [*rules, *encoder(config),
            *basic_decoder("perceiver.decoder.decoder", "decoder", queries=True, final_layer=True)]


def optical_flow(config: dict) -> list[ModuleRule]:
    return [ModuleRule("perceiver.input_preprocessor.conv_after_patches", "input_preprocessor.patches_linear", LINEAR),
            *encoder(config),
            *basic_decoder("perceiver.decoder.decoder", "decoder.decoder", queries=False, final_layer=True)]


MODALITIES = ("audio", "image", "label")


def video_autoencoding(config: dict) -> list[ModuleRule]:
    rules = encoder(config)
    for m in MODALITIES:
        rules += [
            ModuleRule("perceiver.input_preprocessor.padding", f"input_preprocessor.padding.{m}", bare(m)),
            ModuleRule("perceiver.input_preprocessor.mask", f"input_preprocessor.mask_tokens.{m}", bare(m)),
            ModuleRule("perceiver.decoder.padding", f"decoder.padding.{m}", bare(m)),
            ModuleRule(f"perceiver.output_postprocessor.modalities.{m}.classifier",
                       f"output_postprocessor.modalities.{m}.linear", LINEAR),
        ]
    rules.append(ModuleRule("perceiver.decoder.modalities.label.decoder.output_position_encodings",
                            "decoder.modalities.label.output_queries", bare("position_embeddings")))
    return rules + basic_decoder("perceiver.decoder.decoder", "decoder.decoder", queries=False, final_layer=True)


TABLES = {"language": language, "imagenet": imagenet, "optical_flow": optical_flow,
          "video_autoencoding": video_autoencoding}

# The batch norm's update counter: transformers keeps it, upstream and our model do not (inference never
# reads it). Import leaves it out; export writes 0, the value a freshly built BatchNorm2d holds.
BATCHES_TRACKED = "perceiver.input_preprocessor.convnet.batchnorm.num_batches_tracked"


def hf_only(task: str, config: dict) -> list[Ignored]:
    if task == "imagenet" and config["input_preprocessor"].get("prep_type", "conv") == "conv":
        return [Ignored(BATCHES_TRACKED, "BatchNorm2d's update counter; inference does not read it")]
    return []


def import_rules(task: str, config: dict) -> list[ModuleRule]:
    return TABLES[task](config)


def export_rules(task: str, config: dict) -> list[ModuleRule]:
    """The same rows read the other way: our module -> transformers' module."""
    rules = []
    for rule in import_rules(task, config):
        leaves = []
        for leaf in rule.kind:
            if leaf.transform not in INVOLUTIONS:
                raise AssertionError(f"{leaf.transform.__name__} is not known to be its own inverse")
            leaves.append(Leaf(leaf.torch_name, leaf.haiku_name, leaf.transform))
        rules.append(ModuleRule(rule.torch_module, rule.haiku_module, tuple(leaves)))
    return rules


def torch_key(collection: str, module: str, name: str) -> str:
    """State-dict naming (the `collection` of a Leaf is unused on the torch side)."""
    return f"{module}.{name}"
