"""The README's Python snippets run as written, its commands use flags the CLIs have, and its layout table
names paths that exist."""

from __future__ import annotations

import contextlib
import functools
import importlib
import io
import os
import re
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch

import perceiver_torch as pt

from .conftest import convert_golden, golden_config, seeded_model
from .zoo_support import hub_env

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def snippet(marker: str) -> str:
    """The ```python block after `<!-- marker ... -->` in the README."""
    block = re.search(rf"<!-- {marker} .*?-->\n```python\n(.*?)```", README, re.S)
    assert block, f"README snippet {marker!r} not found"
    return block.group(1)


def run_snippets(directory: Path, namespace: dict, *markers: str) -> dict:
    """Run the README snippets `markers` in turn, in `directory`, sharing `namespace`, as a reader would."""
    cwd = os.getcwd()
    os.chdir(directory)
    try:
        for marker in markers:
            exec(compile(snippet(marker), f"README.md ({marker})", "exec"), namespace)
    finally:
        os.chdir(cwd)
    return namespace


def test_quickstart_and_save_load_run_as_written(tmp_path, capsys):
    # The files the snippets load, made as their perceiver-convert lines make them, from the golden fixtures
    # (small configurations of the released architectures: the real files are not reachable here).
    convert_golden("language", "language", tmp_path)
    ns = run_snippets(tmp_path, {}, "quickstart")
    printed = capsys.readouterr().out.rstrip("\n")
    prefix = "This is an incomplete sentence where some words are"
    assert printed.startswith(prefix) and len(printed.encode()) == len(prefix) + 9, printed
    before = {name: t.clone() for name, t in ns["model"].state_dict().items()}
    run_snippets(tmp_path, ns, "save-load")  # saves `model`, loads it back into `model`
    after = ns["model"].state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    # "dtype="bfloat16" as before": the bfloat16 model that .to(torch.bfloat16) gives
    half = pt.load_model(tmp_path / "finetuned.safetensors", dtype="bfloat16").state_dict()
    assert all(torch.equal(half[k], before[k].to(torch.bfloat16) if before[k].is_floating_point() else before[k])
               for k in before)


def test_imagenet_snippet_runs_as_written(tmp_path):
    pil = pytest.importorskip("PIL.Image")
    convert_golden("imagenet", "imagenet_conv", tmp_path)
    rgb = np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    pil.fromarray(rgb).save(tmp_path / "dalmation.jpg")
    ns = run_snippets(tmp_path, {"pt": pt, "image": pil.fromarray(rgb)}, "imagenet")
    model = ns["model"]
    top = model.classify(tmp_path / "dalmation.jpg", k=5)  # what the snippet's comment says it returns
    assert len(top) == 5 and [p for _, p in top] == sorted((p for _, p in top), reverse=True)
    assert ns["logits"].shape == (1, model.config["num_classes"])


