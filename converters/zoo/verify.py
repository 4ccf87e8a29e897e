"""The checks a zoo artifact must pass: JAX-vs-Torch parity, stored upstream outputs, known real-weight facts.

- ``harness_runs``: ``converters.parity.run_parity`` (the JAX reference on the source
  weights against the converted model) on the CPU, and on CUDA when present; needs the
  ``jax`` extra.
- ``stored_io_runs``: the converted model against outputs stored beside the source
  (an ``io.npz`` of ``input/...`` and ``output/...`` computed upstream from exactly these
  weights, e.g. a golden fixture); runs without JAX.
- ``known_checks``: facts about the released weights from ``upstream_release.md`` (the
  language colab sentence's greedy predictions).

Every run is a dict in the harness's report layout (``passed``, ``outputs: {NAME: {max_abs,
max_rel}}``, ``device``, ``dtype``, ``atol``, ``rtol``) plus ``reference`` saying what it
was compared with; these dicts are what the manifest records.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from ..parity import compare, load_inputs, run_parity
from ..parity.precision import exact_torch_matmuls
from ..tasks import run_upstream_layout

log = logging.getLogger(__name__)

# float32 parity tolerance, as the golden tests (parity_tests/conftest.py): rounding differences between
# the two implementations stay ~1e-5 on outputs of order one; structural bugs show as 1e-1 or more. Against
# the JAX reference, atol is per unit of each output's range (max(1, max|reference|)): at released size with
# large weights both implementations' float32 rounding reaches ~4e-6 of a logit range of ~250.
ATOL = RTOL = 1e-4

# upstream_release.md, "What the real checkpoints are known to do".
COLAB_SENTENCE = "This is an incomplete sentence where some words are missing."
COLAB_MASKED = range(51, 60)
COLAB_GREEDY_IDS = [38, 115, 111, 121, 121, 111, 116, 109, 52]
COLAB_MAX_LEN = 2048


def devices() -> list[str]:
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def load_io(path) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(inputs, outputs) of an io.npz in the golden layout (``input/NAME``, ``output/NAME``)."""
    inputs, outputs = load_inputs(Path(path))
    if not outputs:
        raise ValueError(f"{path} holds no 'output/...' arrays to check against")
    return inputs, outputs


def stored_io_runs(task: str, model: torch.nn.Module, io_path, label: str) -> list[dict]:
    """The model against the outputs stored in `io_path`, on each available device (no JAX needed)."""
    inputs, expected = load_io(io_path)
    runs = []
    try:
        for device in devices():
            with exact_torch_matmuls(device):  # float32 means float32 on CUDA too (cuDNN's TF32 is on by default)
                got = run_upstream_layout(task, model.to(device), inputs, device=device)
            missing = sorted(set(expected) - set(got))
            if missing:
                raise ValueError(f"the {task!r} model gave no output {missing} (it gave {sorted(got)})")
            errors = {name: compare(got[name], want, ATOL, RTOL) for name, want in expected.items()}
            runs.append({"reference": f"stored outputs ({label})", "device": device, "dtype": "float32",
                         "passed": all(e.within_tolerance for e in errors.values()), "atol": ATOL, "rtol": RTOL,
                         "outputs": {name: {"max_abs": e.max_abs, "max_rel": e.max_rel,
                                            **({"problem": e.problem} if e.problem else {})}
                                     for name, e in errors.items()}})
    finally:
        model.to("cpu")
    return runs


def harness_missing() -> str | None:
    """Why the parity harness cannot run here, or None when it can."""
    try:
        import converters.jax_reference  # noqa: F401 - raises, naming the extra, without jax/haiku
    except ImportError as exc:
        return str(exc)
    return None


def harness_runs(task: str, config: dict, model: torch.nn.Module, checkpoint, inputs=None) -> list[dict]:
    """``run_parity`` of the converted `model` against the JAX reference on `checkpoint`, per device."""
    runs = []
    for device in devices():
        if device == "cuda" and not _jax_has_gpu():
            log.warning("CUDA is present but JAX has no GPU backend: the CUDA run compares against stored "
                        "outputs only (install jax with CUDA support for a JAX-vs-Torch run there)")
            continue
        # to_json() holds plain types only (the harness reports torch's version as a str), so it goes to YAML as is.
        report = run_parity(task, config, checkpoint=checkpoint, inputs=inputs, device=device, dtype="float32",
                            torch_model=model, atol=ATOL, rtol=RTOL, atol_per_unit_range=True).to_json()
        runs.append({**report,
                     "reference": f"JAX reference ({report['reference']} modules), converters.parity.run_parity"})
    model.to("cpu")
    return runs


def _jax_has_gpu() -> bool:
    import jax  # only reached once harness_missing() found JAX installed

    try:
        return bool(jax.devices("gpu"))
    except RuntimeError:
        return False


def colab_sentence_check(model) -> dict:
    """The language colab's masked sentence: greedy predictions at bytes 51..59 (upstream_release.md)."""
    tok = model.tokenizer
    ids = tok.encode(COLAB_SENTENCE)
    for i in COLAB_MASKED:
        ids[i] = tok.mask_token
    padded, mask = tok.pad(ids, COLAB_MAX_LEN)
    with torch.no_grad():
        logits = model(torch.tensor([padded]), torch.tensor([mask]))
    got = logits[0, COLAB_MASKED.start:COLAB_MASKED.stop].argmax(-1).tolist()
    return {"name": "language colab sentence: greedy ids at bytes 51..59 (upstream_release.md)",
            "expected": COLAB_GREEDY_IDS, "got": got, "passed": got == COLAB_GREEDY_IDS}


def known_checks(entry: dict, model) -> list[dict]:
    """Real-weight checks of a released entry (none are known for the other released models' outputs)."""
    if entry["kind"] == "released" and entry["task"] == "language":
        return [colab_sentence_check(model)]
    return []
