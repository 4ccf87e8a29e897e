"""The GPU kit (scripts/device_wheels.sh, scripts/device_check.sh), checked where no GPU is.

A session lent a GPU has 15 minutes of device time for one prepared run: what can go wrong without a GPU
(syntax, a stage not handled, wheels out of step with constraints.txt, a run on the wrong machine) is
caught here, before that time is spent.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CHECK = REPO / "scripts" / "device_check.sh"
WHEELS = REPO / "scripts" / "device_wheels.sh"


@pytest.mark.parametrize("script", [CHECK, WHEELS], ids=lambda p: p.name)
def test_scripts_parse(script):
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def _stages() -> list[str]:
    match = re.search(r"^ALL_STAGES=\(([^)]*)\)", CHECK.read_text(), re.MULTILINE)
    assert match, "device_check.sh declares no ALL_STAGES"
    return match.group(1).split()


def test_every_stage_has_a_function_and_fits_the_files_that_come_back():
    text = CHECK.read_text()
    stages = _stages()
    assert {"tests", "bench", "tf32"} <= set(stages), stages
    missing = [s for s in stages if not re.search(rf"^stage_{s}\(\) {{", text, re.MULTILINE)]
    assert not missing, f"stages without a stage_NAME function: {missing}"
    # One log per stage, setup.log and summary.txt: the device tool returns at most 8 files from $OUT.
    assert len(stages) + 2 <= 8


def test_wheels_match_the_constraints_pin():
    pinned = re.search(r"^dm-haiku==(\S+)$", (REPO / "constraints.txt").read_text(), re.MULTILINE)
    listed = re.search(r"^WHEELS=\(([^)]*)\)", WHEELS.read_text(), re.MULTILINE)
    assert pinned and listed
    wheels = dict(w.split("==") for w in listed.group(1).split())
    assert wheels.get("dm-haiku") == pinned.group(1), (wheels, pinned.group(1))
    assert {"dm-haiku", "jmp"} <= set(wheels)  # jmp: a Haiku requirement the device lacks


def _fake_machine(tmp_path: Path, nvidia_smi: str) -> tuple[dict, Path]:
    """PATH with a stand-in nvidia-smi and a python3 that leaves a mark if anything runs it."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    marker = tmp_path / "python3-ran"
    for name, body in (("nvidia-smi", nvidia_smi), ("python3", f'touch "{marker}"\nexit 0')):
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHON", "STAGES", "DEVICE_CHECK_ALLOW_CPU")}
    env.update(PATH=f"{bin_dir}:/usr/bin:/bin", DEVICE_SITE=str(tmp_path / "site"), OUT=str(tmp_path / "out"))
    return env, marker


@pytest.mark.parametrize("nvidia_smi", [
    'echo "NVIDIA-SMI has failed because it could not communicate with the NVIDIA driver." >&2; exit 9',
    'echo "No devices were found"; exit 6',
], ids=["no-driver", "no-device"])
def test_refuses_a_machine_without_a_gpu_before_installing_anything(tmp_path, nvidia_smi):
    env, marker = _fake_machine(tmp_path, nvidia_smi)
    result = subprocess.run(["bash", str(CHECK)], env=env, capture_output=True, text=True, timeout=30)
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 2, output
    assert len(output.splitlines()) == 1 and "no GPU" in output and "DEVICE_CHECK_ALLOW_CPU=1" in output, output
    assert not marker.exists(), "python3 ran: something was installed or probed on a machine without a GPU"
    assert not (tmp_path / "site").exists()


def test_a_listed_gpu_passes_the_gate(tmp_path):
    """The gate's other side: with a GPU listed the script goes on to install (here: the stand-in python3)."""
    env, marker = _fake_machine(tmp_path, 'echo "GPU 0: NVIDIA H200 (UUID: GPU-0)"')
    env["STAGES"] = "tests"
    result = subprocess.run(["bash", str(CHECK)], env=env, capture_output=True, text=True, timeout=60)
    assert marker.exists(), result.stdout + result.stderr
    # The stand-in python3 "passes" setup and every stage; a wrong stage wiring would show as a missing log.
    assert (tmp_path / "out" / "tests.log").exists() and (tmp_path / "out" / "summary.txt").exists()


def test_unknown_stage_is_refused_by_name(tmp_path):
    env, marker = _fake_machine(tmp_path, 'echo "GPU 0: NVIDIA H200"')
    env["STAGES"] = "tests benchmark"
    result = subprocess.run(["bash", str(CHECK)], env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "unknown stage 'benchmark'" in result.stderr, result.stderr
    assert not marker.exists()
