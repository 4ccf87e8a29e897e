"""The config.json of each task, declared: key types, allowed values, required keys and size bounds.

A config reaches a model from a converted file's metadata, a user's JSON file or a preset, so
it is checked before anything is built. The checks are:

- types exactly as JSON gives them: a bool is not an int, an int is not a str, a float is not an
  int (``"d_model": 768.0`` is refused);
- sizes positive, probabilities in [0, 1), scales finite;
- enum values (``prep_type``, ``position_encoding_type``, ...) from their allowed set;
- sections (``encoder``, ``decoder``, ...) are mappings; unknown keys are refused, listing the
  known ones;
- required keys: the sizes without a default, and every key whose absence would silently change
  outputs without changing any parameter's shape (so that no conversion or load could notice),
  wherever the released and golden configs of that task give it: block counts, heads, query
  residuals, Fourier ``max_resolution``. A missing ``decoder.num_heads`` of a language model
  would otherwise default to 1. Keys whose default shows in the parameters' shapes (widening
  factors, qk/v channels, ``final_project``, ...) and keys the released configs leave out keep
  upstream's default, which is what the release used (the ImageNet decoder's single head, the
  flow encoder's query residual);
- with ``bounded=True`` (the default) every size is capped at a generous multiple of the largest
  released value, so that building and running a model described by an untrusted file stays
  bounded; `check_parameter_count` bounds the total once the model is built on the meta device.

Every problem is collected with its dotted path, what was found and what was expected, and
raised together as one `ConfigError`.
"""

from __future__ import annotations

import math
import reprlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from .strict_json import loads_strict

# The largest released model (language) has 201M parameters; five times that still fits a
# workstation, and no legitimate config of these architectures needs more.
MAX_PARAMETERS = 1_000_000_000


class ConfigError(ValueError):
    """A config does not match its task's schema; `problems` lists each one with its dotted path."""

    def __init__(self, problems: list[str], source: str = "config"):
        self.problems = list(problems)
        self.source = source
        super().__init__(f"{source} is not a valid config: {len(self.problems)} problem(s)\n  "
                         + "\n  ".join(self.problems))


# A hostile value is shown cut short, never in full: strings past 60 characters, containers past 4 items and
# 2 levels (a YAML alias bomb is a few hundred bytes of nested references that repr would expand to gigabytes).
_REPR = reprlib.Repr()  # keyword arguments need Python 3.12
_REPR.maxlevel = 2
_REPR.maxtuple = _REPR.maxlist = _REPR.maxarray = _REPR.maxdict = _REPR.maxset = _REPR.maxfrozenset = 4
_REPR.maxdeque = 4
_REPR.maxstring = _REPR.maxother = 60


def short_repr(value) -> str:
    """`repr(value)`, cut short: how an error message shows a value it did not choose (at most a few hundred
    characters, whatever the value)."""
    return _REPR.repr(value)


def _shown(value) -> str:
    return f"{short_repr(value)} ({type(value).__name__})"


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


class Field:
    def expected(self, bounded: bool) -> str:
        raise NotImplementedError

    def problem(self, value, bounded: bool) -> str | None:
        """None when `value` is acceptable, else what is wrong (without the path)."""
        raise NotImplementedError

    def check(self, value, path: str, problems: list[str], bounded: bool) -> bool:
        reason = self.problem(value, bounded)
        if reason is not None:
            problems.append(f"{path}: found {_shown(value)}; expected {reason}")
        return reason is None


@dataclass(frozen=True)
class Int(Field):
    """An integer (never a bool or a float) in [minimum, cap]; `cap` applies when bounded."""

    minimum: int = 1
    cap: int | None = None
    nullable: bool = False

    def expected(self, bounded: bool) -> str:
        what = f"an integer >= {self.minimum}"
        if bounded and self.cap is not None:
            what += f" and <= {self.cap}"
        return what + (" or null" if self.nullable else "")

    def problem(self, value, bounded: bool) -> str | None:
        if value is None and self.nullable:
            return None
        if type(value) is not int or value < self.minimum or (bounded and self.cap is not None and value > self.cap):
            return self.expected(bounded)
        return None


