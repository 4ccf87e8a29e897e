"""scripts/main_job.py (the README's first command): convert, verify, pull a tiny model by name, run it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Runs main_job with jax, jaxlib and haiku unimportable: the base install (`pip install -e .`).
WITHOUT_JAX = """
import runpy, sys
class _NoJax:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("jax", "jaxlib", "haiku"):
            raise ImportError(f"No module named {name!r} (blocked by the test)")
sys.meta_path.insert(0, _NoJax())
sys.argv = ["scripts/main_job.py", "--out", sys.argv[1]]
runpy.run_path("scripts/main_job.py", run_name="__main__")
"""


def _run(args, tmp_path):
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={"PATH": "/usr/bin:/bin", "HF_HUB_CACHE": str(tmp_path / "unused-cache"),
                               "PYTHONPATH": str(REPO), "HOME": str(tmp_path)})


def test_main_job_without_jax(tmp_path):
    done = _run(["-c", WITHOUT_JAX, str(tmp_path / "out")], tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "the JAX parity harness is not available here" in out and "golden fixture's upstream Haiku outputs" in out
    assert "[pull] tiny-language-perceiver from the Hub stand-in at http://127.0.0.1:" in out
    assert "verified" in out and out.rstrip().endswith("[done] PASS")
    assert (tmp_path / "out" / "language.safetensors").is_file()
    assert list((tmp_path / "out" / "hf-cache").glob("models--perceiver-torch--tiny-language-perceiver/snapshots/*/"
                                                        "model.safetensors"))


def test_main_job_with_the_parity_harness(tmp_path):
    done = _run(["scripts/main_job.py", "--out", str(tmp_path / "out")], tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "JAX reference (ours modules), converters.parity.run_parity, cpu: logits" in done.stdout
    assert done.stdout.rstrip().endswith("[done] PASS")


def test_an_unusable_out_directory_is_one_line_not_a_traceback(tmp_path):
    (tmp_path / "file").write_text("x")
    result = _run(["scripts/main_job.py", "--out", str(tmp_path / "file")], tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith("main_job.py: error: ") and str(tmp_path / "file") in result.stderr
