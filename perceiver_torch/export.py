"""Export a task model as a `torch.export` program (.pt2) or an ONNX graph, with a dynamic batch dimension.

What is exported is each model's `forward` in the model's dtype (float32 unless it was cast; a zoo model
by name takes `dtype=`), eval mode:

- language: `(input_ids [B, T], attention_mask [B, T]) -> logits [B, T, vocab]`, B and T dynamic
  (1 <= T <= max_seq_len);
- imagenet: `images [B, 3, H, W] -> logits [B, num_classes]`;
- optical_flow: the per-tile model `(image1, image2 [B, 3, h, w]) -> flow [B, 2, h, w]` at the training
  size; B counts tiles. `estimate_flow`'s tiling stays in Python: `flow_tiling.stitch_tiles(image1, image2,
  program.module(), train_size)` drives an exported program exactly as it drives the model;
- video_autoencoding: one decoding chunk, `(images, audio, image_points [n], audio_points [m]) ->
  (image [B, n, 3], audio [B, m * samples_per_patch], label [B, num_classes])` (`VideoChunk`), the chunk's
  query indices as inputs of a fixed length (`chunks` per clip); a loop over the chunks rebuilds the clip
  as `autoencode` does.

ONNX goes through torch's exporter (`torch.onnx.export(..., dynamo=True)`), which needs the `onnx` extra.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, cast

import torch
from torch import nn

from .integers import is_int
from .serialization import atomic_write, check_output_path, model_dtype, same_file
from .zoo.create import create_model
from .zoo.pretrained import checkpoint_path, load_file
from .zoo.schema import is_model_name
from .zoo.user_hub import is_hub_name

if TYPE_CHECKING:
    from .models import (
        PerceiverForImageClassification,
        PerceiverForMaskedLM,
        PerceiverForMultimodalAutoencoding,
        PerceiverForOpticalFlow,
    )

log = logging.getLogger(__name__)

FORMATS = ("pt2", "onnx")
# The tracing batch only has to be >= 2 (torch.export specialises 0 and 1): the program takes any batch from 1
# up. A cap keeps a mistyped batch from allocating example inputs of that size.
MAX_TRACE_BATCH = 64


class VideoChunk(nn.Module):
    """The video autoencoder on one decoding chunk, with tensor-only inputs and outputs (for export).

    `forward(images, audio, image_points, audio_points)` is the model's forward with
    `subsample={"image": image_points, "audio": audio_points}`, returning (image, audio, label).
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images, audio, image_points, audio_points):
        out = self.model(images, audio, {"image": image_points, "audio": audio_points})
        return out["image"], out["audio"], out["label"]


