"""Declarative conversion: module rules, layout transforms, and a strict merge.

A task's table is a list of `ModuleRule(haiku_module, torch_module, kind)`.
The kind names how each Haiku leaf of that module maps onto a Torch tensor
(`LINEAR`: `w [in, out]` -> `weight [out, in]`, and so on). `strict_merge`
applies a table and fails, listing every problem on both sides, unless every
source array is used exactly once and every target tensor is filled with the
right shape.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from perceiver_torch.layers.image import conv_stem_layers
from perceiver_torch.message_text import problem_lines

from .stored_arrays import StoredArray

Transform = Callable[[np.ndarray], np.ndarray]

logger = logging.getLogger(__name__)


def takes(expects: str, accepts: Callable[[tuple[int, ...]], bool]):
    """Declare the source shapes a transform lays out (checked before it runs: a malformed leaf is a
    reported mismatch, not an IndexError from inside numpy) and how a message describes them."""
    def mark(transform: Transform) -> Transform:
        transform.expects, transform.accepts = expects, accepts
        return transform
    return mark


def identity(x: np.ndarray) -> np.ndarray:
    return x


@takes("[in, out] (rank 2)", lambda shape: len(shape) == 2)
def transpose_linear(w: np.ndarray) -> np.ndarray:
    """Haiku Linear w [in, out] -> torch weight [out, in]."""
    return w.T


@takes("[*spatial, in, out] (rank 3 or more)", lambda shape: len(shape) >= 3)
def conv_hwio_to_oihw(w: np.ndarray) -> np.ndarray:
    """Haiku ConvND kernel [*spatial, in, out] -> torch [out, in, *spatial]."""
    nd = w.ndim - 2
    return w.transpose(nd + 1, nd, *range(nd))


@takes("[1, ..., 1, C]", lambda shape: len(shape) >= 1 and all(d == 1 for d in shape[:-1]))
def squeeze_to_channels(x: np.ndarray) -> np.ndarray:
    """Batch-norm statistics [1, 1, 1, C] -> [C]."""
    return x.reshape(x.shape[-1])


@dataclass(frozen=True)
class Leaf:
    """One Haiku leaf -> one Torch tensor suffix, via a named transform."""

    haiku_name: str
    torch_name: str
    transform: Transform = identity
    collection: str = "params"  # or "state"


# Module kinds: which leaves a Haiku module of that kind has, and where they go.
LINEAR = (Leaf("w", "weight", transpose_linear), Leaf("b", "bias"))
LINEAR_NO_BIAS = (Leaf("w", "weight", transpose_linear),)
LAYER_NORM = (Leaf("scale", "weight"), Leaf("offset", "bias"))
EMBED = (Leaf("embeddings", "weight"),)
POSITION_TABLE = (Leaf("pos_embs", "embeddings"),)
BIAS_ONLY = (Leaf("bias", "bias"),)
CONV = (Leaf("w", "weight", conv_hwio_to_oihw), Leaf("b", "bias"))
CONV_NO_BIAS = (Leaf("w", "weight", conv_hwio_to_oihw),)
BATCH_NORM = (Leaf("scale", "weight", squeeze_to_channels), Leaf("offset", "bias", squeeze_to_channels))


@dataclass(frozen=True)
class ModuleRule:
    haiku_module: str
    torch_module: str
    kind: tuple[Leaf, ...]


@dataclass(frozen=True)
class Ignored:
    """A source leaf deliberately not converted, with the reason (kept in the table, not hidden)."""

    key: str  # "params:module/name" or "state:module/name"
    reason: str


def join(prefix: str, name: str, sep: str) -> str:
    return f"{prefix}{sep}{name}" if prefix else name


# Sub-tables of upstream blocks, relative to the block's Haiku/Torch paths.
ATTENTION = (
    ("attention/linear", "attention.query", LINEAR),
    ("attention/linear_1", "attention.key", LINEAR),
    ("attention/linear_2", "attention.value", LINEAR),
    ("attention/linear_3", "attention.output", LINEAR),
)
MLP = (
    ("mlp/linear", "mlp.dense1", LINEAR),
    ("mlp/linear_1", "mlp.dense2", LINEAR),
)
# Haiku names layer norms in call order: query, key/value, then pre-MLP.
CROSS_ATTENTION = ATTENTION + MLP + (
    ("layer_norm", "query_norm", LAYER_NORM),
    ("layer_norm_1", "kv_norm", LAYER_NORM),
    ("layer_norm_2", "mlp_norm", LAYER_NORM),
)
SELF_ATTENTION = ATTENTION + MLP + (
    ("layer_norm", "norm", LAYER_NORM),
    ("layer_norm_1", "mlp_norm", LAYER_NORM),
)


def block(haiku_prefix: str, torch_prefix: str, table) -> list[ModuleRule]:
    return [ModuleRule(join(haiku_prefix, h, "/"), join(torch_prefix, t, "."), kind) for h, t, kind in table]


def haiku_indexed(name: str, i: int) -> str:
    """Haiku's unique naming: name, name_1, name_2, ..."""
    return name if i == 0 else f"{name}_{i}"


