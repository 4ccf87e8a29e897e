"""Per-output error figures between two implementations, and the report the CLI prints and writes."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class OutputError:
    """How far `actual` is from `reference` for one output.

    `max_rel` is max |actual - reference| / |reference| over elements (0/0 counts as 0, x/0 as inf);
    `worst_index` is the element that most exceeds the allclose bound atol + rtol * |reference|.
    `within_tolerance` is `np.allclose(actual, reference, atol, rtol)` with equal shapes and every error finite
    (no NaN, and no infinity: inf against inf is no agreement).
    """

    max_abs: float
    max_rel: float
    worst_index: tuple[int, ...]
    within_tolerance: bool
    shape: tuple[int, ...]
    problem: str | None = None  # a shape or presence mismatch, when there is one


def compare(actual, reference, atol: float, rtol: float) -> OutputError:
    actual, reference = np.asarray(actual), np.asarray(reference)
    if actual.shape != reference.shape:
        return OutputError(math.inf, math.inf, (), False, tuple(reference.shape),
                           f"shape {tuple(actual.shape)} != reference shape {tuple(reference.shape)}")
    if actual.size == 0:
        return OutputError(0.0, 0.0, (), True, tuple(reference.shape))
    # Compare in float64 so the figures are not themselves rounded to the outputs' precision.
    a, r = actual.astype(np.float64), reference.astype(np.float64)
    err = np.abs(a - r)
    mag = np.abs(r)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(err == 0, 0.0, err / mag)
    excess = np.where(np.isnan(err), np.inf, err - rtol * mag)
    worst = tuple(int(i) for i in np.unravel_index(int(np.argmax(excess)), err.shape))
    ok = bool(np.isfinite(err).all()) and bool(np.allclose(a, r, atol=atol, rtol=rtol, equal_nan=False))
    return OutputError(float(np.nanmax(err)) if not np.isnan(err).all() else math.nan,
                       float(np.nanmax(rel)) if not np.isnan(rel).all() else math.nan,
                       worst, ok, tuple(reference.shape),
                       None if not np.isnan(err).any() else "NaN in an output")


def _number(x: float):
    """JSON has no inf/NaN: those are written as the strings "inf"/"nan"."""
    return x if math.isfinite(x) else str(x)


def _numbers(value):
    """`value` with every float in it passed through `_number`, in nested dicts and lists."""
    if isinstance(value, float):
        return _number(value)
    if isinstance(value, dict):
        return {k: _numbers(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_numbers(v) for v in value]
    return value


@dataclass
class ParityReport:
    """JAX reference vs Torch model on the same inputs, per output."""

    task: str
    outputs: dict[str, OutputError]
    device: str
    dtype: str
    atol: float
    rtol: float
    reference: str = "ours"
    versions: dict[str, str] = field(default_factory=dict)
    # Against the `output/...` arrays of an io.npz: {name: {"jax": OutputError, "torch": OutputError}}.
    expected: dict[str, dict[str, OutputError]] = field(default_factory=dict)
    # A reduced-precision run checked against its measured budget (parity.budgets): the mode, where the
    # budget comes from, the per-output normalised-error budgets (the outputs' tolerances are
    # budget x max|reference|, rtol 0) and the task-level agreement checks. None otherwise.
    budget: dict | None = None
    # atol was scaled per output by max(1, max|reference|) (the largest such atol is `atol`).
    atol_per_unit_range: bool = False
    # dtype 'tf32': where its TF32 comes from (real on CUDA, or emulated on the CPU and with which rounding).
    tf32: str | None = None

    @property
    def passed(self) -> bool:
        """Torch matches the JAX reference on every output (the expected-output figures are informational)."""
        within = bool(self.outputs) and all(e.within_tolerance for e in self.outputs.values())
        return within and all(c["passed"] for c in (self.budget or {}).get("agreement", {}).values())

    def failures(self) -> list[str]:
        failed = [name for name, e in self.outputs.items() if not e.within_tolerance]
        return failed + [m for m, c in (self.budget or {}).get("agreement", {}).items() if not c["passed"]]

    def to_json(self) -> dict:
        out = {
            "passed": self.passed,
            "task": self.task,
            "reference": self.reference,
            "outputs": {
                name: {"max_abs": _number(e.max_abs), "max_rel": _number(e.max_rel),
                       "worst_index": list(e.worst_index), "shape": list(e.shape),
                       "passed": e.within_tolerance, **({"problem": e.problem} if e.problem else {})}
                for name, e in self.outputs.items()
            },
            "device": self.device,
            "dtype": self.dtype,
            "atol": self.atol,
            "rtol": self.rtol,
            "versions": dict(self.versions),
        }
        if self.budget is not None:
            out["budget"] = _numbers(self.budget)  # an overflowing run's agreement figures are NaN or inf
        if self.atol_per_unit_range:
            out["atol_per_unit_range"] = True
        if self.tf32 is not None:
            out["tf32"] = self.tf32
        if self.expected:
            out["expected"] = {
                name: {"jax_max_abs": _number(pair["jax"].max_abs), "torch_max_abs": _number(pair["torch"].max_abs),
                       "jax_passed": pair["jax"].within_tolerance, "torch_passed": pair["torch"].within_tolerance}
                for name, pair in self.expected.items()
            }
        return out

    def table(self) -> str:
        """A fixed-width per-output table for the terminal."""
        rows = [("output", "shape", "max_abs", "max_rel", "worst_index", "ok")]
        for name, e in self.outputs.items():
            rows.append((name, "x".join(map(str, e.shape)), f"{e.max_abs:.3e}", f"{e.max_rel:.3e}",
                         str(list(e.worst_index)), "ok" if e.within_tolerance else "FAIL"))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        for name, e in self.outputs.items():
            if e.problem:
                lines.append(f"{name}: {e.problem}")
        if self.expected:
            lines.append("")
            lines.append("against the expected outputs in the inputs file (max_abs):")
            for name, pair in self.expected.items():
                lines.append(f"  {name}: jax {pair['jax'].max_abs:.3e}  torch {pair['torch'].max_abs:.3e}")
        if self.budget is not None:
            lines.append("")
            lines.append(f"budget ({self.budget['mode']}): {self.budget['source']}")
            scale = self.budget.get("reference_max_abs", {})
            for name, bound in self.budget["normalised_error"].items():
                if name in self.outputs:
                    # Like with like: the error over the reference's largest magnitude against the budget, which
                    # is measured the same way; the absolute figures it comes from follow.
                    e, ref = self.outputs[name], scale.get(name)
                    figures = (f"normalised error {e.max_abs / ref:.3e} (max_abs {e.max_abs:.3e} / max|reference| "
                               f"{ref:.3e})" if ref else f"max_abs {e.max_abs:.3e}")
                    lines.append(f"  {name}: {figures}, budget {bound:.3e}: "
                                 f"{'ok' if e.within_tolerance else 'FAIL'}")
            for metric, c in self.budget["agreement"].items():
                lines.append(f"  {metric}: {c['measured']:.4g} {c['direction']} {c['bound']:.4g}: "
                             f"{'ok' if c['passed'] else 'FAIL'}")
        if self.tf32 is not None:
            lines.append(f"tf32: {self.tf32}")
        verdict = "PASSED" if self.passed else f"FAILED ({', '.join(self.failures()) or 'no outputs'})"
        lines.append(f"{self.task} torch vs jax-{self.reference} on {self.device} {self.dtype}, "
                     f"atol={self.atol:g} rtol={self.rtol:g}: {verdict}")
        return "\n".join(lines)