def chunk_points(model: nn.Module, chunks: int, index: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The image and audio query indices of decoding chunk `index` of `chunks`, as `autoencode` takes them."""
    if not is_int(chunks) or chunks < 1:
        raise ValueError(f"chunks must be a positive integer; got {chunks!r}.")
    chunks = int(chunks)  # a NumPy integer, say
    model = cast("PerceiverForMultimodalAutoencoding", model)  # the video autoencoder, or a model like it
    if model.num_image_points % chunks or model.num_audio_patches % chunks:
        raise ValueError(f"chunks={chunks} must divide both the {model.num_image_points} image points and the "
                         f"{model.num_audio_patches} audio patches.")
    image_step, audio_step = model.num_image_points // chunks, model.num_audio_patches // chunks
    return (torch.arange(index * image_step, (index + 1) * image_step),
            torch.arange(index * audio_step, (index + 1) * audio_step))


def example_inputs(model: nn.Module, batch: int = 2, *, chunks: int | None = None, seed: int = 0) -> tuple:
    """Random valid inputs of `model`'s task and sizes (float32, CPU): what export traces with."""
    generator = torch.Generator().manual_seed(seed)
    task = getattr(model, "task", None)
    if task == "language":
        model = cast("PerceiverForMaskedLM", model)  # each task's model, or one like it (below too)
        seq_len = max(2, model.config["max_seq_len"] // 2)  # any T <= max_seq_len works once exported
        ids = torch.randint(0, model.config["vocab_size"], (batch, seq_len), generator=generator)
        return ids, torch.ones_like(ids)
    if task == "imagenet":
        model = cast("PerceiverForImageClassification", model)
        return (torch.randn(batch, 3, *model.image_size, generator=generator),)
    if task == "optical_flow":
        model = cast("PerceiverForOpticalFlow", model)
        return tuple(torch.rand(batch, 3, *model.train_size, generator=generator) * 2 - 1 for _ in range(2))
    if task == "video_autoencoding":
        model = cast("PerceiverForMultimodalAutoencoding", model)
        size = model.image_size
        images = torch.rand(batch, model.num_frames, 3, size, size, generator=generator)
        audio = torch.rand(batch, model.num_samples, 1, generator=generator) * 2 - 1
        chunks = int(model.config.get("nchunks", 1)) if chunks is None else chunks  # 0 is refused, not "default"
        return (images, audio, *chunk_points(model, chunks))
    raise ValueError(f"cannot export a {type(model).__name__} (task {task!r}): expected one of the task models "
                     "(language, imagenet, optical_flow, video_autoencoding).")


def _signature(model: nn.Module) -> tuple[list[str], list[str], tuple]:
    """(input names, output names, dynamic shapes) of the exported forward."""
    batch = torch.export.Dim("batch", min=1)  # no upper bound: stitch_tiles may pass thousands of tiles at once
    if model.task == "language":
        model = cast("PerceiverForMaskedLM", model)
        seq = torch.export.Dim("seq", min=1, max=model.config["max_seq_len"])
        return ["input_ids", "attention_mask"], ["logits"], ({0: batch, 1: seq}, {0: batch, 1: seq})
    if model.task == "imagenet":
        return ["images"], ["logits"], ({0: batch},)
    if model.task == "optical_flow":
        return ["image1", "image2"], ["flow"], ({0: batch}, {0: batch})
    outputs = ["reconstructed_image", "reconstructed_audio", "label_logits"]  # ONNX names must differ from inputs'
    return ["images", "audio", "image_points", "audio_points"], outputs, ({0: batch}, {0: batch}, None, None)


def _exportable(model: nn.Module) -> nn.Module:
    return VideoChunk(model) if model.task == "video_autoencoding" else model


def export_program(model: nn.Module, batch: int = 2, *, chunks: int | None = None) -> torch.export.ExportedProgram:
    """`torch.export.export` of `model`'s forward (see the module docstring), any batch size from 1 up.

    A `torch.compile` wrapper is exported as the model it wraps. Weights on the meta device are refused (the
    program would hold no values).
    """
    batch = check_trace_batch(batch)
    inner = getattr(model, "_orig_mod", None)  # torch.compile's wrapper holds the model it compiled there
    if isinstance(inner, nn.Module):  # exporting the wrapper fails inside torch.export (torch 2.13)
        model = inner
    check_chunks(model, chunks)
    on_meta = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if on_meta:
        names = ", ".join(on_meta[:3]) + (" ..." if len(on_meta) > 3 else "")
        raise ValueError(f"cannot export {type(model).__name__}: {len(on_meta)} tensor(s) are on the meta device, "
                         f"with no values to export ({names}); load or initialise them first.")
    device = next(model.parameters()).device
    inputs = tuple(x.to(device) for x in example_inputs(model, batch, chunks=chunks))
    _, _, dynamic = _signature(model)
    with _eval(model):
        return torch.export.export(_exportable(model), inputs, dynamic_shapes=dynamic)


def check_trace_batch(batch: int) -> int:
    """`batch` as an int if it is an integer (a NumPy one too, not a bool) in [2, MAX_TRACE_BATCH], else a
    ValueError."""
    if not is_int(batch) or not 2 <= batch <= MAX_TRACE_BATCH:
        raise ValueError(f"batch (the tracing batch size) must be an integer from 2 to {MAX_TRACE_BATCH} "
                         f"(torch.export specialises sizes 0 and 1); got {batch!r}. The exported program takes any "
                         "batch size from 1 up.")
    return int(batch)


def export_onnx(model: nn.Module, batch: int = 2, *, chunks: int | None = None):
    """`torch.onnx.export(..., dynamo=True)` of the same forward: an `ONNXProgram` (needs onnx, onnxscript).

    Float32 models only: onnxruntime's CPU kernels refuse a bfloat16 convolution (measured), so a reduced-precision
    graph could not be checked or run where the others are.
    """
    _check_onnx_dtype(next(model.parameters()).dtype, "this one is")
    try:
        import onnxscript  # noqa: F401  (torch's exporter needs it; fail with the fix, not deep inside)
    except ImportError:
        raise ImportError('ONNX export needs onnx and onnxscript: pip install "perceiver-torch[onnx]"') from None
    program = export_program(model, batch, chunks=chunks)
    names, outputs, _ = _signature(model)
    return torch.onnx.export(program, input_names=names, output_names=outputs, dynamo=True, verbose=False)


def _check_onnx_dtype(dtype: torch.dtype, said: str) -> None:
    if dtype != torch.float32:
        raise ValueError(f"ONNX export takes a float32 model; {said} {str(dtype).removeprefix('torch.')}. "
                         "Export reduced precision as pt2, or cast the model with .float() first.")


def check_chunks(model: nn.Module, chunks: int | None) -> None:
    """Refuse `chunks` unless it is None or a chunk count of this video model (a meta-device model will do)."""
    if chunks is None:
        return
    if getattr(model, "task", None) != "video_autoencoding":
        raise ValueError(f"chunks applies only to the video autoencoder (task video_autoencoding); this model's "
                         f"task is {getattr(model, 'task', None)!r}.")
    chunk_points(model, chunks)


def export_model(model_or_name: nn.Module | str | os.PathLike, path: str | os.PathLike, *, batch: int = 2,
                 format: str = "pt2", chunks: int | None = None, **zoo_kwargs) -> Path:
    """Export a model to `path`: a module, or one named as `from_pretrained` reads it: a zoo name or an
    ``hf-hub:`` repo (pulled with `create_model(name, **zoo_kwargs)`), else a converted file or
    `save_pretrained` directory (`load_model`, which takes only `device` and `dtype`).

    `format` 'pt2' writes `torch.export.save`'s archive (load it with `torch.export.load(path).module()`),
    'onnx' an ONNX model (float32 only); a `path` ending in .pt2 or .onnx must agree with `format`. `batch` is
    only the tracing batch (2 to MAX_TRACE_BATCH): the result takes any batch size.
    `chunks` sets the video model's chunk size (default: its config's nchunks). A `torch.compile` wrapper is
    exported as the model it wraps; weights on the meta device are refused. Written atomically, replacing a file
    at `path` (`perceiver-zoo export` asks for --force first), never the checkpoint being exported.
    """
    path = check_output(path, format)
    batch = check_trace_batch(batch)
    if isinstance(model_or_name, (str, os.PathLike)):
        if format == "onnx" and zoo_kwargs.get("dtype") is not None:  # refused before pulling, not after
            _check_onnx_dtype(model_dtype(zoo_kwargs["dtype"]), "dtype asks for")
        if isinstance(model_or_name, str) and (is_hub_name(model_or_name) or is_model_name(model_or_name)):
            model = create_model(model_or_name, **zoo_kwargs)
        else:
            check_not_source(model_or_name, path)
            model = load_file("export_model", model_or_name, **zoo_kwargs)
    elif zoo_kwargs:
        raise TypeError(f"export_model: {', '.join(sorted(zoo_kwargs))} apply only to a zoo model given by name "
                        "(create_model's arguments); for a module, set them on the module before exporting.")
    else:
        model = model_or_name
    if format == "pt2":
        program = export_program(model, batch, chunks=chunks)
        written = atomic_write(path, lambda tmp: _save_pt2(program, tmp))
    else:
        onnx_program = export_onnx(model, batch, chunks=chunks)
        written = atomic_write(path, lambda tmp: onnx_program.save(tmp))
    log.info("exported %s (%s) to %s", type(model).__name__, format, written)
    return written


def check_output(path: str | os.PathLike, format: str) -> Path:
    """`path` as a Path if an export in `format` can be written there (`check_output_path`) and a .pt2 or .onnx
    name agrees with `format`, else the error saying why: what can be refused before a model is pulled or traced."""
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}; got {format!r}.")
    path = check_output_path(path)
    suffix = path.suffix.lower().removeprefix(".")
    if suffix in FORMATS and suffix != format:
        raise ValueError(f"{path} names a .{suffix} file but format is {format!r}: pass format={suffix!r} or name "
                         f"the file .{format}.")
    return path


def check_not_source(source: str | os.PathLike, output: Path) -> None:
    """Refuse an `output` that is the checkpoint `source` names (a file, or a save_pretrained directory's file):
    the export would replace the weights it was made from."""
    path = checkpoint_path(Path(source))
    if same_file(path, output):
        raise ValueError(f"{output} is the checkpoint being exported ({source}); writing the export there would "
                         "replace it: give another output path.")


def _save_pt2(program: torch.export.ExportedProgram, tmp: str) -> None:
    # A file object: given a path, torch.export.save warns unless the name ends in .pt2 (a temp name does not).
    with open(tmp, "wb") as f:
        torch.export.save(program, f)


def onnx_runner(path: str | os.PathLike):
    """A callable running the ONNX file at `path` with onnxruntime on CPU: tensors in, tensors out."""
    try:
        import onnxruntime
    except ImportError:
        raise ImportError('running ONNX models needs onnxruntime: pip install "perceiver-torch[onnx]"') from None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]

    def run(*inputs: torch.Tensor):
        if len(inputs) != len(names):
            raise TypeError(f"{path} takes {len(names)} inputs ({', '.join(names)}); got {len(inputs)}.")
        outputs = session.run(None, {n: x.detach().cpu().numpy() for n, x in zip(names, inputs, strict=True)})
        outputs = tuple(torch.from_numpy(o) for o in outputs)
        return outputs[0] if len(outputs) == 1 else outputs

    return run


