"""`perceiver-zoo predict`: a model's task helper run on the user's inputs, for the command line.

What MODEL names and its inputs are checked before a model is pulled or loaded (`resolve`, `read_inputs`):
every refusal is a `PredictError` naming the input or option, one line. Then `run` calls the task's helper
(`fill_masked`, `classify`, `estimate_flow`) and returns a JSON-able result that `lines` renders as text;
the CLI prints either.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO, cast

import numpy as np
import torch

from ..flow_visualization import save_flow_png
from ..imagenet_preprocessing import center_crop_size, load_rgb
from ..models import PerceiverForImageClassification, PerceiverForMaskedLM, PerceiverForOpticalFlow
from ..serialization import atomic_write, check_output_path, same_file
from ..tokenizer import BytesTokenizer
from .model_arg import Target, resolve_model
from .pretrained import not_a_file

DEFAULT_MASK = "[MASK]"
DEFAULT_TOP_K = 5
FLOW_SUFFIXES = (".npy", ".png")
FLOW_LAYOUT = "[2, H, W] float32, pixels: channel 0 = dx (u, right), channel 1 = dy (v, down)"
# Which task each task-specific option belongs to: given for another task, it is refused, not ignored.
OPTION_TASKS = {"-k": "imagenet", "--mask": "language", "--output": "optical_flow"}
PILLOW_MISSING = 'reading images needs Pillow, the "image" extra: pip install "perceiver-torch[image]"'


class PredictError(ValueError):
    """An input or option `predict` refuses; the message names it."""


def resolve(model: str, manifest=None, *, revision: str | None = None, endpoint: str | None = None,
            token: str | None = None) -> Target:
    """MODEL as `from_pretrained` reads it (`model_arg.resolve_model`: a zoo name, an ``hf-hub:`` repo's header,
    a converted file's). Refuses a video autoencoder: predict does not decode videos."""
    target = resolve_model(model, manifest, command="predict", revision=revision, endpoint=endpoint, token=token)
    if target.task == "video_autoencoding":
        raise PredictError(f"{model} is a video autoencoder (task video_autoencoding): perceiver-zoo predict does not "
                           "decode videos; in Python, load it (perceiver_torch.load_model or create_model) and call "
                           "model.autoencode(images [B, F, 3, S, S], audio [B, F * samples_per_frame, 1])")
    return target


def check_options(target: Target, k: int | None, mask: str | None, output: str | None, force: bool,
                  inputs: list[str]) -> None:
    """Refuse an option of another task, a -k the model cannot give, and an output that cannot be written (or is
    one of the `inputs`: --force replaces an earlier result, never the frames it is computed from)."""
    for flag, given in (("-k", k), ("--mask", mask), ("--output", output)):
        if given is not None and OPTION_TASKS[flag] != target.task:
            raise PredictError(f"{flag} applies to {OPTION_TASKS[flag]} models; {target.model} is a {target.task} "
                               "model")
    if target.task == "imagenet":
        classes = target.config["num_classes"]
        if classes == 0:
            raise PredictError(f"{target.model} has no classifier (num_classes 0): it gives image embeddings, not "
                               "labels")
        if k is not None and k > classes:
            raise PredictError(f"-k {k} is more than the {classes} classes of {target.model}")
    if target.task == "optical_flow":
        if output is None:
            raise PredictError(f"{target.model} is an optical-flow model: give --output FILE (.npy: the flow "
                               f"{FLOW_LAYOUT}; .png: its colour coding)")
        check_output_path(output)  # a directory, a folder that is a file or not writable
        for name in inputs:
            if same_file(name, output):
                raise PredictError(f"--output {output} is the input frame {name}; give another output path")
        if os.path.lexists(output) and not force:
            raise PredictError(f"{output} exists; pass --force to replace it")


@dataclass
class Inputs:
    """What `read_inputs` checked: the texts, images or frames, and a name for each (what errors and output show)."""

    names: list[str]
    values: list


def read_inputs(target: Target, inputs: list[str], stdin: TextIO, mask: str | None) -> Inputs:
    """The task's inputs, read and checked against the model's config before the model is loaded."""
    if target.task == "language":
        return _texts(target, inputs, stdin, DEFAULT_MASK if mask is None else mask)
    if target.task == "optical_flow" and len(inputs) != 2:
        raise PredictError(f"{target.model} is an optical-flow model: give exactly two frames (image files); got "
                           f"{len(inputs)} input(s)")
    if importlib.util.find_spec("PIL") is None:
        raise PredictError(PILLOW_MISSING)
    images = [_image(name) for name in inputs]
    if target.task == "imagenet":
        height = int(target.config["image_size"][0])
        for name, pixels in zip(inputs, images, strict=True):
            h, w = pixels.shape[:2]
            if center_crop_size(h, w, height) < 1:
                raise PredictError(f"{name}: an image of {h}x{w} pixels is too small to crop")
        return Inputs(list(inputs), images)
    (first, second), (th, tw) = images, target.config["train_size"]
    if first.shape != second.shape:
        raise PredictError(f"the frames differ in size: {inputs[0]} is {first.shape[0]}x{first.shape[1]}, "
                           f"{inputs[1]} is {second.shape[0]}x{second.shape[1]}")
    if first.shape[0] < th or first.shape[1] < tw:
        raise PredictError(f"{inputs[0]}: frames of {first.shape[0]}x{first.shape[1]} are smaller than "
                           f"{target.model}'s training size {th}x{tw}")
    return Inputs(list(inputs), images)


def _texts(target: Target, inputs: list[str], stdin: TextIO, mask: str) -> Inputs:
    names, texts = [], []
    for position, item in enumerate(inputs, 1):
        if item != "-":
            names.append(f"input {position}")
            texts.append(item)
            continue
        try:
            lines = stdin.read().splitlines()
        except UnicodeDecodeError as exc:
            raise PredictError(f"stdin: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
        if not lines:
            raise PredictError("stdin (-) holds no text; give one text per line")
        names += [f"stdin line {n}" for n in range(1, len(lines) + 1)]
        texts += lines
    tokenizer, longest = BytesTokenizer(), target.config["max_seq_len"]
    for name, text in zip(names, texts, strict=True):
        try:  # bytes that are not UTF-8 reach Python as lone surrogates (argv, and stdin in a UTF-8 locale)
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise PredictError(f"{name}: not UTF-8 text (an undecodable byte at character {exc.start})") from None
        size = len(tokenizer.encode_with_masks(text, mask))
        if size > longest:
            shown = text if len(text) <= 40 else text[:37] + "..."
            raise PredictError(f"{name} ({shown!r}) is {size} bytes with each {mask} counted as one; "
                               f"{target.model} takes at most {longest}")
    return Inputs(names, texts)


def _image(name: str) -> np.ndarray:
    """An image file's RGB pixels [H, W, 3] uint8, or a PredictError naming the file."""
    path = Path(name)
    if not path.is_file():
        raise PredictError(f"{name}: {not_a_file(path)}")
    try:
        return load_rgb(str(path))
    except ImportError:
        raise PredictError(PILLOW_MISSING) from None
    except Exception as exc:  # Pillow's errors for what is not an image it reads: OSError, SyntaxError, bombs...
        raise PredictError(f"{name}: not an image Pillow can read ({type(exc).__name__}: {exc})") from None


def run(target: Target, model: torch.nn.Module, inputs: Inputs, *, k: int | None, mask: str | None,
        output: str | None) -> dict:
    """The task helper on the inputs: {"model", "task", "results": [...]} (the flow written to `output`)."""
    if target.task == "language":
        filled = cast(PerceiverForMaskedLM, model).fill_masked(inputs.values, DEFAULT_MASK if mask is None else mask)
        results: list[dict] = [{"input": text, "output": out} for text, out in zip(inputs.values, filled, strict=True)]
    elif target.task == "imagenet":
        classifier = cast(PerceiverForImageClassification, model)
        top = classifier.classify(inputs.values, k=min(DEFAULT_TOP_K, classifier.num_classes) if k is None else k)
        top = cast(list[list[tuple[str, float]]], top)  # a list of arrays is a batch: one result per image
        results = [{"input": name, "top_k": [{"label": label, "probability": p} for label, p in ranked]}
                   for name, ranked in zip(inputs.names, top, strict=True)]
    else:
        results = [_flow(cast(PerceiverForOpticalFlow, model), inputs, cast(str, output))]
    return {"model": target.model, "task": target.task, "results": results}


def frame_tensor(pixels: np.ndarray) -> torch.Tensor:
    """RGB pixels [H, W, 3] (0-255) -> a frame [3, H, W] in [-1, 1], as the flow colab scales them."""
    return torch.from_numpy(np.array(pixels, dtype=np.float32)).permute(2, 0, 1) / 255 * 2 - 1  # a writable copy


def _flow(model: PerceiverForOpticalFlow, inputs: Inputs, output: str) -> dict:
    weight = next(model.parameters())
    frames = [frame_tensor(p).to(device=weight.device, dtype=weight.dtype) for p in inputs.values]
    flow = model.estimate_flow(*frames).float().cpu()
    if Path(output).suffix.lower() == ".png":
        save_flow_png(output, flow)
    else:
        array = flow.numpy()

        def write(tmp: str) -> None:
            with open(tmp, "wb") as f:  # a file object: given a path, np.save would add its own .npy suffix
                np.save(f, array, allow_pickle=False)

        atomic_write(output, write)
    magnitude = torch.hypot(flow[0], flow[1])
    return {"frames": inputs.names, "output": output, "shape": list(flow.shape), "layout": FLOW_LAYOUT,
            "mean_magnitude": float(magnitude.mean()), "max_magnitude": float(magnitude.max())}


def lines(result: dict) -> list[str]:
    """`run`'s result as the lines the CLI prints without --json."""
    task, results = result["task"], result["results"]
    if task == "language":  # one line per text, whatever bytes the model predicted
        return [_CONTROL.sub(lambda c: f"\\x{ord(c.group()):02x}", r["output"]) for r in results]
    if task == "imagenet":
        out = []
        for r in results:
            out.append(f"{r['input']}:")
            out += [f"  {t['probability']:.4f}  {t['label']}" for t in r["top_k"]]
        return out
    (flow,) = results
    height, width = flow["shape"][1:]
    what = "its colour coding" if flow["output"].lower().endswith(".png") else "dx, dy as [2, H, W] float32"
    return [f"flow {height}x{width} written to {flow['output']} ({what}); mean magnitude "
            f"{_px(flow['mean_magnitude'])} px, max {_px(flow['max_magnitude'])} px"]


# Control characters a model may predict (a byte-level model predicts any byte): shown escaped, so that no
# prediction moves the cursor, rewrites the terminal or breaks a text's line in two. Tab is left as it is.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")


def json_text(result: dict) -> str:
    """`run`'s result as JSON for a terminal: non-ASCII text kept readable, but C1 control characters (U+0080 to
    U+009F, some terminals' escape sequences) escaped as JSON escapes C0 ones; they occur only inside strings."""
    text = json.dumps(result, ensure_ascii=False, indent=1)
    return re.sub("[\x80-\x9f]", lambda c: f"\\u{ord(c.group()):04x}", text)


def unmasked_note(result: dict, mask: str | None) -> str | None:
    """A note on texts that hold no mask marker (printed unchanged: nothing to fill), else None."""
    marker = DEFAULT_MASK if mask is None else mask
    unmasked = [r for r in result["results"] if marker not in r["input"]] if result["task"] == "language" else []
    if not unmasked:
        return None
    return (f"{len(unmasked)} of {len(result['results'])} texts hold no {marker} marker; they are printed as given "
            f"(--mask sets another marker)")


def _px(value: float) -> str:
    return f"{value:.3f}" if math.isfinite(value) else str(value)