@dataclass(frozen=True)
class Number(Field):
    """A finite int or float (never a bool) in [minimum, maximum] (`maximum` excluded if `open_max`)."""

    minimum: float = -math.inf
    maximum: float = math.inf
    open_max: bool = False
    open_min: bool = False

    def expected(self, bounded: bool) -> str:
        low = f"{'>' if self.open_min else '>='} {self.minimum}" if self.minimum > -math.inf else ""
        high = f"{'<' if self.open_max else '<='} {self.maximum}" if self.maximum < math.inf else ""
        return "a finite number" + (f" {' and '.join(p for p in (low, high) if p)}" if low or high else "")

    def problem(self, value, bounded: bool) -> str | None:
        if type(value) not in (int, float):
            return self.expected(bounded)
        try:  # an integer beyond float's range (JSON allows any number of digits) is no finite number either
            if not math.isfinite(float(value)):
                return self.expected(bounded)
        except OverflowError:
            return self.expected(bounded)
        too_low = value <= self.minimum if self.open_min else value < self.minimum
        too_high = value >= self.maximum if self.open_max else value > self.maximum
        return self.expected(bounded) if too_low or too_high else None


@dataclass(frozen=True)
class Bool(Field):
    def expected(self, bounded: bool) -> str:
        return "true or false"

    def problem(self, value, bounded: bool) -> str | None:
        return None if type(value) is bool else self.expected(bounded)


@dataclass(frozen=True)
class Choice(Field):
    choices: tuple[str, ...]

    def expected(self, bounded: bool) -> str:
        return f"one of {list(self.choices)}"

    def problem(self, value, bounded: bool) -> str | None:
        return None if type(value) is str and value in self.choices else self.expected(bounded)


@dataclass(frozen=True)
class Ints(Field):
    """A list of `item` integers whose length is one of `lengths`; `scalar_ok` also takes one integer."""

    item: Int
    lengths: tuple[int, ...] = (1, 2, 3)
    scalar_ok: bool = False

    def expected(self, bounded: bool) -> str:
        lengths = " or ".join(map(str, self.lengths))
        scalar = f"{self.item.expected(bounded)} or " if self.scalar_ok else ""
        return f"{scalar}a list of {lengths} integers, each {self.item.expected(bounded)}"

    def problem(self, value, bounded: bool) -> str | None:
        if self.scalar_ok and type(value) is int:
            return None if self.item.problem(value, bounded) is None else self.expected(bounded)
        if not isinstance(value, (list, tuple)) or len(value) not in self.lengths:
            return self.expected(bounded)
        if any(self.item.problem(v, bounded) is not None for v in value):
            return self.expected(bounded)
        return None


Rule = Callable[[Mapping, str, list], None]


@dataclass(frozen=True)
class Section(Field):
    """A mapping with known keys: `fields`, of which `required` must be present; then `rules` across keys."""

    fields: dict[str, Field]
    required: frozenset[str] = frozenset()
    rules: tuple[Rule, ...] = ()

    def expected(self, bounded: bool) -> str:
        return f"a mapping with keys from {sorted(self.fields)}"

    def problem(self, value, bounded: bool) -> str | None:
        return None if isinstance(value, Mapping) else self.expected(bounded)

    def check(self, value, path: str, problems: list[str], bounded: bool) -> bool:
        if not isinstance(value, Mapping):
            problems.append(f"{path or 'config'}: found {_shown(value)}; expected {self.expected(bounded)}")
            return False
        before = len(problems)
        known = sorted(self.fields)
        for key in value:
            if key not in self.fields:
                problems.append(f"{_join(path, str(key))}: unknown key; known keys here: {known}")
        for key in sorted(self.required - set(value)):
            problems.append(f"{_join(path, key)}: missing; expected {self.fields[key].expected(bounded)}")
        for key, spec in self.fields.items():
            if key in value:
                spec.check(value[key], _join(path, key), problems, bounded)
        if len(problems) == before:  # cross-key rules only on individually valid keys
            for rule in self.rules:
                rule(value, path, problems)
        return len(problems) == before


def _needs_kwargs(type_key: str = "position_encoding_type", default: str = "trainable") -> Rule:
    """The position encoding type's kwargs section must be present (upstream raises without it)."""

    def rule(section: Mapping, path: str, problems: list[str]) -> None:
        kind = section.get(type_key, default)
        wanted = {"trainable": "trainable_position_encoding_kwargs", "fourier": "fourier_position_encoding_kwargs"}
        if kind in wanted and wanted[kind] not in section:
            problems.append(f"{_join(path, wanted[kind])}: missing; expected a mapping "
                            f"(required by {type_key}={kind!r})")

    return rule


def _same_latent_width(config: Mapping, path: str, problems: list[str]) -> None:
    """The decoder cross-attends to the encoder's latents: both must agree on their width."""
    encoder, decoder = config.get("encoder", {}), config.get("decoder", {})
    if "num_z_channels" in decoder and "num_z_channels" in encoder and \
            decoder["num_z_channels"] != encoder["num_z_channels"]:
        problems.append(f"decoder.num_z_channels: found {decoder['num_z_channels']}; expected "
                        f"{encoder['num_z_channels']}, the encoder's num_z_channels (the latents it decodes)")


