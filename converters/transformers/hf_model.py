"""transformers' own Perceiver classes, loaded with our weights, with each divergence switchable.

`sized_like` lets transformers build a class at sizes its code fixes (the golden fixtures' 4
Fourier bands, 32 query/key channels in the language decoder, ...) by patching, while the class
is constructed, the few module-level helpers those sizes pass through. Everything else, and
every forward pass, is transformers' code unchanged. `switch` then turns individual
divergences (catalog.py) off on a built model, so each one's effect can be measured alone.
"""

from __future__ import annotations

import math
from contextlib import ExitStack, contextmanager
from unittest import mock

import torch
import torch.nn.functional as F
import transformers
from transformers.activations import ACT2FN
from transformers.models.perceiver import modeling_perceiver as mp

from perceiver_torch.layers.image import same_padding

from .config_map import TANH_GELU, to_hf
from .label_names import label_fields
from .tables import swap_kernel_axes


def _fourier_sizes(task: str, config: dict):
    """kwargs -> kwargs for the Fourier encodings transformers' class builds, keyed by its fixed band counts."""
    if task == "imagenet":
        ours = config["input_preprocessor"].get("fourier_position_encoding_kwargs", {})
        return lambda kw: {**kw, **ours, "max_resolution": tuple(ours.get("max_resolution", kw["max_resolution"]))}
    if task == "optical_flow":
        return lambda kw: {**kw, "num_bands": config["num_bands"]}
    if task == "video_autoencoding":
        bands = {192: config["audio_bands"], 32: config["image_bands"]}
        return lambda kw: {**kw, "num_bands": bands[kw["num_bands"]]}
    return lambda kw: kw


@contextmanager
def sized_like(task: str, config: dict):
    """While active, transformers' Perceiver classes build at `config`'s sizes instead of their fixed ones."""
    fourier = _fourier_sizes(task, config)
    build_position_encoding, image_preprocessor, basic_decoder = (
        mp.build_position_encoding, mp.PerceiverImagePreprocessor, mp.PerceiverBasicDecoder)

    def position_encoding(position_encoding_type, **kwargs):
        if position_encoding_type == "fourier":
            kwargs["fourier_position_encoding_kwargs"] = fourier(kwargs["fourier_position_encoding_kwargs"])
        return build_position_encoding(position_encoding_type, **kwargs)

    def image(hf_config, **kwargs):
        prep = config.get("input_preprocessor", {}) if task == "imagenet" else {}
        if kwargs.get("prep_type") in ("conv", "conv1x1"):
            kwargs["out_channels"] = prep.get("num_channels", 64)
        if kwargs.get("prep_type") == "conv1x1":
            height, width = config["image_size"]
            kwargs.update(project_pos_dim=prep["project_pos_dim"], trainable_position_encoding_kwargs={
                "num_channels": prep["trainable_position_encoding_kwargs"]["num_channels"],
                "index_dims": height * width})
        return image_preprocessor(hf_config, **kwargs)

    def decoder(hf_config, **kwargs):
        if task == "language":  # the masked-LM decoder is the only one built directly by a task class
            dec = config["decoder"]
            kwargs.update(qk_channels=dec["qk_channels"], v_channels=dec["v_channels"], num_heads=dec["num_heads"])
        return basic_decoder(hf_config, **kwargs)

    with ExitStack() as stack:
        stack.enter_context(mock.patch.object(mp, "build_position_encoding", position_encoding))
        stack.enter_context(mock.patch.object(mp, "PerceiverImagePreprocessor", image))
        stack.enter_context(mock.patch.object(mp, "PerceiverBasicDecoder", decoder))
        yield


def hf_config(task: str, config: dict, strict: bool = True, class_names: tuple[str, ...] | None = None
              ) -> tuple[str, transformers.PerceiverConfig]:
    """(architecture, transformers' config) for our `config`; id2label names the classes by `class_names` (the
    model's own), else by the released names where the model has the released class count."""
    architecture, fields = to_hf(task, config, strict=strict)
    return architecture, transformers.PerceiverConfig(**fields, **label_fields(task, config, class_names),
                                                      architectures=[architecture])


def meta_model(task: str, config: dict, strict: bool = True) -> torch.nn.Module:
    """transformers' class for `config` on the meta device (no memory); sized like `config` unless strict."""
    architecture, hf = hf_config(task, config, strict)
    with torch.device("meta"):
        if strict:
            return getattr(transformers, architecture)(hf)
        with sized_like(task, config):
            return getattr(transformers, architecture)(hf)


def load(task: str, config: dict, hf_state: dict[str, torch.Tensor], strict: bool = True) -> torch.nn.Module:
    """transformers' model for `config` holding `hf_state` (transformers' names), in eval mode."""
    model = meta_model(task, config, strict).to_empty(device="cpu")
    model.load_state_dict(hf_state, strict=True)
    return model.eval()


# -- switching divergences off ---------------------------------------------------------------------

def _upstream_stem(stem: torch.nn.Module):
    """Conv2DDownsample.forward with TF 'SAME' padding for the conv and the max pool, as upstream."""
    def forward(x: torch.Tensor) -> torch.Tensor:
        pads = [same_padding(size, 7, 2) for size in x.shape[-2:]]
        x = F.conv2d(F.pad(x, (*pads[1], *pads[0])), stem.conv.weight, stem.conv.bias, stride=2)
        x = stem.relu(stem.batchnorm(x))
        pads = [same_padding(size, 3, 2) for size in x.shape[-2:]]
        return F.max_pool2d(F.pad(x, (*pads[1], *pads[0]), value=-math.inf), 3, stride=2)
    return forward


def switch_off(model: torch.nn.Module, task: str, config: dict, off: set[str]) -> torch.nn.Module:
    """Make `model` compute as upstream for each divergence in `off` and as the Hub's model for the others
    (model-side ones only; the GELU and video resolution are set either way)."""
    act = ACT2FN[TANH_GELU] if "gelu" in off else ACT2FN["gelu"]
    for module in model.modules():
        if isinstance(module, mp.PerceiverMLP):
            module.intermediate_act_fn = act
    prep = getattr(model.perceiver, "input_preprocessor", None)
    if "conv_kernel" in off and hasattr(prep, "convnet"):
        weight = prep.convnet.conv.weight
        with torch.no_grad():  # a copy first: the swapped view shares the weight's memory
            weight.copy_(torch.from_numpy(swap_kernel_axes(weight.detach().numpy()).copy()))
    if "conv_padding" in off and hasattr(prep, "convnet"):
        prep.convnet.forward = _upstream_stem(prep.convnet)
    if "query_residual" in off and task == "imagenet":
        model.perceiver.decoder.decoder.decoding_cross_attention.attention.use_query_residual = \
            config["decoder"].get("use_query_residual", False)
    if task == "video_autoencoding":  # on: the frame size, as transformers' class with image_size = frame size
        size = config.get("image_position_resolution", config["image_size"]) if "video_positions" in off \
            else config["image_size"]
        for module in model.modules():
            if isinstance(module, mp.PerceiverFourierPositionEncoding) and len(module.max_resolution) == 3:
                module.max_resolution = (config["num_frames"], size, size)
    return model
