"""The wheel is a complete product: built from the repository, installed into a fresh virtual
environment, and used from a directory outside the source tree as a new user would.

Torch and the other dependencies are not installed a second time: a ``.pth`` file in the new
environment's site-packages names this interpreter's purelib/platlib directories. A ``.pth`` line
only adds a path (the named directory's own ``.pth`` files are not run), so the source checkout's
editable-install finder stays inactive, and `perceiver_torch`/`converters` must come from the
wheel; the test asserts that they do.

Everything runs offline: the wheel is built without build isolation (setuptools from the test
extra) and installed with ``--no-index --no-deps``; the pull goes to the Hub stand-in serving
parity_tests/fixtures/zoo_hub on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import venv
import zipfile
from pathlib import Path

import numpy as np
import pytest

from converters.zoo.standin import serve
from parity_tests.conftest import assert_close, golden_dir
from parity_tests.zoo_support import FIXTURES, TEST_HUB, TEST_MANIFEST
from perceiver_torch.zoo import entries, get_entry

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("perceiver_torch", "converters")
CONSOLE_SCRIPTS = ("perceiver-convert", "perceiver-parity", "perceiver-zoo", "perceiver-zoo-admin")
TINY = "tiny-language-perceiver"
LANGUAGE_PERCEIVER_PARAMS = 201_108_230  # released_shapes.json, language_perceiver_io_bytes
TIMEOUT_S = 300  # per command: generous for a loaded 2-core CI machine; each takes seconds
# Left out of the copy the wheel is built from: local state that a fresh checkout does not have.
_NOT_SOURCE_AT_ROOT = {".git", ".venv", "build", "dist", "out", ".whl", ".pytest_cache", ".ruff_cache",
                       ".mypy_cache", ".hypothesis"}
_NOT_SOURCE_ANYWHERE = {"__pycache__"}


def _ignore(directory, names):
    at_root = Path(directory).resolve() == REPO
    return {n for n in names if n in _NOT_SOURCE_ANYWHERE or n.endswith(".egg-info")
            or (at_root and n in _NOT_SOURCE_AT_ROOT)}


def _run(cmd, *, cwd, env, what):
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert result.returncode == 0, f"{what} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result


class Installed:
    """A wheel built from a copy of the repository and installed into a fresh venv under `root`."""

    def __init__(self, root: Path):
        self.root = root
        source = root / "source"
        shutil.copytree(REPO, source, symlinks=True, ignore=_ignore)
        # Offline: no build isolation (the venv's setuptools builds it) and no index.
        _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
              "--no-cache-dir", "-q", "-w", str(root / "dist"), str(source)], cwd=root, env=None, what="pip wheel")
        (self.wheel,) = (root / "dist").glob("perceiver_torch-*.whl")
        self.venv = root / "venv"
        venv.EnvBuilder(with_pip=False).create(self.venv)  # seconds faster than bootstrapping pip into it
        self.python = self.venv / "bin" / "python"
        _run([sys.executable, "-m", "pip", "--python", str(self.python), "install", "--no-deps", "--no-index",
              "--no-cache-dir", "-q", str(self.wheel)], cwd=root, env=None, what="pip install")
        self.site_packages = Path(self._query("import sysconfig; print(sysconfig.get_paths()['purelib'])"))
        ours = sysconfig.get_paths()
        shared = dict.fromkeys([ours["purelib"], ours["platlib"]])  # ordered, without duplicates
        (self.site_packages / "_test_dependencies.pth").write_text("".join(f"{p}\n" for p in shared))
        self.cwd = root / "elsewhere"  # outside the source tree
        self.cwd.mkdir()
        self.home = root / "home"  # so the Hub's default cache and token are not the user's
        self.home.mkdir()

    def _query(self, code: str) -> str:
        return _run([str(self.python), "-c", code], cwd=self.root, env=self.env(), what=code).stdout.strip()

    def env(self, **extra) -> dict[str, str]:
        """A clean environment: the venv's bin first, no PYTHONPATH, no zoo or Hub settings."""
        env = {"PATH": f"{self.venv / 'bin'}{os.pathsep}{os.defpath}", "HOME": str(self.root / "home")}
        env.update({k: os.environ[k] for k in ("LANG", "LC_ALL", "TMPDIR") if k in os.environ})
        return {**env, **extra}

    def run(self, *argv: str, what: str | None = None, **env) -> subprocess.CompletedProcess:
        cmd = [str(self.venv / "bin" / argv[0]), *argv[1:]]
        return _run(cmd, cwd=self.cwd, env=self.env(**env), what=what or " ".join(argv))


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Installed:
    return Installed(tmp_path_factory.mktemp("wheel"))


def _source_files(package: str) -> set[str]:
    root = REPO / package
    return {p.relative_to(REPO).as_posix() for p in root.rglob("*")
            if (p.is_file() or p.is_symlink()) and "__pycache__" not in p.parts and p.suffix != ".pyc"}


