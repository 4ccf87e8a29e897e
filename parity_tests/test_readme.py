"""The README's quick start runs as written, and its layout table names paths that exist."""

from __future__ import annotations

import os
import re
from pathlib import Path

import converters

from .conftest import golden_dir

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def test_quickstart_runs_as_written(tmp_path, capsys):
    block = re.search(r"<!-- quickstart .*?-->\n```python\n(.*?)```", README, re.S)
    assert block, "README quick start not found"
    # The file the snippet loads, made the way the bash lines above it make it (from the golden fixture,
    # a small configuration of the released architecture, as the real file is not reachable here).
    converters.convert("language", golden_dir("language") / "checkpoint.pickle",
                       golden_dir("language") / "config.json", tmp_path / "language.safetensors")
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        exec(compile(block.group(1), "README.md", "exec"), {})
    finally:
        os.chdir(cwd)
    printed = capsys.readouterr().out.rstrip("\n")
    prefix = "This is an incomplete sentence where some words are"
    assert printed.startswith(prefix) and len(printed.encode()) == len(prefix) + 9, printed


def test_layout_table_names_existing_paths():
    table = README[README.index("## Layout"):]
    paths = re.findall(r"^\| `([^`]+)`", table, re.M)
    assert len(paths) >= 10, paths
    for path in paths:
        assert (REPO / path).exists(), f"README layout names {path}, which is not in the tree"
    top = {p.name for p in REPO.iterdir() if not p.name.startswith(".") and p.name not in ("out", "dist", "build")
           and p.suffix not in (".md", ".txt", ".toml") and not p.name.endswith(".egg-info")}
    named = {p.split("/")[0] for p in paths}
    assert top <= named, f"top-level paths missing from the README layout: {sorted(top - named)}"


def test_zoo_commands_name_models_of_the_manifest_they_run_with():
    # `perceiver-zoo export tiny-language-perceiver` was shown without the test manifest it lives in: it failed.
    import yaml

    def names(manifest: Path) -> set[str]:
        return set(yaml.safe_load(manifest.read_text())["models"])

    shipped = names(REPO / "zoo_manifest.yaml")
    checked = 0
    for block in re.findall(r"```bash\n(.*?)```", README, re.S):
        manifest = re.search(r"PERCEIVER_ZOO_MANIFEST=(\S+)", block)
        known = shipped | (names(REPO / manifest.group(1)) if manifest else set())
        if manifest:
            mirror = re.search(r"PERCEIVER_ZOO_MIRROR=(\S+)", block)
            assert mirror and (REPO / mirror.group(1)).is_dir(), block
        for name in re.findall(r"^perceiver-zoo (?:export|pull|info) ([a-z][\w-]*)", block, re.M):
            assert name in known, f"README runs perceiver-zoo on {name!r}, not in the manifest it uses"
            checked += 1
    assert checked >= 3
