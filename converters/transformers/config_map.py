"""Our config (the golden config.json layout) <-> transformers' PerceiverConfig fields.

transformers builds each of its six Perceiver classes with some sizes fixed in code (the
language decoder's 256 query/key channels and 8 heads, 64 Fourier bands for images and flow,
192/32 for video, ...). `to_hf` refuses a config that differs from those, naming every
difference; `from_hf` rebuilds the config DeepMind's colab uses for that class (the presets'
layout), refusing transformers configs our model cannot represent.

An export's config.json also holds our own config under `perceiver_torch` (sizes transformers' fields
cannot hold). transformers' fields are the truth: the key is used only while they agree with it, since
transformers keeps it unchanged through a fine-tune with a new head (`num_labels=...`) and `save_pretrained`.
"""

from __future__ import annotations

import inspect
import logging
import reprlib

from perceiver_torch.config_schema import ConfigError, validate_config
from perceiver_torch.foreign_checkpoints import TRANSFORMERS_TASKS
from perceiver_torch.layers.encoder import PerceiverEncoder
from perceiver_torch.message_text import problem_lines

log = logging.getLogger(__name__)

# The class transformers uses for each task (and ImageNet variant, by prep_type). The class -> task table is the
# runtime's, which names this converter's command for a transformers directory given to load_model.
PREP_TYPES = {
    "PerceiverForImageClassificationLearned": "conv1x1",
    "PerceiverForImageClassificationFourier": "pixels",
    "PerceiverForImageClassificationConvProcessing": "conv",
}
ARCHITECTURES = {name: (task, PREP_TYPES.get(name)) for name, task in TRANSFORMERS_TASKS.items()}
LEARNED_CLASS = "PerceiverForImageClassificationLearned"
# The tanh GELU our model (and jax.nn.gelu's default) computes; torch's kernel, bit-equal to ours.
TANH_GELU = "gelu_pytorch_tanh"
GELUS = ("gelu", "gelu_new", "gelu_fast", "gelu_pytorch_tanh", "gelu_python")
# Where an exported config.json keeps our own config, so that importing it back is exact.
OWN_KEY = "perceiver_torch"


class ConfigMismatchError(ValueError):
    """A config that the other side cannot represent; lists every difference."""

    def __init__(self, problems: list[str], context: str):
        self.problems, self.context = problems, context
        super().__init__(f"{context}: {len(problems)} problem(s)" + problem_lines(problems))


_ENCODER_DEFAULTS = {name: p.default for name, p in inspect.signature(PerceiverEncoder).parameters.items()
                     if p.default is not inspect.Parameter.empty}
# encoder kwarg -> PerceiverConfig field
_ENCODER_FIELDS = {
    "z_index_dim": "num_latents", "num_z_channels": "d_latents", "num_blocks": "num_blocks",
    "num_self_attends_per_block": "num_self_attends_per_block", "num_self_attend_heads": "num_self_attention_heads",
    "num_cross_attend_heads": "num_cross_attention_heads", "qk_channels": "qk_channels",
    "v_channels": "v_channels", "cross_attention_shape_for_attn": "cross_attention_shape_for_attention",
    "self_attend_widening_factor": "self_attention_widening_factor",
    "cross_attend_widening_factor": "cross_attention_widening_factor", "use_query_residual": "use_query_residual",
}


def _architecture(task: str, config: dict) -> str:
    prep_type = config.get("input_preprocessor", {}).get("prep_type", "conv") if task == "imagenet" else None
    for name, (arch_task, variant) in ARCHITECTURES.items():
        if arch_task == task and variant == prep_type:
            return name
    raise ConfigMismatchError([f"transformers has no Perceiver class for task {task!r}"
                               + (f" with prep_type {prep_type!r}" if prep_type else "")], "cannot export")


class _Checker:
    """Collects 'config X is A, transformers fixes it at B' differences."""

    def __init__(self):
        self.problems: list[str] = []

    def fixed(self, where: str, got, expected) -> None:
        if _norm(got) != _norm(expected):
            self.problems.append(f"{where} is {got!r}; transformers fixes it at {expected!r}")


def _norm(value):
    return list(value) if isinstance(value, tuple) else value


