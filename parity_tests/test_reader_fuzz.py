"""Fuzzing the checkpoint reader with hypothesis, each kind in one capped child process (see reader_fuzz).

The default run keeps the examples few (seconds per kind, derandomized so CI is stable); `-m slow`
runs many more, randomly.
"""

import pytest

from .hostile_pickles import READER_ONLY
from .sandbox import run_isolated

DEFAULT_EXAMPLES = {"mutated_golden": 150, "opcode_stream": 300, "pickled_tree": 100}
SLOW_EXAMPLES = {"mutated_golden": 4000, "opcode_stream": 20000, "pickled_tree": 3000}
CHILD_MEM_MB = 1536  # numpy + hypothesis + one golden pickle; a bomb that got through would exceed it


def _fuzz(kind: str, examples: int, derandomize: bool, tmp_path, timeout_s: float) -> dict:
    example = tmp_path / "example.bin"
    code = READER_ONLY + f"from parity_tests.reader_fuzz import run\nreturn run({kind!r}, {examples}, " \
                         f"{derandomize}, {str(example)!r})"
    result = run_isolated(code, mem_mb=CHILD_MEM_MB, timeout_s=timeout_s)
    if not result.ok:
        last = example.read_bytes() if example.exists() else b""
        pytest.fail(f"{kind}: {result.describe()}\nlast input ({len(last)} bytes): {last[:300]!r}\n"
                    f"{(result.traceback or result.stderr)[-3000:]}")
    return result.value


@pytest.mark.parametrize("kind", sorted(DEFAULT_EXAMPLES))
def test_fuzzed_inputs_read_identically_or_are_refused(kind, tmp_path):
    outcomes = _fuzz(kind, DEFAULT_EXAMPLES[kind], True, tmp_path, timeout_s=120)
    # The property was exercised on both sides: varied refusals, and (except for random opcode
    # streams, which almost never form a checkpoint) inputs that were read and compared.
    assert outcomes.get("refused", 0) > 0 and outcomes["distinct_refusals"] >= 5, outcomes
    assert kind == "opcode_stream" or outcomes.get("accepted", 0) > 0, outcomes


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(SLOW_EXAMPLES))
def test_fuzzed_inputs_many(kind, tmp_path):
    outcomes = _fuzz(kind, SLOW_EXAMPLES[kind], False, tmp_path, timeout_s=3000)
    assert outcomes.get("refused", 0) > 0, outcomes
