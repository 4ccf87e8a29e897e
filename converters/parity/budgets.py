"""The reduced-precision error budgets `run_parity` checks, read from budgets.json beside this file.

budgets.json is written by `benchmarks/measure_precision.py --write-budgets` from
measured figures (golden fixtures and released-size random weights, Torch in
low precision against JAX in float32); each entry says where it comes from.
Per task and `precision/mode` (e.g. "bfloat16/cast", "float16/autocast",
"tf32/cast"):

- "error": per output, the largest allowed max|torch - jax| / max|jax|;
- "agreement": per task-level measure (`parity.precision.agreement`), the
  lowest allowed value of an agreement/overlap fraction, or the largest
  allowed value of an error (end-point error, relative RMS);
- "measured_worst": the figures the bounds were derived from; "source": how.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

BUDGETS_PATH = Path(__file__).with_name("budgets.json")


@cache
def all_budgets() -> dict:
    return json.loads(BUDGETS_PATH.read_text())


def budget(task: str, precision: str, mode: str) -> dict:
    """The budget entry of `task` run in `precision` ('bfloat16', 'float16', 'tf32') and `mode` ('cast'/'autocast')."""
    per_task = all_budgets().get(task)
    if per_task is None:
        raise ValueError(f"no precision budgets for task {task!r}; budgets exist for {sorted(all_budgets())}.")
    key = f"{precision}/{mode}"
    if key not in per_task:
        raise ValueError(f"no {key} budget for task {task!r}; measured: {sorted(per_task)}.")
    return per_task[key]