def encoder_rules(haiku_prefix: str, torch_prefix: str, num_self_attends: int) -> list[ModuleRule]:
    """Rules for an upstream PerceiverEncoder (submodules under '<name>/~/')."""
    rules = [ModuleRule(f"{haiku_prefix}/~/trainable_position_encoding", f"{torch_prefix}.latents", POSITION_TABLE)]
    rules += block(f"{haiku_prefix}/~/cross_attention", f"{torch_prefix}.cross_attend", CROSS_ATTENTION)
    for i in range(num_self_attends):
        rules += block(f"{haiku_prefix}/~/{haiku_indexed('self_attention', i)}",
                       f"{torch_prefix}.self_attends.{i}", SELF_ATTENTION)
    return rules


def basic_decoder_rules(haiku_prefix: str, torch_prefix: str, *, trainable_queries: bool,
                        final_project: bool) -> list[ModuleRule]:
    """Rules for an upstream BasicDecoder named `haiku_prefix`."""
    rules = block(f"{haiku_prefix}/cross_attention", f"{torch_prefix}.cross_attend", CROSS_ATTENTION)
    if trainable_queries:
        rules.append(ModuleRule(f"{haiku_prefix}/~/trainable_position_encoding",
                                f"{torch_prefix}.output_queries", POSITION_TABLE))
    if final_project:
        rules.append(ModuleRule(f"{haiku_prefix}/output", f"{torch_prefix}.output", LINEAR))
    return rules


def haiku_key(collection: str, module: str, name: str) -> str:
    """How a Haiku leaf is named in a flattened checkpoint: 'params:module/name'."""
    return f"{collection}:{module}/{name}"


class ConversionError(ValueError):
    """A checkpoint does not match the model: lists every offending path."""

    def __init__(self, problems: list[str], context: str = ""):
        self.problems = problems
        head = f"conversion failed{f' ({context})' if context else ''}: {len(problems)} problem(s)"
        super().__init__(head + problem_lines(problems))  # names from the file: escaped, clipped, counted


def as_parameter(src: str, value: np.ndarray, problems: list[str]) -> np.ndarray | None:
    """`value` as the float32 parameter it becomes, or None with the reason added to `problems`.

    Every parameter and buffer of the models is float32. Integer and bool arrays cannot be one
    (an int32 weight would silently give logits around 1e11) and are refused; float16 and
    float64 are converted, with a warning; NaN and Inf are refused, also where float64 values
    overflow float32.
    """
    if value.dtype.kind in "iub":
        problems.append(f"{src}: {value.dtype} values where the model holds float32 (integer and bool arrays are "
                        "not parameters)")
        return None
    if value.dtype.kind != "f":
        problems.append(f"{src}: unsupported dtype {value.dtype}; expected float32 (float16 and float64 are "
                        "converted)")
        return None
    converted = value.dtype != np.float32
    if converted:
        logger.warning("%s: converting %s values to float32", src, value.dtype)
    if isinstance(value, StoredArray):  # the same check, made as it is read (its file collects what is refused)
        return value.checked(functools.partial(finite_float32, src))
    return finite_float32(src, value, problems)


def finite_float32(src: str, value: np.ndarray, problems: list[str]) -> np.ndarray | None:
    """Floating `value` as float32, or None with the reason added to `problems` where a value is NaN or Inf."""
    converted = value.dtype != np.float32
    if converted:
        with np.errstate(over="ignore"):  # an overflow becomes Inf, refused just below
            value = value.astype(np.float32)
    if not np.isfinite(value).all():
        problems.append(f"{src}: non-finite values (NaN or Inf){' after conversion to float32' if converted else ''}")
        return None
    return value


def laid_out(src: str, value, transform: Transform, dst: str, expected: tuple[int, ...],
             problems: list[str]):
    """`transform(value)` (planned, for a `StoredArray`), or None with a shape mismatch added to `problems`
    where `value`'s shape is not one the transform takes."""
    shape = tuple(value.shape)
    accepts = getattr(transform, "accepts", None)
    if accepts is None or accepts(shape):
        try:
            return value.then(transform) if isinstance(value, StoredArray) else transform(value)
        except (ValueError, IndexError):  # a transform without a declared shape: still a reported mismatch
            pass
    takes_ = getattr(transform, "expects", "another shape")
    problems.append(f"shape mismatch: checkpoint {src} {shape} -> {dst}: {transform.__name__} takes {takes_}, "
                    f"model expects {tuple(expected)}")
    return None


