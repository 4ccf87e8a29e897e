"""Conversion is byte-reproducible at the source: the same input gives the same file, run after run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch
from safetensors import safe_open

from perceiver_torch.hashing import sha256_file
from perceiver_torch.safetensors_io import write_safetensors

from .conftest import golden_dir

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_separate_processes_write_identical_files(tmp_path):
    # Separate interpreters: hash seeds (and safetensors' own HashMap order) differ between processes,
    # which is what made the old files differ.
    outs = []
    for i, seed in enumerate(("0", "1", "random")):
        out = tmp_path / f"run{i}.safetensors"
        subprocess.run([sys.executable, "-m", "converters", "optical_flow",
                        str(golden_dir("optical_flow") / "checkpoint.pickle"),
                        "--config", str(golden_dir("optical_flow") / "config.json"), "-o", str(out)],
                       check=True, cwd=REPO_ROOT, capture_output=True, env={"PYTHONHASHSEED": seed, "PATH": "/usr/bin"})
        outs.append(sha256_file(out))
    assert len(set(outs)) == 1, outs


def test_writer_output_reads_back_exactly_with_safetensors(tmp_path):
    tensors = {"b.weight": torch.randn(3, 4), "a.bias": torch.arange(5, dtype=torch.int64),
               "c.half": torch.randn(2, dtype=torch.bfloat16), "d.flag": torch.tensor([True, False]),
               "e.scalar": torch.tensor(2.5, dtype=torch.float64), "f.empty": torch.zeros(0, 3)}
    metadata = {"z": "last", "a": "first"}
    write_safetensors(tmp_path / "x.safetensors", tensors, metadata)
    with safe_open(str(tmp_path / "x.safetensors"), framework="pt") as f:
        assert f.metadata() == metadata
        assert sorted(f.keys()) == sorted(tensors)
        for name, want in tensors.items():
            got = f.get_tensor(name)
            assert got.dtype == want.dtype and got.shape == want.shape and torch.equal(got, want), name
    # Insertion order does not matter either.
    write_safetensors(tmp_path / "y.safetensors", dict(reversed(tensors.items())), dict(reversed(metadata.items())))
    assert sha256_file(tmp_path / "x.safetensors") == sha256_file(tmp_path / "y.safetensors")