def test_optical_flow_snippet_runs_as_written(tmp_path):
    path = convert_golden("optical_flow", "optical_flow", tmp_path)
    height, width = golden_config("optical_flow")["train_size"]
    frames = torch.rand(2, 1, 3, height + 3, width + 5, generator=torch.Generator().manual_seed(0)) * 2 - 1
    ns = run_snippets(tmp_path, {"pt": pt, "frame1": frames[0], "frame2": frames[1]},
                      "optical-flow")
    assert ns["flow"].shape == (1, 2, height + 3, width + 5) and path.exists()
    assert (tmp_path / "flow.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_hub_share_snippet_runs_as_written_against_the_stand_in(tmp_path, monkeypatch):
    model = seeded_model("language").eval()
    with hub_env(monkeypatch, tmp_path / "hub", tmp_path / "cache", token="readme-token"):
        monkeypatch.setenv("HF_TOKEN", "readme-token")
        ns = run_snippets(tmp_path, {"model": model}, "hub-share")
    assert ns["commit"] in (tmp_path / "hub" / "your-name" / "perceiver-lm-finetuned" / "refs" / "main").read_text()
    assert ns["model"] is not model and ns["model"].state_dict().keys() == model.state_dict().keys()
    assert all(torch.equal(ns["model"].state_dict()[k], t) for k, t in model.state_dict().items())


def test_zoo_snippet_lists_what_list_models_returns(monkeypatch):
    monkeypatch.delenv("PERCEIVER_ZOO_MANIFEST", raising=False)  # the snippet shows the shipped manifest
    shown = re.search(r"pt\.list_models\(\)  # \[(.*?), \.\.\.\]", README)
    assert shown, "README's pt.list_models() line not found"
    names = [name.strip("' ") for name in shown.group(1).split(",")]
    assert pt.list_models()[:len(names)] == names


def _scripts() -> dict[str, str]:
    """Each installed command (pyproject's [project.scripts]) -> the module whose `main` it runs."""
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    return {name: target.removesuffix(":main") for name, target in scripts.items()}


# Each command the documents show, by how they invoke it: the installed scripts as pyproject declares them,
# and the modules run with `python -m`; subcommands are read from each one's own --help.
CLIS = {**_scripts(), "python -m converters": "converters.cli", "python -m converters.parity": "converters.parity.cli",
        "python -m converters.zoo": "converters.zoo.cli",
        "python -m converters.transformers.divergence": "converters.transformers.divergence"}
DOCS = ("README.md", "SECURITY.md", "benchmarks/README.md")


def documented_commands() -> list[tuple[str, str, str]]:
    """(document, command name, the rest of the line) for every CLI call in a code block or inline code span."""
    pattern = re.compile(r"(?<![\w/.-])(" + "|".join(re.escape(c) for c in sorted(CLIS, key=len, reverse=True))
                         + r")(?![\w.-])(.*)")
    found = []
    for doc in DOCS:
        text = (REPO / doc).read_text()
        spans = [line for block in re.findall(r"```bash\n(.*?)```", text, re.S)
                 for line in block.replace("\\\n", " ").splitlines()]
        spans += re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
        for span in spans:
            span = re.sub(r"\s#\s.*", "", span)  # a shell comment
            for match in pattern.finditer(span):
                found.append((doc, match.group(1), match.group(2)))
    return found


@functools.cache
def subcommands_of(module: str) -> tuple[str, ...]:
    """The subcommands `module`'s parser lists (argparse's usage ends in "{a,b,c} ..." for them; a positional's
    or an option's choices have no "..."), none for a command without them."""
    listed = re.search(r"^usage: .*?\{([\w,-]+)\} \.\.\.", help_text(module, []), re.S | re.M)
    return tuple(listed.group(1).split(",")) if listed else ()


def help_text(module: str, argv: list[str]) -> str:
    main = importlib.import_module(module).main
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        main([*argv, "--help"])
    return out.getvalue()


def test_documented_commands_use_flags_and_subcommands_the_clis_have():
    # A flag renamed or dropped in a CLI would otherwise leave the README showing a command that fails.
    commands = documented_commands()
    assert len(commands) >= 30, commands
    helps: dict[tuple[str, ...], str] = {}
    for doc, name, rest in commands:
        module = CLIS[name]
        subcommands = subcommands_of(module)
        words = re.findall(r"[\w.-]+", rest)
        sub = next((w for w in words if w in subcommands), None)
        if subcommands and rest.strip() and not rest.strip().startswith(("--manifest", "--help", ")", ".")):
            assert sub, f"{doc}: `{name}{rest}` names no subcommand of {name} ({', '.join(subcommands)})"
        key = (module, sub) if sub else (module,)
        if key not in helps:
            helps[key] = help_text(module, []) + (help_text(module, [sub]) if sub else "")
        for flag in re.findall(r"(?<![\w-])(--?[a-zA-Z][\w-]*)", rest):
            if flag in ("-m", "-c") or flag.startswith("--xla"):
                continue
            assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", helps[key]), \
                f"{doc}: `{name}{rest}` uses {flag}, which `{name}{' ' + sub if sub else ''} --help` does not list"


def test_documented_script_flags_exist():
    # benchmarks/*.py and scripts/*.py are run as files: their argparse flags must be in their source.
    checked = 0
    for doc in DOCS:
        text = (REPO / doc).read_text()
        for script, rest in re.findall(r"((?:benchmarks|scripts)/\w+\.py)((?: +--?[\w-]+(?: +[^\s`|)(]+)?)*)", text):
            for flag in re.findall(r"(?<![\w-])(--[a-z][\w-]*)", rest):
                assert f'"{flag}"' in (REPO / script).read_text(), f"{doc}: {script} has no {flag}"
                checked += 1
    assert checked >= 3


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
        for name in re.findall(r"^perceiver-zoo (?:export|pull|info|predict) ([a-z][\w-]*)(?![\w./:-])", block, re.M):
            assert name in known, f"README runs perceiver-zoo on {name!r}, not in the manifest it uses"
            checked += 1
    assert checked >= 3
