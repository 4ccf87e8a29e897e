"""What a task's parity inputs must be, checked before any array is read and before either model runs.

An io.npz is input like any other: its member names and every array's shape and dtype are read
from the .npy headers and checked (against the task's inputs when it is known, and against a size
cap always) before a single array is decompressed, so a small file that expands to gigabytes of
zeros is refused unread, and a missing or misshaped input is named instead of failing inside JAX.
"""

from __future__ import annotations

import math
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from perceiver_torch.message_text import problem_lines

# All arrays of one io.npz together; a released-size video clip is ~10 MB a sample, a flow pair ~4.4 MB.
MAX_INPUT_BYTES = 1 << 29
BATCH = "B"  # a shape entry: the batch, the same in every input


class InputsError(ValueError):
    """Inputs that do not fit the task; lists every problem."""

    def __init__(self, source: str, problems: list[str]):
        self.problems = problems
        super().__init__(f"{source}: {len(problems)} problem(s) with the inputs" + problem_lines(problems))


@dataclass(frozen=True)
class Spec:
    shape: tuple  # ints, BATCH, or None (any length >= 1)
    kinds: str  # numpy dtype kinds accepted
    below: int | None = None  # integer values must lie in [0, below): ids, masks, indices
    required: bool = True


def _language(config: dict) -> dict[str, Spec]:
    length = config["max_seq_len"]
    return {"inputs": Spec((BATCH, length), "iu", config["vocab_size"]),
            "input_mask": Spec((BATCH, length), "iu", 2)}


def _imagenet(config: dict) -> dict[str, Spec]:
    return {"images": Spec((BATCH, *config["image_size"], 3), "f")}


def _optical_flow(config: dict) -> dict[str, Spec]:
    return {"images": Spec((BATCH, 2, *config["train_size"], 3), "f")}