def _encoder_fields(config: dict, check: _Checker) -> dict:
    enc = config["encoder"]
    fields = {hf: enc.get(ours, _ENCODER_DEFAULTS[ours]) for ours, hf in _ENCODER_FIELDS.items()}
    check.fixed("encoder.dropout_prob", enc.get("dropout_prob", 0.0), 0.0)
    return fields


def _fourier(kwargs: dict, where: str, check: _Checker, num_bands: int, max_resolution) -> None:
    check.fixed(f"{where}.num_bands", kwargs.get("num_bands"), num_bands)
    check.fixed(f"{where}.max_resolution", kwargs.get("max_resolution"), max_resolution)
    check.fixed(f"{where}.concat_pos", kwargs.get("concat_pos", True), True)
    check.fixed(f"{where}.sine_only", kwargs.get("sine_only", False), False)


def _classifier_decoder(dec: dict, d_latents: int, check: _Checker) -> None:
    check.fixed("decoder.position_encoding_type", dec.get("position_encoding_type", "trainable"), "trainable")
    check.fixed("decoder.trainable_position_encoding_kwargs.num_channels",
                dec.get("trainable_position_encoding_kwargs", {}).get("num_channels"), d_latents)
    for key, default in (("num_heads", 1), ("qk_channels", None), ("v_channels", None), ("final_project", True)):
        check.fixed(f"decoder.{key}", dec.get(key, default), default)


def _imagenet(config: dict, fields: dict, check: _Checker) -> None:
    prep, dec = config["input_preprocessor"], config["decoder"]
    height, width = (int(s) for s in config["image_size"])
    check.fixed("image_size (height == width)", height, width)
    fields["num_labels"] = int(config["num_classes"])
    if not fields["num_labels"]:  # reset_classifier(0)'s headless model: no size to leave to the caller
        raise ConfigMismatchError(["num_classes is 0 (no classifier); transformers' image classifiers always have "
                                   "one"], "cannot export this imagenet config to transformers")
    _classifier_decoder(dec, fields["d_latents"], check)
    prep_type = prep.get("prep_type", "conv")
    check.fixed("input_preprocessor.concat_or_add_pos", prep.get("concat_or_add_pos", "concat"), "concat")
    check.fixed("input_preprocessor.n_extra_pos_mlp", prep.get("n_extra_pos_mlp", 0), 0)
    if prep_type == "conv1x1":
        check.fixed("input_preprocessor.num_channels", prep.get("num_channels"), 256)
        check.fixed("input_preprocessor.project_pos_dim", prep.get("project_pos_dim"), 256)
        check.fixed("input_preprocessor.position_encoding_type", prep.get("position_encoding_type"), "trainable")
        check.fixed("input_preprocessor.trainable_position_encoding_kwargs.num_channels",
                    prep.get("trainable_position_encoding_kwargs", {}).get("num_channels"), 256)
        check.fixed("input_preprocessor.spatial_downsample", prep.get("spatial_downsample", 4), 1)
        # Only this class reads image_size: its position table has image_size**2 rows.
        fields.update(d_model=512, image_size=height)
    else:
        check.fixed("input_preprocessor.position_encoding_type", prep.get("position_encoding_type", "fourier"),
                    "fourier")
        resolution, downsample = ((56, 56), 4) if prep_type == "conv" else ((224, 224), 1)
        _fourier(prep.get("fourier_position_encoding_kwargs", {}), "input_preprocessor.fourier_position_encoding_"
                 "kwargs", check, 64, resolution)
        check.fixed("input_preprocessor.spatial_downsample", prep.get("spatial_downsample", 4), downsample)
        check.fixed("input_preprocessor.project_pos_dim", prep.get("project_pos_dim", -1), -1)
        if prep_type == "conv":
            check.fixed("input_preprocessor.num_channels", prep.get("num_channels", 64), 64)
            check.fixed("input_preprocessor.conv2d_use_batchnorm", prep.get("conv2d_use_batchnorm", True), True)
        fields["d_model"] = (64 if prep_type == "conv" else 3) + 2 + 2 * 2 * 64