@torch.no_grad()
def max_errors(model: nn.Module, run, batches=(1, 3), *, chunks: int | None = None,
               relative: bool = False) -> dict[int, float]:
    """{batch: max |run - eager|} over every output, on fresh example inputs of each batch size (CPU).

    `relative` divides each output's error by its max |eager|: the measure of a reduced-precision export,
    whose program may take other kernels than eager (the bf16 language model's attention: sizes known only at
    run time keep SDPA's flash kernel, where eager takes the narrow-key path for short sequences).
    """
    errors = {}
    with _eval(model):
        reference_model = _exportable(model)
        for batch in batches:
            inputs = example_inputs(model, batch, chunks=chunks, seed=batch)
            expected, actual = reference_model(*inputs), run(*inputs)
            pairs = zip(_as_tuple(expected), _as_tuple(actual), strict=True)
            errors[batch] = max(float((a.to(e.dtype) - e).abs().max() / (_scale(e) if relative else 1))
                                for e, a in pairs)
    return errors


def _scale(output: torch.Tensor) -> float:
    largest = float(output.abs().max()) if output.numel() else 0.0
    return largest if largest > 0 else 1.0  # an all-zero output: its error is absolute


def _as_tuple(value) -> tuple:
    return tuple(value) if isinstance(value, (tuple, list)) else (value,)


class _eval:
    """Put a module in eval mode for the duration, restoring its mode after."""

    def __init__(self, model: nn.Module):
        self.model, self.was_training = model, model.training

    def __enter__(self):
        self.model.eval()

    def __exit__(self, *exc):
        self.model.train(self.was_training)
