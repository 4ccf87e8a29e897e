"""Print the repository's package-level import graph, read from the source with `ast`; exit 1 when the
runtime (`perceiver_torch`) imports the producer side.

    python scripts/import_graph.py [--root REPO]

Nodes are `perceiver_torch` and `converters` one level down (`perceiver_torch.zoo`,
`perceiver_torch.serialization`, `converters.jax_reference`), and `parity_tests`, `scripts` and
`benchmarks` whole; of other distributions only the producer's own (`jax`, `jaxlib`, `haiku`) appear.
Every import counts wherever it stands (inside a function, a `try`, an `if TYPE_CHECKING`), and so
does `importlib.import_module("...")` or `__import__("...")` with a literal name: an import hidden
in a function body is still an edge.
"""

from __future__ import annotations

import argparse
import ast
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RUNTIME = "perceiver_torch"
# Walked, in this order; the first two are shown one level down.
TREES = ("perceiver_torch", "converters", "parity_tests", "scripts", "benchmarks")
SPLIT = ("perceiver_torch", "converters")
PRODUCER_DEPENDENCIES = ("jax", "jaxlib", "haiku")
# What the runtime may never import: the producer side, the tests, the maintainers' tools, JAX and Haiku.
FORBIDDEN_FOR_RUNTIME = frozenset({"converters", "parity_tests", "scripts", "benchmarks", *PRODUCER_DEPENDENCIES})
_DYNAMIC_IMPORTERS = {"import_module", "__import__"}


@dataclass(frozen=True)
class Edge:
    source: str  # node of the importing module
    target: str  # node of the imported name
    imported: str  # the absolute module name as written (relative imports resolved)
    file: str  # relative to the root
    line: int


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def node(name: str) -> str | None:
    """The graph node of a dotted module name, or None for a distribution the graph leaves out."""
    parts = name.split(".")
    if parts[0] in SPLIT:
        return ".".join(parts[:2])
    if parts[0] in TREES or parts[0] in PRODUCER_DEPENDENCIES:
        return parts[0]
    return None


def _package(module: str, path: Path) -> str:
    return module if path.name == "__init__.py" else module.rpartition(".")[0]


def _resolve(stmt: ast.ImportFrom, module: str, path: Path, known: set[str]) -> list[str]:
    """Absolute names a `from ... import ...` reaches: the submodules it names, else the module itself."""
    if stmt.level:
        package = _package(module, path).split(".")
        base_parts = package[: len(package) - (stmt.level - 1)]
        if stmt.level - 1 > len(package) or not base_parts:
            raise ValueError(f"{path}:{stmt.lineno}: relative import beyond the top-level package")
        base = ".".join(base_parts + ([stmt.module] if stmt.module else []))
    else:
        base = stmt.module or ""
    submodules = [f"{base}.{alias.name}" for alias in stmt.names if f"{base}.{alias.name}" in known]
    return submodules or [base]


def _literal_dynamic_import(call: ast.Call) -> str | None:
    func = call.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
    if name in _DYNAMIC_IMPORTERS and call.args and isinstance(call.args[0], ast.Constant) \
            and isinstance(call.args[0].value, str):
        return call.args[0].value
    return None


def imports(path: Path, module: str, known: set[str]) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in `path`, at any depth."""
    found = []
    for stmt in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(stmt, ast.Import):
            found += [(stmt.lineno, alias.name) for alias in stmt.names]
        elif isinstance(stmt, ast.ImportFrom):
            found += [(stmt.lineno, name) for name in _resolve(stmt, module, path, known)]
        elif isinstance(stmt, ast.Call) and (name := _literal_dynamic_import(stmt)):
            found.append((stmt.lineno, name))
    return found


def source_files(root: Path) -> list[Path]:
    return sorted(p for tree in TREES for p in (root / tree).rglob("*.py") if "__pycache__" not in p.parts)


def edges(root: Path = REPO) -> list[Edge]:
    """Every import edge between nodes (imports within one node left out)."""
    root = Path(root)
    files = source_files(root)
    known = {module_name(p, root) for p in files}
    found = []
    for path in files:
        module = module_name(path, root)
        for line, name in imports(path, module, known):
            source, target = node(module), node(name)
            if target is not None and target != source:
                found.append(Edge(source, target, name, path.relative_to(root).as_posix(), line))
    return found


def violations(found: list[Edge]) -> list[Edge]:
    """Edges from the runtime to anything it may not import."""
    return [e for e in found if e.source.split(".")[0] == RUNTIME and e.target.split(".")[0] in FORBIDDEN_FOR_RUNTIME]


def graph(found: list[Edge]) -> dict[str, list[str]]:
    out: dict[str, set[str]] = {}
    for e in found:
        out.setdefault(e.source, set()).add(e.target)
    return {source: sorted(targets) for source, targets in sorted(out.items())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="import_graph", description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=REPO, help="repository root (default: this checkout)")
    args = parser.parse_args(argv)
    if not (args.root / "perceiver_torch").is_dir():  # a mistyped root would find no edges and pass
        print(f"import_graph: error: {args.root} holds no perceiver_torch/ package", file=sys.stderr)
        return 1
    try:
        found = edges(args.root)
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError) as exc:
        print(f"import_graph: error: {exc}", file=sys.stderr)
        return 1
    for source, targets in graph(found).items():
        for target in targets:
            print(f"{source} -> {target}")
    bad = violations(found)
    print(f"\nruntime -> producer edges: {len(bad)}")
    for e in bad:
        print(f"  {e.file}:{e.line}: {e.source} imports {e.imported}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