def _decodes_every_position(config: Mapping, path: str, problems: list[str]) -> None:
    """The language decoder's queries are the text's positions: `forward` takes the first T of them, so there
    must be one for each of max_seq_len (fewer would return fewer positions than the text has)."""
    dims, max_len = config.get("decoder", {}).get("output_index_dims"), config.get("max_seq_len")
    found = dims[0] if isinstance(dims, (list, tuple)) else dims
    if found is not None and max_len is not None and found != max_len:
        problems.append(f"decoder.output_index_dims: found {dims}; expected {max_len}, the max_seq_len (one query "
                        "per text position), or left out")


def _classifier_projects(config: Mapping, path: str, problems: list[str]) -> None:
    """An ImageNet classifier's logits are its decoder's final projection, num_classes wide."""
    decoder = config.get("decoder")
    if isinstance(decoder, Mapping) and decoder.get("final_project") is False:
        problems.append("decoder.final_project: found false; expected true (or left out): without the final "
                        "projection the logits would be the decoder query's channels, not num_classes")


# Caps are about 8x the largest released value (more where released values are small).
WIDTH = 8192
HEADS = Int(1, 256)
WIDTH_OR_NULL = Int(1, WIDTH, nullable=True)
INIT_SCALE = Number(0.0, 10.0)
POS_PROJECTION = Int(-1, WIDTH)  # upstream's project_pos_dim: <= 0 means no projection

TRAINABLE_KWARGS = Section({"num_channels": Int(1, WIDTH), "init_scale": INIT_SCALE},
                           frozenset({"num_channels"}))
FOURIER_FIELDS = {
    "num_bands": Int(1, 1024),
    "max_resolution": Ints(Int(1, 65536), (1, 2, 3)),
    "concat_pos": Bool(),
    "sine_only": Bool(),
}
# max_resolution changes the features without changing any shape: required where it is set.
FOURIER_KWARGS = Section(FOURIER_FIELDS, frozenset({"num_bands", "max_resolution"}))

ENCODER_FIELDS: dict[str, Field] = {
    "num_self_attends_per_block": Int(1, 128),
    "num_blocks": Int(1, 64),
    "z_index_dim": Int(1, 16384),
    "num_z_channels": Int(1, WIDTH),
    "qk_channels": WIDTH_OR_NULL,
    "v_channels": WIDTH_OR_NULL,
    "num_cross_attend_heads": HEADS,
    "num_self_attend_heads": HEADS,
    "cross_attend_widening_factor": Int(1, 16),
    "self_attend_widening_factor": Int(1, 16),
    "dropout_prob": Number(0.0, 1.0, open_max=True),
    "z_pos_enc_init_scale": INIT_SCALE,
    "cross_attention_shape_for_attn": Choice(("q", "kv")),
    "use_query_residual": Bool(),
}
# The sizes, and what changes outputs without changing a shape (the block count, the heads). The
# encoder's query residual is on in every release, upstream's default.
ENCODER_REQUIRED = frozenset({
    "num_self_attends_per_block", "num_blocks", "z_index_dim", "num_z_channels", "num_cross_attend_heads",
    "num_self_attend_heads",
})


ENCODER = Section(ENCODER_FIELDS, ENCODER_REQUIRED)


QUERY_FIELDS: dict[str, Field] = {
    "position_encoding_type": Choice(("trainable", "fourier")),
    "trainable_position_encoding_kwargs": TRAINABLE_KWARGS,
    "fourier_position_encoding_kwargs": FOURIER_KWARGS,
    "project_pos_dim": POS_PROJECTION,
    "num_z_channels": Int(1, WIDTH),
    "qk_channels": WIDTH_OR_NULL,
    "v_channels": WIDTH_OR_NULL,
    "use_query_residual": Bool(),
    "num_heads": HEADS,
    "final_project": Bool(),
}

LANGUAGE = Section(
    {
        "d_model": Int(1, WIDTH),
        "max_seq_len": Int(1, 65536),
        "vocab_size": Int(1, 1 << 18),
        "encoder": ENCODER,
        "decoder": Section(
            {**QUERY_FIELDS, "output_num_channels": Int(1, WIDTH),
             "output_index_dims": Ints(Int(1, 65536), (1,), scalar_ok=True)},
            frozenset({"output_num_channels", "use_query_residual", "num_heads"}),
            (_needs_kwargs(),),
        ),
    },
    frozenset({"d_model", "max_seq_len", "vocab_size", "encoder", "decoder"}),
    (_same_latent_width, _decodes_every_position),
)