def test_wheel_holds_the_packages_and_their_data_and_nothing_of_the_tests(installed):
    names = set(zipfile.ZipFile(installed.wheel).namelist())
    for package in PACKAGES:
        shipped = {n for n in names if n.startswith(f"{package}/")}
        assert shipped == _source_files(package), f"{package}: missing {sorted(_source_files(package) - shipped)}, " \
                                                  f"extra {sorted(shipped - _source_files(package))}"
    for data in ("presets.json", "imagenet_labels.txt", "kinetics700_labels.txt", "upstream_release.md"):
        assert f"perceiver_torch/data/{data}" in names
    assert "perceiver_torch/zoo_manifest.yaml" in names
    assert "perceiver_torch/py.typed" in names  # PEP 561: a user's type checker reads the package's annotations
    # The licence and the attributions it asks for (DeepMind's code and CC BY 4.0 parameters) travel with the wheel.
    dist_info = installed.wheel.name.split("-py3")[0] + ".dist-info/"
    for legal in ("LICENSE", "NOTICE"):
        carried = [n for n in names if n.startswith(dist_info) and n.rsplit("/", 1)[-1] == legal]
        assert carried and zipfile.ZipFile(installed.wheel).read(carried[0]) == (REPO / legal).read_bytes(), legal
    top_level = {n.split("/", 1)[0] for n in names}
    assert top_level == {*PACKAGES, installed.wheel.name.split("-py3")[0] + ".dist-info"}, top_level
    assert not [n for n in names if n.startswith(("parity_tests", "scripts", "benchmarks"))]
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    declared = zipfile.ZipFile(installed.wheel).read(entry_points).decode()
    for script in CONSOLE_SCRIPTS:
        assert f"{script} = " in declared, script
        assert (installed.venv / "bin" / script).is_file(), script


def test_installed_manifest_is_the_repository_file_as_a_regular_file(installed):
    shipped = installed.site_packages / "perceiver_torch" / "zoo_manifest.yaml"
    assert shipped.is_file() and not shipped.is_symlink()
    assert shipped.read_bytes() == (REPO / "zoo_manifest.yaml").read_bytes()
    assert not (installed.site_packages / "zoo_manifest.yaml").exists()  # no stray top-level copy


def test_zoo_list_and_info_from_outside_the_source_tree(installed):
    listed = installed.run("perceiver-zoo", "list").stdout.splitlines()
    released = entries(REPO / "zoo_manifest.yaml")
    assert len(released) == 6 and all(e["kind"] == "released" for e in released.values())
    assert listed[0].split() == ["name", "task", "kind", "status"]
    assert [row.split()[:3] for row in listed[1:]] == [[n, e["task"], "released"] for n, e in released.items()]

    info = installed.run("perceiver-zoo", "info", "language-perceiver").stdout
    assert info.startswith("language-perceiver:\n")
    assert f"sha256: {released['language-perceiver']['source']['sha256']}" in info
    used = info.rsplit("# manifest: ", 1)[1].strip()
    assert Path(used) == installed.site_packages / "perceiver_torch" / "zoo_manifest.yaml"


def test_producer_console_scripts_run_from_the_install(installed):
    admin = installed.run("perceiver-zoo-admin", "--help").stdout
    assert "regenerate" in admin and "publish" in admin


# Runs in the installed venv after the pull and the conversion: only runtime imports until the
# module check, then `converters` to show where it comes from.
_CHILD = textwrap.dedent("""
    import json, sys
    import numpy as np
    import torch
    import perceiver_torch
    from perceiver_torch import create_model, load_model

    spec = json.loads(sys.argv[1])
    model = create_model("language-perceiver", pretrained=False)
    report = {"params": sum(p.numel() for p in model.parameters()), "outputs": {}}
    del model
    for key, path in spec["models"].items():
        with np.load(spec["io"][key]) as io:
            ids, mask = torch.from_numpy(io["input/inputs"]).long(), torch.from_numpy(io["input/input_mask"])
        with torch.no_grad():
            report["outputs"][key] = load_model(path)(ids, mask).numpy()
    np.savez(spec["out"], **report.pop("outputs"))
    report["producer_modules"] = sorted(m for m in sys.modules
                                        if m.split(".")[0] in {"converters", "jax", "jaxlib", "haiku", "parity_tests"})
    import converters
    report["perceiver_torch"] = perceiver_torch.__file__
    report["converters"] = converters.__file__
    print(json.dumps(report))
""")


def test_pull_convert_load_and_run_from_the_install(installed, tmp_path):
    cache = tmp_path / "hub-cache"
    entry = get_entry(TINY, TEST_MANIFEST)
    with serve(TEST_HUB) as hub:
        pulled = installed.run("perceiver-zoo", "pull", TINY, PERCEIVER_ZOO_MANIFEST=str(TEST_MANIFEST),
                               HF_ENDPOINT=hub.endpoint, HF_HUB_CACHE=str(cache)).stdout
        assert hub.requests > 0  # it came over HTTP
    artifact = entry["artifact"]
    snapshot = (cache / f"models--{artifact['repo_id'].replace('/', '--')}" / "snapshots" / artifact["revision"]
                / artifact["filename"])
    assert snapshot.is_file() and pulled.strip().endswith(str(snapshot))

    converted = tmp_path / "language.safetensors"
    golden = golden_dir("language")
    installed.run("perceiver-convert", "language", str(golden / "checkpoint.pickle"), "--config",
                  str(golden / "config.json"), "-o", str(converted))
    assert converted.is_file()

    outputs = tmp_path / "outputs.npz"
    io = {"pulled": FIXTURES / "zoo_tiny" / TINY / "io.npz", "converted": golden / "io.npz"}
    spec = {"models": {"pulled": str(snapshot), "converted": str(converted)}, "out": str(outputs),
            "io": {k: str(v) for k, v in io.items()}}
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    report = json.loads(installed.run("python", str(script), json.dumps(spec), what="runtime child").stdout)

    assert report["params"] == LANGUAGE_PERCEIVER_PARAMS
    assert report["producer_modules"] == []
    for module in ("perceiver_torch", "converters"):
        assert Path(report[module]).is_relative_to(installed.site_packages), report[module]
        assert not Path(report[module]).resolve().is_relative_to(REPO), report[module]
    with np.load(outputs) as got:
        for key, path in io.items():
            with np.load(path) as want:
                # assert_close's 1e-4: float32 rounding between the JAX reference and Torch (conftest.ATOL).
                assert_close(got[key], want["output/logits"], what=f"{key} logits in the installed venv")
