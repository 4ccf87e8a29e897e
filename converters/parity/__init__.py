"""JAX-reference vs Torch parity: `run_parity(...) -> ParityReport`, and the `perceiver-parity` CLI.

Needs the `jax` extra (`pip install "perceiver-torch[jax]"`) to run; importing it does not.
"""

from .harness import load_inputs, run_parity
from .report import OutputError, ParityReport, compare

__all__ = ["OutputError", "ParityReport", "compare", "load_inputs", "run_parity"]