def _language(config: dict, fields: dict, check: _Checker) -> None:
    d_model, dec = config["d_model"], config["decoder"]
    fields.update(d_model=d_model, vocab_size=config["vocab_size"], max_position_embeddings=config["max_seq_len"])
    for key, expected in (("qk_channels", 256), ("num_heads", 8), ("v_channels", d_model),
                          ("output_index_dims", config["max_seq_len"]), ("final_project", False),
                          ("use_query_residual", False), ("position_encoding_type", "trainable"),
                          ("num_z_channels", fields["d_latents"])):
        check.fixed(f"decoder.{key}", _norm(dec.get(key, expected)), expected)
    check.fixed("decoder.trainable_position_encoding_kwargs.num_channels",
                dec.get("trainable_position_encoding_kwargs", {}).get("num_channels"), d_model)


def _optical_flow(config: dict, fields: dict, check: _Checker) -> None:
    fields.update(train_size=[int(s) for s in config["train_size"]], d_model=64 + 2 + 2 * 2 * 64)
    check.fixed("num_bands", config["num_bands"], 64)
    check.fixed("rescale_factor", config["rescale_factor"], 100.0)
    for key, default in (("num_heads", 1), ("qk_channels", None), ("v_channels", None)):
        check.fixed(f"decoder.{key}", config.get("decoder", {}).get(key, default), default)


def _video(config: dict, fields: dict, check: _Checker) -> None:
    frames, size = config["num_frames"], config["image_size"]
    # transformers' multimodal class reads image_size only as the image Fourier features' resolution
    # (the frame size comes from output_shape): set to the colab's resolution, it computes as upstream.
    fields.update(num_frames=frames, image_size=config.get("image_position_resolution", size),
                  audio_samples_per_frame=config["audio_samples_per_frame"],
                  samples_per_patch=config["samples_per_patch"], num_labels=config["num_classes"],
                  output_shape=[1, frames, size, size], output_num_channels=config["decoder_output_channels"],
                  _label_trainable_num_channels=config["decoder_z_channels"])
    audio_channels = config["samples_per_patch"] + 1 + 2 * 192
    image_channels = 3 * 4 * 4 + 3 + 3 * 2 * 32
    fields["d_model"] = max(audio_channels, image_channels, config["num_classes"]) + 4  # as the Hub's config
    check.fixed("audio_bands", config["audio_bands"], 192)
    check.fixed("image_bands", config["image_bands"], 32)


_TASK_FIELDS = {"language": _language, "imagenet": _imagenet, "optical_flow": _optical_flow,
                "video_autoencoding": _video}


def to_hf(task: str, config: dict, strict: bool = True) -> tuple[str, dict]:
    """(transformers class name, PerceiverConfig kwargs) for our `config`; refuses what transformers fixes.

    With strict=False the sizes transformers fixes are left to the caller (`hf_model.sized_like`).
    """
    architecture = _architecture(task, config)
    check = _Checker()
    fields = _encoder_fields(config, check)
    _TASK_FIELDS[task](config, fields, check)
    if check.problems and strict:
        raise ConfigMismatchError(check.problems, f"cannot export this {task} config to {architecture}")
    fields["hidden_act"] = TANH_GELU
    return architecture, fields


def _encoder_config(hf: dict, keys: tuple[str, ...]) -> dict:
    """Our encoder kwargs, in the presets' layout: `keys` always, the others when not upstream's default."""
    enc = {}
    for ours, field in _ENCODER_FIELDS.items():
        value = hf.get(field, _ENCODER_DEFAULTS[ours])
        if ours in keys or value != _ENCODER_DEFAULTS[ours]:
            enc[ours] = value
    return enc


_COMMON = ("num_blocks", "num_cross_attend_heads", "num_self_attend_heads", "num_self_attends_per_block",
           "num_z_channels", "z_index_dim", "cross_attend_widening_factor", "self_attend_widening_factor")
_VISION = (*_COMMON, "cross_attention_shape_for_attn")
_VISION_EXTRA = {"dropout_prob": 0.0, "z_pos_enc_init_scale": 0.02}


def _from_language(hf: dict) -> dict:
    d_model, d_latents = hf["d_model"], hf["d_latents"]
    return {
        "d_model": d_model, "max_seq_len": hf["max_position_embeddings"], "vocab_size": hf["vocab_size"],
        "encoder": _encoder_config(hf, (*_COMMON, "qk_channels", "v_channels", "use_query_residual")),
        "decoder": {"final_project": False, "num_heads": 8, "num_z_channels": d_latents,
                    "output_index_dims": hf["max_position_embeddings"], "output_num_channels": d_latents,
                    "position_encoding_type": "trainable", "qk_channels": 256,
                    "trainable_position_encoding_kwargs": {"num_channels": d_model}, "use_query_residual": False,
                    "v_channels": d_model},
    }