def strict_merge(
    source: dict[str, np.ndarray],
    target_shapes: dict[str, tuple[int, ...]],
    rules: Iterable[ModuleRule],
    ignored: Iterable[Ignored] = (),
    context: str = "",
    key: Callable[[str, str, str], str] = haiku_key,
) -> dict[str, np.ndarray]:
    """Map `source` ('params:module/name' -> array) onto `target_shapes` (torch key -> shape).

    Every source array must be used exactly once (or be listed in `ignored`),
    every target filled once, every shape equal after its transform, every value a finite
    float (`as_parameter`). The arrays returned are the transforms' results, views of the
    source's arrays where the transform allows (no copy is made here); a `StoredArray` source
    gives a `StoredArray` with the transform and the float32 check planned, done when it is read.
    `key(collection, module, name)` names a source leaf the way `source` does.
    """
    out: dict[str, np.ndarray] = {}
    used: dict[str, str] = {}
    addressed: set[str] = set()  # targets some rule reported on, filled or not
    problems: list[str] = []
    for rule in rules:
        for leaf in rule.kind:
            src = key(leaf.collection, rule.haiku_module, leaf.haiku_name)
            dst = f"{rule.torch_module}.{leaf.torch_name}"
            if src in used:
                problems.append(f"source {src} used twice (for {used[src]} and {dst})")
                continue
            addressed.add(dst)
            if dst in out:
                problems.append(f"target {dst} filled twice (second time from {src})")
                continue
            if src not in source:
                problems.append(f"missing in checkpoint: {src} (needed for {dst})")
                continue
            used[src] = dst
            if dst not in target_shapes:
                problems.append(f"checkpoint {src} maps to {dst}, which the model does not have")
                continue
            value = laid_out(src, source[src], leaf.transform, dst, target_shapes[dst], problems)
            if value is None:
                continue
            if tuple(value.shape) != tuple(target_shapes[dst]):
                problems.append(
                    f"shape mismatch: checkpoint {src} {tuple(source[src].shape)} -> {dst} "
                    f"{tuple(value.shape)}, model expects {tuple(target_shapes[dst])}"
                )
                continue
            value = as_parameter(src, value, problems)
            if value is not None:
                out[dst] = value
    for item in ignored:
        if item.key in source:
            used[item.key] = f"ignored: {item.reason}"
    for src in sorted(set(source) - set(used)):
        problems.append(f"unused in checkpoint: {src} {tuple(source[src].shape)}")
    for dst in sorted(set(target_shapes) - addressed):
        problems.append(f"not filled in model: {dst} {tuple(target_shapes[dst])}")
    if problems:
        raise ConversionError(problems, context)
    return out


# Haiku BatchNorm moving averages (state collection) -> the batch norm's buffers.
EMA_MEAN = (Leaf("average", "running_mean", squeeze_to_channels, "state"),)
EMA_VAR = (Leaf("average", "running_var", squeeze_to_channels, "state"),)


def image_preprocessor_rules(haiku_prefix: str, torch_prefix: str, kwargs: dict) -> list[ModuleRule]:
    """Rules for an upstream ImagePreprocessor built with constructor `kwargs` (a layers.image.ImagePreprocessor).

    Haiku names what the constructor builds '<name>/~/...', what `__call__`
    builds '<name>/...', and what `_build_network_inputs` builds
    '<name>/~_build_network_inputs/...'.
    """
    prep_type = kwargs.get("prep_type", "conv")
    rules: list[ModuleRule] = []
    if prep_type == "conv":
        stem = f"{haiku_prefix}/~/conv2_d_downsample/~"
        for i in range(conv_stem_layers(kwargs.get("spatial_downsample", 4))):
            rules.append(ModuleRule(f"{stem}/{haiku_indexed('conv', i)}", f"{torch_prefix}.convnet.convs.{i}",
                                    CONV_NO_BIAS))
            if kwargs.get("conv2d_use_batchnorm", True):
                bn, target = f"{stem}/{haiku_indexed('batchnorm', i)}", f"{torch_prefix}.convnet.batchnorms.{i}"
                rules += [ModuleRule(bn, target, BATCH_NORM), ModuleRule(f"{bn}/~/mean_ema", target, EMA_MEAN),
                          ModuleRule(f"{bn}/~/var_ema", target, EMA_VAR)]
    elif prep_type == "conv1x1":
        rules.append(ModuleRule(f"{haiku_prefix}/~/conv2_d", f"{torch_prefix}.convnet_1x1", CONV))
    elif prep_type == "patches" and kwargs.get("conv_after_patching", False):
        rules.append(ModuleRule(f"{haiku_prefix}/patches_linear", f"{torch_prefix}.patches_linear", LINEAR))
    positions = f"{haiku_prefix}/~_build_network_inputs"
    projected = kwargs.get("project_pos_dim", -1) > 0
    if kwargs.get("position_encoding_type", "fourier") == "trainable":
        table = f"{torch_prefix}.position_encoding{'.base' if projected else ''}"
        rules.append(ModuleRule(f"{positions}/trainable_position_encoding", table, POSITION_TABLE))
    if projected:
        rules.append(ModuleRule(f"{positions}/position_encoding_projector/linear",
                                f"{torch_prefix}.position_encoding.projection", LINEAR))
    for i in range(kwargs.get("n_extra_pos_mlp", 0)):
        rules.append(ModuleRule(f"{positions}/{haiku_indexed('linear', i)}", f"{torch_prefix}.extra_pos_mlp.{i}",
                                LINEAR))
    return rules