def _video(config: dict) -> dict[str, Spec]:
    frames, size = config["num_frames"], config["image_size"]
    samples = frames * config["audio_samples_per_frame"]
    return {"images": Spec((BATCH, frames, size, size, 3), "f"), "audio": Spec((BATCH, samples, 1), "f"),
            "subsample_image": Spec((None,), "iu", frames * size * size, required=False),
            "subsample_audio": Spec((None,), "iu", samples // config["samples_per_patch"], required=False)}


INPUTS = {"language": _language, "imagenet": _imagenet, "optical_flow": _optical_flow,
          "video_autoencoding": _video}


def _video_outputs(config: dict, inputs: dict[str, tuple]) -> dict[str, tuple]:
    frames, size = config["num_frames"], config["image_size"]
    patches = frames * config["audio_samples_per_frame"] // config["samples_per_patch"]
    # Decoded at every point, or at the subsampled ones only.
    points = inputs.get("subsample_image", (frames * size * size,))[0]
    audio = inputs.get("subsample_audio", (patches,))[0] * config["samples_per_patch"]
    return {"image": (BATCH, points, 3), "audio": (BATCH, audio), "label": (BATCH, config["num_classes"])}


# The shapes of a task's outputs (upstream layout) from its config and its inputs' shapes.
OUTPUT_SHAPES = {
    "language": lambda config, inputs: {"logits": (BATCH, config["max_seq_len"], config["vocab_size"])},
    "imagenet": lambda config, inputs: {"logits": (BATCH, config["num_classes"])},
    "optical_flow": lambda config, inputs: {"flow": (BATCH, *config["train_size"], 2)},
    "video_autoencoding": _video_outputs,
}
OUTPUTS = {"language": ("logits",), "imagenet": ("logits",), "optical_flow": ("flow",),
           "video_autoencoding": ("image", "audio", "label")}


def _written(shape: tuple) -> str:
    """A spec's shape as text, with what its letters stand for (those it has)."""
    text = "(" + ", ".join("B" if d == BATCH else "N" if d is None else str(d) for d in shape) + ")"
    meanings = [m for d, m in ((BATCH, "B the batch"), (None, "N any length")) if d in shape]
    return f"{text} ({', '.join(meanings)})" if meanings else text


def _shape_problem(name: str, shape: tuple, dtype: np.dtype, spec: Spec, batch: dict) -> str | None:
    if dtype.kind not in spec.kinds:
        return f"input/{name}: {dtype} data; expected {'integer' if 'i' in spec.kinds else 'floating'} values"
    fits = len(shape) == len(spec.shape) and all(
        n >= 1 if d in (BATCH, None) else n == d for n, d in zip(shape, spec.shape, strict=True))
    if not fits:
        return f"input/{name}: shape {shape}; expected {_written(spec.shape)}"
    if BATCH in spec.shape:
        batch.setdefault(shape[0], name)
    return None


def shape_problems(task: str, config: dict, headers: dict[str, tuple[tuple, np.dtype]],
                   expected: dict[str, tuple[tuple, np.dtype]]) -> list[str]:
    """Every problem with the inputs' and expected outputs' names, shapes and dtypes (`headers`, `expected`:
    name -> (shape, dtype)), no data read. The outputs are checked against what the inputs give, once those fit."""
    specs = INPUTS[task](config)
    problems = [f"input/{name}: not an input of {task!r}; expected {sorted(specs)}" for name in headers
                if name not in specs]
    problems += [f"input/{name}: missing (a {task} model needs {[n for n, s in specs.items() if s.required]})"
                 for name, spec in specs.items() if spec.required and name not in headers]
    problems += [f"output/{name}: not an output of {task!r}; expected some of {list(OUTPUTS[task])}"
                 for name in sorted(set(expected) - set(OUTPUTS[task]))]
    batch: dict[int, str] = {}
    for name, (shape, dtype) in headers.items():
        if name in specs:
            problem = _shape_problem(name, tuple(shape), dtype, specs[name], batch)
            problems += [problem] if problem else []
    if len(batch) > 1:
        problems.append(f"batch sizes differ: {', '.join(f'{n} in input/{name}' for n, name in batch.items())}")
    if not problems:
        problems = _output_problems(task, config, headers, expected, next(iter(batch)))
    return problems


def _output_problems(task: str, config: dict, headers: dict[str, tuple[tuple, np.dtype]],
                     expected: dict[str, tuple[tuple, np.dtype]], batch: int) -> list[str]:
    """Expected outputs of another shape than the models give for these inputs (compared, every error is inf)."""
    shapes = OUTPUT_SHAPES[task](config, {name: tuple(shape) for name, (shape, _) in headers.items()})
    problems = []
    for name, (shape, dtype) in expected.items():
        want = tuple(batch if d == BATCH else d for d in shapes[name])
        if dtype.kind != "f":
            problems.append(f"output/{name}: {dtype} data; expected floating values")
        elif tuple(shape) != want:
            problems.append(f"output/{name}: shape {tuple(shape)}; the models give {want} for these inputs")
    return problems


def value_problems(task: str, config: dict, inputs: dict[str, np.ndarray],
                   expected: dict[str, np.ndarray] | None = None) -> list[str]:
    """Integer inputs outside their range (token ids past the vocabulary, a mask other than 0/1, indices),
    and expected outputs that are not finite (no error against them could be)."""
    problems = []
    for name, spec in INPUTS[task](config).items():
        if spec.below is not None and name in inputs and inputs[name].size:
            low, high = int(inputs[name].min()), int(inputs[name].max())
            if low < 0 or high >= spec.below:
                problems.append(f"input/{name}: values from {low} to {high}; expected 0 to {spec.below - 1}")
    for name, values in (expected or {}).items():
        bad = int(values.size - np.count_nonzero(np.isfinite(values)))
        if bad:
            problems.append(f"output/{name}: {bad} of {values.size} values NaN or infinite; "
                            f"expected outputs must be finite")
    return problems


def check(task: str, config: dict, inputs: dict[str, np.ndarray], expected: dict, source: str) -> None:
    """Refuse (`InputsError`, every problem listed) inputs and expected outputs that do not fit `task` at `config`."""
    problems = shape_problems(task, config, _headers(inputs), _headers(expected))
    if not problems:
        problems = value_problems(task, config, inputs, expected)
    if problems:
        raise InputsError(source, problems)


def _headers(arrays: dict) -> dict[str, tuple[tuple, np.dtype]]:
    return {name: (tuple(a.shape), a.dtype) for name, a in arrays.items()}


def _header(archive: zipfile.ZipFile, member: zipfile.ZipInfo) -> tuple[tuple, np.dtype]:
    with archive.open(member) as f:
        version = np.lib.format.read_magic(f)
        if version not in ((1, 0), (2, 0)):
            raise ValueError(f"{member.filename}: .npy format version {version} is not supported")
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read(f)
    if dtype.hasobject:
        raise ValueError(f"{member.filename}: object arrays are not inputs")
    return tuple(shape), dtype


def read_npz(path: Path, task: str | None = None, config: dict | None = None) -> dict[str, np.ndarray]:
    """{key: array} of an io.npz, its names, shapes, dtypes and total size checked from the headers first."""
    with zipfile.ZipFile(path) as archive:
        members = archive.infolist()
        names = [m.filename for m in members]
        odd = sorted({n for n in names if not n.endswith(".npy") or names.count(n) > 1})
        if odd:
            raise InputsError(str(path), [f"{n}: not one .npy member (an io.npz holds named .npy arrays)"
                                          for n in odd])
        headers = {m.filename.removesuffix(".npy"): _header(archive, m) for m in members}
        total = sum(math.prod(shape) * dtype.itemsize for shape, dtype in headers.values())
        if total > MAX_INPUT_BYTES:
            raise InputsError(str(path), [f"(all arrays): {total:,} bytes once read; at most {MAX_INPUT_BYTES:,}"])
        if task is not None:
            inputs = {k.removeprefix("input/"): v for k, v in headers.items() if k.startswith("input/")}
            outputs = {k.removeprefix("output/"): v for k, v in headers.items() if k.startswith("output/")}
            unknown = [f"{k}: expected input/... or output/... (the golden io.npz layout)" for k in headers
                       if not k.startswith(("input/", "output/"))]
            problems = unknown or shape_problems(task, config, inputs, outputs)
            if problems:
                raise InputsError(str(path), problems)
        return {m.filename.removesuffix(".npy"): np.lib.format.read_array(archive.open(m), allow_pickle=False)
                for m in members}