def _fourier_kwargs(resolution) -> dict:
    return {"concat_pos": True, "max_resolution": list(resolution), "num_bands": 64, "sine_only": False}


def _from_imagenet(hf: dict, prep_type: str) -> dict:
    d_latents = hf["d_latents"]
    if prep_type == "conv1x1":
        size = hf["image_size"]
        prep = {"concat_or_add_pos": "concat", "num_channels": 256, "position_encoding_type": "trainable",
                "prep_type": "conv1x1", "project_pos_dim": 256, "spatial_downsample": 1,
                "trainable_position_encoding_kwargs": {"init_scale": 0.02, "num_channels": 256}}
    else:
        # These two classes take any image size; 224 is the crop DeepMind trained and evaluated at.
        size = 224
        prep = {"fourier_position_encoding_kwargs": _fourier_kwargs((56, 56) if prep_type == "conv" else (224, 224)),
                "position_encoding_type": "fourier", "prep_type": prep_type}
        if prep_type == "pixels":
            prep["spatial_downsample"] = 1
    if prep_type == "conv1x1":
        log.warning("%s: transformers' class adds a query residual in its decoder, which DeepMind's colab (and so the "
                    "imported model) does not: the same weights give other logits than in transformers (a model "
                    "trained with it there is changed; DeepMind's released weights were trained without it)",
                    LEARNED_CLASS)
    return {
        "image_size": [size, size], "num_classes": _num_labels(hf), "input_preprocessor": prep,
        "encoder": {**_encoder_config(hf, (*_VISION, "use_query_residual")), **_VISION_EXTRA},
        "decoder": {"num_z_channels": d_latents, "position_encoding_type": "trainable",
                    "trainable_position_encoding_kwargs": {"init_scale": 0.02, "num_channels": d_latents},
                    # The colab builds the learned-position classifier without a query residual.
                    "use_query_residual": prep_type != "conv1x1"},
    }


def _from_optical_flow(hf: dict) -> dict:
    return {"encoder": {**_encoder_config(hf, _VISION), **_VISION_EXTRA},
            "flow_scale_factor": 20, "num_bands": 64, "rescale_factor": 100.0,
            "train_size": [int(s) for s in hf["train_size"]]}


