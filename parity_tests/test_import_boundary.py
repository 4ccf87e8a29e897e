"""The dependency rule: the runtime (`perceiver_torch`) never imports the producer side (`converters`),
the tests, JAX or Haiku, neither when it runs nor anywhere in its source.

The run-time check uses a child Python that imports the runtime, builds a released architecture and
pulls a test entry through the Hub stand-in; the stand-in serves from this (parent) process, so the
child has no reason to import `converters`, and it is importable there (the repository is on its path).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from converters.zoo.standin import serve
from parity_tests.sandbox import run_isolated
from parity_tests.zoo_support import TEST_HUB, TEST_MANIFEST

REPO = Path(__file__).resolve().parents[1]
FORBIDDEN = {"converters", "parity_tests", "jax", "jaxlib", "haiku"}
SCRIPT = REPO / "scripts" / "import_graph.py"


def _import_graph():
    spec = importlib.util.spec_from_file_location("import_graph", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


import_graph = _import_graph()


def test_runtime_imports_nothing_of_the_producer_side_when_it_builds_and_pulls(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PERCEIVER_ZOO_", "HF_"))}
    code = f"""
        import sys
        import torch
        import perceiver_torch
        model = perceiver_torch.create_model("language-perceiver", pretrained=False)
        params = sum(p.numel() for p in model.parameters())
        del model
        tiny = perceiver_torch.create_model("tiny-language-perceiver", manifest={str(TEST_MANIFEST)!r})
        with torch.no_grad():
            logits = tiny(torch.full((1, 8), 7), torch.ones(1, 8, dtype=torch.long))
        top = {{name.split(".")[0] for name in sys.modules}}
        return {{"params": params, "logits": list(logits.shape), "top": sorted(top),
                 "hub_client": "perceiver_torch.zoo.hub" in sys.modules and "huggingface_hub" in sys.modules}}
    """
    with serve(TEST_HUB) as hub:
        env.update(HF_ENDPOINT=hub.endpoint, HF_HUB_CACHE=str(tmp_path / "cache"))
        # 6 GiB of address space: torch's import reserves ~2 GiB, the 201M-parameter model 0.8 GiB.
        result = run_isolated(code, mem_mb=6144, timeout_s=180, env=env)
        assert result.ok, result.describe()
        assert hub.requests > 0  # the tiny entry was pulled over HTTP
    assert result.value["params"] == 201_108_230  # released_shapes.json, language_perceiver_io_bytes
    assert result.value["logits"] == [1, 8, 262] and result.value["hub_client"]
    assert "perceiver_torch" in result.value["top"]
    assert FORBIDDEN & set(result.value["top"]) == set()


def test_no_runtime_module_names_the_producer_side_in_any_import():
    files = sorted((REPO / "perceiver_torch").rglob("*.py"))
    known = {import_graph.module_name(p, REPO) for p in import_graph.source_files(REPO)}
    named = {}
    for path in files:
        module = import_graph.module_name(path, REPO)
        for line, name in import_graph.imports(path, module, known):
            named.setdefault(name.split(".")[0], []).append(f"{path.relative_to(REPO)}:{line}")
    assert len(files) > 20 and {"torch", "perceiver_torch", "huggingface_hub"} <= set(named)  # the walk read them
    assert {k: v for k, v in named.items() if k in FORBIDDEN} == {}


def test_import_graph_has_no_runtime_to_producer_edge_and_shows_the_one_way_edges():
    edges = import_graph.edges(REPO)
    assert import_graph.violations(edges) == []
    pairs = {(e.source, e.target) for e in edges}
    assert ("perceiver_torch.zoo", "perceiver_torch.serialization") in pairs
    assert ("converters.zoo", "perceiver_torch.zoo") in pairs  # the producer uses the runtime
    assert ("converters.jax_reference", "jax") in pairs
    done = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "perceiver_torch.zoo -> perceiver_torch.serialization" in done.stdout.splitlines()
    assert done.stdout.rstrip().endswith("runtime -> producer edges: 0")


_PLANTED = {
    "perceiver_torch/__init__.py": "from . import models\n",
    "perceiver_torch/models/__init__.py": "from .. import layers  # within the runtime: allowed\n",
    "perceiver_torch/layers.py": textwrap.dedent("""
        import importlib

        def hidden():
            from converters.tables import language  # nested: still an edge
            return importlib.import_module("jax.numpy"), language
    """),
    "converters/__init__.py": "from perceiver_torch import models  # producer -> runtime: allowed\n",
    "converters/tables/__init__.py": "",
    "converters/tables/language.py": "",
}


@pytest.fixture
def planted(tmp_path):
    for rel, text in _PLANTED.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    return tmp_path


def test_import_graph_flags_nested_and_dynamic_runtime_imports_of_the_producer(planted, capsys):
    bad = {(e.file, e.line, e.imported) for e in import_graph.violations(import_graph.edges(planted))}
    assert bad == {("perceiver_torch/layers.py", 5, "converters.tables.language"),
                   ("perceiver_torch/layers.py", 6, "jax.numpy")}
    assert import_graph.main(["--root", str(planted)]) == 1
    assert "runtime -> producer edges: 2" in capsys.readouterr().out


def test_import_graph_refuses_a_root_without_the_runtime_package(tmp_path, capsys):
    # A mistyped --root found no edges and passed: a boundary gate must not pass vacuously.
    assert import_graph.main(["--root", str(tmp_path)]) == 1
    assert f"{tmp_path} holds no perceiver_torch/ package" in capsys.readouterr().err