IMAGE_PREPROCESSOR = Section(
    {
        "prep_type": Choice(("conv", "conv1x1", "pixels", "patches")),
        "spatial_downsample": Int(1, 64),
        "temporal_downsample": Int(1, 16),
        "position_encoding_type": Choice(("trainable", "fourier")),
        "trainable_position_encoding_kwargs": TRAINABLE_KWARGS,
        "fourier_position_encoding_kwargs": FOURIER_KWARGS,
        "project_pos_dim": POS_PROJECTION,
        "n_extra_pos_mlp": Int(0, 16),
        "num_channels": Int(1, WIDTH),
        "conv_after_patching": Bool(),
        "conv2d_use_batchnorm": Bool(),
        "concat_or_add_pos": Choice(("concat", "add")),
    },
    frozenset(),
    (_needs_kwargs(default="fourier"),),
)

IMAGENET = Section(
    {
        "image_size": Ints(Int(1, 2048), (2,)),
        "num_classes": Int(0, 1 << 17),  # 0: no classifier, forward gives the embedding (timm's num_classes=0)
        "input_preprocessor": IMAGE_PREPROCESSOR,
        "encoder": ENCODER,
        "decoder": Section(QUERY_FIELDS, frozenset({"use_query_residual"}), (_needs_kwargs(),)),
    },
    frozenset({"image_size", "num_classes", "input_preprocessor", "encoder", "decoder"}),
    (_same_latent_width, _classifier_projects),
)

OPTICAL_FLOW = Section(
    {
        "train_size": Ints(Int(1, 2048), (2,)),
        "num_bands": Int(1, 1024),
        "flow_scale_factor": Number(0.0, 1e6, open_min=True),
        "rescale_factor": Number(0.0, 1e6, open_min=True),
        "encoder": ENCODER,
        # The flow decoder's cross-attention; upstream's defaults (one head) are the release's.
        "decoder": Section({"num_heads": HEADS, "qk_channels": WIDTH_OR_NULL, "v_channels": WIDTH_OR_NULL}),
    },
    frozenset({"train_size", "num_bands", "flow_scale_factor", "rescale_factor", "encoder"}),
)

VIDEO_AUTOENCODING = Section(
    {
        "num_frames": Int(1, 256),
        "image_size": Int(1, 1024),
        "audio_samples_per_frame": Int(1, 48000),
        "samples_per_patch": Int(1, 4096),
        "num_classes": Int(1, 1 << 17),
        "audio_bands": Int(1, 1024),
        "image_bands": Int(1, 1024),
        "decoder_z_channels": Int(1, WIDTH),
        "decoder_output_channels": Int(1, WIDTH),
        "nchunks": Int(1, 1 << 20),
        "image_position_resolution": Int(1, 4096),
        "encoder": ENCODER,
    },
    frozenset({"num_frames", "image_size", "audio_samples_per_frame", "samples_per_patch", "num_classes",
               "audio_bands", "image_bands", "decoder_z_channels", "decoder_output_channels", "nchunks", "encoder"}),
)

SCHEMAS: dict[str, Section] = {
    "language": LANGUAGE,
    "imagenet": IMAGENET,
    "optical_flow": OPTICAL_FLOW,
    "video_autoencoding": VIDEO_AUTOENCODING,
}


def config_problems(task: str, config, *, bounded: bool = True) -> list[str]:
    """Every problem of `config` for `task` (empty when it is valid)."""
    if type(task) is not str or task not in SCHEMAS:
        return [f"task: found {_shown(task)}; expected one of {list(SCHEMAS)}"]
    problems: list[str] = []
    SCHEMAS[task].check(config, "", problems, bounded)
    return problems


def validate_config(task: str, config, *, source: str = "config", bounded: bool = True) -> dict:
    """`config` itself when it is a valid `task` config, else a `ConfigError` listing every problem."""
    problems = config_problems(task, config, bounded=bounded)
    if problems:
        raise ConfigError(problems, source)
    return config


def check_parameter_count(num_parameters: int, source: str = "config") -> None:
    """Refuse a config whose model (built on the meta device, so costing nothing) is implausibly large."""
    if num_parameters > MAX_PARAMETERS:
        raise ConfigError([f"(whole model): found {num_parameters:,} parameters; expected at most "
                           f"{MAX_PARAMETERS:,}"], source)


def parse_config_json(text: str | bytes, source: str = "config") -> dict:
    """A config from JSON text: an object, without duplicate keys or NaN/Infinity literals; else a `ConfigError`."""
    try:
        value = loads_strict(text)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ConfigError([f"(file): not valid JSON: {exc}"], source) from None
    if not isinstance(value, dict):
        raise ConfigError([f"(file): found {_shown(value)}; expected a JSON object"], source)
    return value
