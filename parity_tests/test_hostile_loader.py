"""Hostile converted files and configs: each refused with its exact error class, naming the file and the problem.

The corpus (parity_tests/fixtures/hostile/{safetensors,configs}, made by
scripts/make_hostile_loader_corpus.py) lists each case's expected refusal in its cases.json. Every
case runs in a child process capped in memory and time (parity_tests/sandbox.py): a loader that
built a model from a file's sizes before checking them would exceed the cap (MemoryError) or the
time limit, and fail its case instead of the suite.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
from pathlib import Path

import pytest

from .sandbox import REPO, run_isolated

HOSTILE = Path(__file__).parent / "fixtures" / "hostile"
SAFETENSORS_CASES = json.loads((HOSTILE / "safetensors" / "cases.json").read_text())
CONFIG_CASES = json.loads((HOSTILE / "configs" / "cases.json").read_text())

# torch + numpy + the tiny corpus model fit in ~1 GB of address space; every hostile size in the
# corpus would need from 9 GB (2.3e9 parameters) to terabytes (10**7 latents of 10**6 channels).
MEM_MB = 1536
# A refusal takes well under a second of CPU after torch is imported; the margin is for a
# loaded 2-core CI machine. Building any of the hostile models would take minutes.
TIMEOUT_S = 90


def _assert_refused(result, error: str, contains: list[str], path: Path) -> None:
    assert not result.timed_out and not result.crashed, result.describe()
    assert result.error_type == error, result.describe()
    message = result.error_message
    assert str(path) in message, f"the message does not name the file: {message}"
    for part in contains:
        assert part in message, f"{part!r} not in: {message}"


@pytest.mark.parametrize("name", sorted(SAFETENSORS_CASES))
def test_hostile_safetensors(name):
    case, path = SAFETENSORS_CASES[name], HOSTILE / "safetensors" / name
    result = run_isolated(f"""
        import perceiver_torch as pt
        model = pt.load_model({str(path)!r})
        return type(model).__name__
    """, mem_mb=MEM_MB, timeout_s=TIMEOUT_S)
    if not case["error"]:  # the untampered control: proves the corpus's base file loads under the same caps
        assert result.ok and result.value == "PerceiverForMaskedLM", result.describe()
        return
    _assert_refused(result, case["error"], case["contains"], path)


@pytest.mark.parametrize("name", sorted(CONFIG_CASES))
def test_hostile_config(name):
    case, path = CONFIG_CASES[name], HOSTILE / "configs" / name
    result = run_isolated(f"""
        from converters import load_config
        from perceiver_torch.config_schema import validate_config
        validate_config({case["task"]!r}, load_config({str(path)!r}), source={str(path)!r})
        return "accepted"
    """, mem_mb=MEM_MB, timeout_s=TIMEOUT_S)
    _assert_refused(result, case["error"], case["contains"], path)


def test_every_refusal_is_a_checkpoint_format_error():
    """Callers catch one class, exported at the top level: every expected refusal is it or a subclass."""
    import perceiver_torch as pt

    classes = {case["error"] for case in SAFETENSORS_CASES.values() if case["error"]}
    assert len(classes) == 2, classes
    for qualified in classes:
        module, name = qualified.rsplit(".", 1)
        assert issubclass(getattr(importlib.import_module(module), name), pt.CheckpointFormatError), qualified


def test_corpus_matches_its_generator():
    """The committed files are exactly what the script writes (nothing edited by hand, nothing stale)."""
    spec = importlib.util.spec_from_file_location("corpus", REPO / "scripts" / "make_hostile_loader_corpus.py")
    corpus = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(corpus)
    generated = corpus.safetensors_cases()
    assert sorted(f"{name}.safetensors" for name in generated) == sorted(SAFETENSORS_CASES)
    for name, (data, error, contains) in generated.items():
        assert (HOSTILE / "safetensors" / f"{name}.safetensors").read_bytes() == data, name
        assert SAFETENSORS_CASES[f"{name}.safetensors"] == {"error": error, "contains": contains}
    configs = corpus.config_cases()
    assert sorted(f"{name}.json" for name in configs) == sorted(CONFIG_CASES)
    for name, (task, text, contains) in configs.items():
        assert (HOSTILE / "configs" / f"{name}.json").read_bytes() == text.encode("utf-8", "surrogateescape"), name
        assert CONFIG_CASES[f"{name}.json"]["contains"] == contains and CONFIG_CASES[f"{name}.json"]["task"] == task


def test_corpus_script_answers_help_without_rewriting_the_fixtures(monkeypatch, capsys):
    spec = importlib.util.spec_from_file_location("corpus", REPO / "scripts" / "make_hostile_loader_corpus.py")
    corpus = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(corpus)
    monkeypatch.setattr(corpus, "ROOT", Path("/nonexistent-never-written"))  # a write would fail loudly
    with pytest.raises(SystemExit) as info:
        corpus.main(["--help"])
    assert info.value.code == 0 and "usage: " in capsys.readouterr().out