def _from_video(hf: dict) -> dict:
    shape = list(hf.get("output_shape", (1, 16, 224, 224)))
    if len(shape) != 4 or shape[1] != hf["num_frames"] or shape[2] != shape[3]:
        raise ConfigMismatchError([f"output_shape is {shape}; expected [1, num_frames, size, size]"],
                                  "cannot import a video_autoencoding model")
    size = shape[3]
    if hf.get("image_size") != size // 4:
        log.warning("config.json image_size %s makes transformers compute the image Fourier features at "
                    "resolution %s; the imported model uses the colab's %s (the patch grid)",
                    hf.get("image_size"), hf.get("image_size"), size // 4)
    return {
        "audio_bands": 192, "audio_samples_per_frame": hf["audio_samples_per_frame"],
        "decoder_output_channels": hf["output_num_channels"],
        "decoder_z_channels": hf.get("_label_trainable_num_channels", 1024),
        "encoder": {**_encoder_config(hf, _VISION), **_VISION_EXTRA},
        "image_bands": 32, "image_size": size, "nchunks": 128, "num_classes": _num_labels(hf),
        "num_frames": hf["num_frames"], "samples_per_patch": hf["samples_per_patch"],
        # The colab's image Fourier features span the 4x-downsampled patch grid (56 for 224 frames).
        "image_position_resolution": size // 4,
    }


def _num_labels(hf: dict) -> int:
    if "num_labels" in hf:
        return int(hf["num_labels"])
    labels = hf.get("id2label")
    if not isinstance(labels, dict) or not labels:
        raise ConfigMismatchError(["config.json has neither num_labels nor id2label"], "cannot read the classes")
    return len(labels)


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _positive_ints(n: int):
    return lambda value: isinstance(value, list) and len(value) == n and all(map(_positive_int, value))


_POSITIVE = (_positive_int, "a positive integer")
_OPTIONAL_POSITIVE = (lambda v: v is None or _positive_int(v), "a positive integer or null")
# The PerceiverConfig fields from_hf reads, with the JSON type each must have where present: checked
# before any is used, so a wrong type is named here, not met as a TypeError inside the mapping.
_HF_FIELD_TYPES = {
    **{field: _POSITIVE for field in (
        "num_latents", "d_latents", "d_model", "num_blocks", "num_self_attends_per_block",
        "num_self_attention_heads", "num_cross_attention_heads", "self_attention_widening_factor",
        "cross_attention_widening_factor", "vocab_size", "max_position_embeddings", "image_size", "num_labels",
        "num_frames", "audio_samples_per_frame", "samples_per_patch", "output_num_channels",
        "_label_trainable_num_channels")},
    "qk_channels": _OPTIONAL_POSITIVE, "v_channels": _OPTIONAL_POSITIVE,
    "use_query_residual": (lambda v: isinstance(v, bool), "true or false"),
    "cross_attention_shape_for_attention": (lambda v: isinstance(v, str), "a string"),
    "train_size": (_positive_ints(2), "a list of 2 positive integers"),
    "output_shape": (_positive_ints(4), "a list of 4 positive integers"),
    "id2label": (lambda v: isinstance(v, dict), "an object"),
}
_SHOWN = reprlib.Repr()
_SHOWN.maxstring = _SHOWN.maxother = 60  # a hostile value is shown cut short


def _check_field_types(hf: dict, source: str) -> None:
    problems = [f"{field}: found {_SHOWN.repr(hf[field])} ({type(hf[field]).__name__}); expected {what}"
                for field, (ok, what) in _HF_FIELD_TYPES.items() if field in hf and not ok(hf[field])]
    if problems:
        raise ConfigError(problems, source)


def architecture_of(hf: dict, task: str) -> str:
    """The class a transformers config.json names, checked against `task`."""
    names = hf.get("architectures")
    candidates = [name for name, (arch_task, _) in ARCHITECTURES.items() if arch_task == task]
    if names is None and len(candidates) == 1:
        return candidates[0]
    if not isinstance(names, list) or len(names) != 1 or names[0] not in ARCHITECTURES:
        raise ConfigMismatchError([f"config.json architectures is {names!r}; expected one of {candidates}"],
                                  f"cannot import a {task} model")
    if ARCHITECTURES[names[0]][0] != task:
        raise ConfigMismatchError([f"config.json names {names[0]}, a {ARCHITECTURES[names[0]][0]} model, "
                                   f"not {task}"], f"cannot import a {task} model")
    return names[0]


def from_hf(task: str, hf: dict, source: str = "config.json") -> tuple[str, dict]:
    """(architecture, our config) for a transformers config.json (named `source` in errors); refuses what
    our model cannot represent (`ConfigMismatchError`) and fields of the wrong type (`ConfigError`).

    A `perceiver_torch` key is used when the fields agree with it; otherwise (stale) the config is rebuilt
    from the fields, with a warning. A key that is not a valid config for `task` is refused."""
    _check_field_types(hf, source)
    try:
        return _from_hf(task, hf, source)
    except ConfigMismatchError as exc:
        raise ConfigMismatchError(exc.problems, f"{source}: {exc.context}") from None


def _from_hf(task: str, hf: dict, source: str) -> tuple[str, dict]:
    architecture = architecture_of(hf, task)
    if hf.get("model_type") != "perceiver":
        raise ConfigMismatchError([f"model_type is {hf.get('model_type')!r}, not 'perceiver'"], "cannot import")
    act = hf.get("hidden_act", "gelu")
    if act not in GELUS:
        raise ConfigMismatchError([f"hidden_act is {act!r}; the Perceiver IO release uses a GELU ({GELUS})"],
                                  "cannot import")
    variant = ARCHITECTURES[architecture][1]
    try:
        if OWN_KEY in hf:
            own = _own_config(hf, task, source)
            stale = _mismatches(task, hf, architecture, own)
            if not stale:  # our own config, exact (sizes transformers' fields cannot hold, e.g. image_size)
                return architecture, own
            relabelled = _with_labels_of(task, hf, own)
            if relabelled is not None and not _mismatches(task, hf, architecture, relabelled):
                # A new head (num_labels=...) is the one change fine-tuning in transformers makes to the fields:
                # what only the key holds (a classifier's image size, the video decoder's chunks) is kept.
                log.warning("%s: its %s config has %s classes, its transformers fields %s (a new head, fitted in "
                            "transformers after export); importing with the fields' classes", source, OWN_KEY,
                            own["num_classes"], relabelled["num_classes"])
                return architecture, relabelled
            # transformers' fields are what its classes build from: a model fine-tuned in transformers after the
            # export (a new head, num_labels=...) and saved again keeps the old key unchanged.
            log.warning("%s: its %s config disagrees with its transformers fields (%s); importing from the fields "
                        "(the model was changed in transformers after export)", source, OWN_KEY,
                        "; ".join(stale[:3]) + (f"; and {len(stale) - 3} more" if len(stale) > 3 else ""))
        if task == "imagenet":
            config = _from_imagenet(hf, variant)
        else:
            config = {"language": _from_language, "optical_flow": _from_optical_flow,
                      "video_autoencoding": _from_video}[task](hf)
        problems = _mismatches(task, hf, architecture, config)
    except KeyError as exc:
        raise ConfigMismatchError([f"config.json lacks {exc.args[0]!r}"], f"cannot import a {task} model") from None
    except (TypeError, AttributeError) as exc:  # a gap in the type checks above: still named, never a traceback
        raise ConfigMismatchError([f"a field has an unusable value ({type(exc).__name__}: {exc})"],
                                  f"cannot import a {task} model") from None
    if problems:
        raise ConfigMismatchError(problems, f"config.json does not describe a model ours can represent ({task})")
    return architecture, config


def _mismatches(task: str, hf: dict, architecture: str, config: dict) -> list[str]:
    """How the transformers fields `hf` differ from those our `config` exports to (none: they describe it)."""
    try:  # the config must be one transformers' class builds with these fields
        exported_arch, fields = to_hf(task, config)
    except ConfigMismatchError as exc:
        return exc.problems
    view = dict(hf)
    if "num_labels" in fields:
        view["num_labels"] = _num_labels(hf)
    # hidden_act is checked above; only the language model reads d_model (the others take their
    # input width from their preprocessor), so elsewhere it is informational.
    unread = {"hidden_act"} | ({"d_model"} if task != "language" else set())
    if task == "video_autoencoding":  # the Fourier resolution only: we use the colab's (catalog: video_positions)
        unread.add("image_size")
    problems = [f"config.json {key} is {view.get(key, '<absent>')!r}; {architecture} with this config has "
                f"{value!r}" for key, value in fields.items()
                if key not in unread and _norm(view.get(key, _hf_default(key))) != _norm(value)]
    if exported_arch != architecture:
        problems.append(f"config.json names {architecture}, the config describes {exported_arch}")
    return problems


def _with_labels_of(task: str, hf: dict, own: dict) -> dict | None:
    """`own` with the class count of the fields `hf`, where the task has classes and the result is a valid config;
    else None."""
    if "num_classes" not in own:
        return None
    try:
        return validate_config(task, {**own, "num_classes": _num_labels(hf)})
    except (ConfigError, ConfigMismatchError, TypeError, ValueError):
        return None


def _own_config(hf: dict, task: str, source: str) -> dict:
    own = hf[OWN_KEY]
    if not isinstance(own, dict) or own.get("task") != task or not isinstance(own.get("config"), dict):
        raise ConfigMismatchError([f"config.json {OWN_KEY} must be {{'task': {task!r}, 'config': {{...}}}}; "
                                   f"got {_SHOWN.repr(own)}"], "cannot import")
    # Checked against our schema before to_hf reads it (a missing or mistyped key is named by its path).
    return validate_config(task, own["config"], source=f"{source} {OWN_KEY}.config")


def _hf_default(key: str):
    """PerceiverConfig's default for a field a config.json leaves out."""
    from_fields = {"_label_trainable_num_channels": 1024, "image_size": 56}
    return from_fields.get(key, "<absent>")
