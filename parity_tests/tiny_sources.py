"""Tiny zoo entries: small models made from the JAX reference with fixed seeds, one per task.

They make the whole regenerate -> verify -> publish -> pull path testable offline; their
entries live in the test manifest (fixtures/zoo_test_manifest.yaml), never in the product's. Each is a
golden fixture's small configuration with parameters from ``jax_reference.init`` (seeded,
perturbed so zero-initialised layers matter), written in the release pickle layout
(``jax_reference.checkpoint_tree``) beside an ``io.npz`` of ``jax_reference.example_inputs``
and the reference's outputs on them. Both files are bundled (``parity_tests/fixtures/zoo_tiny``)
so that regeneration and the pulled models can be checked without JAX too; with JAX the
parity harness recomputes the reference.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np

from converters import jax_reference as ref
from converters import load_config
from converters.zoo.manifest_edit import save_manifest
from perceiver_torch.hashing import sha256_file
from perceiver_torch.serialization import atomic_write
from perceiver_torch.zoo import load_manifest

FIXTURES = Path(__file__).resolve().parent / "fixtures"
TEST_MANIFEST = FIXTURES / "zoo_test_manifest.yaml"
TINY_DIR = FIXTURES / "zoo_tiny"
GOLDEN_DIR = FIXTURES / "golden"

# name -> (task, golden fixture whose config.json it uses, seed)
TINY = {
    "tiny-language-perceiver": ("language", "language", 0),
    "tiny-vision-perceiver-conv": ("imagenet", "imagenet_conv", 0),
    "tiny-optical-flow-perceiver": ("optical_flow", "optical_flow", 0),
    "tiny-multimodal-perceiver": ("video_autoencoding", "video_autoencoding", 0),
}


def source_files(name: str) -> tuple[Path, Path]:
    """(checkpoint.pickle, io.npz) of a tiny entry's bundled source."""
    return TINY_DIR / name / "checkpoint.pickle", TINY_DIR / name / "io.npz"


def config_path(name: str) -> Path:
    return GOLDEN_DIR / TINY[name][1] / "config.json"


def make_source(name: str, out_dir: Path | None = None) -> tuple[Path, Path]:
    """Write a tiny entry's checkpoint (release layout) and reference io.npz; returns their paths."""
    task, _, seed = TINY[name]
    config = load_config(config_path(name))
    inputs = ref.example_inputs(task, config, batch=1, seed=seed)
    params, state = ref.init(task, config, inputs, seed=seed, perturb=True)
    outputs = ref.apply(task, config, params, state, inputs)
    tree = ref.checkpoint_tree(task, params, state)
    ckpt, io_path = source_files(name) if out_dir is None else (Path(out_dir) / "checkpoint.pickle",
                                                                 Path(out_dir) / "io.npz")
    atomic_write(ckpt, lambda tmp: Path(tmp).write_bytes(canonical_pickle(_plain(tree))))
    arrays = {f"input/{k}": np.asarray(v) for k, v in inputs.items()}
    arrays.update({f"output/{k}": np.asarray(v) for k, v in outputs.items()})
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write(io_path, lambda tmp: Path(tmp).write_bytes(buffer.getvalue()))
    return ckpt, io_path


def _plain(tree):
    """Plain dicts (sorted keys) of C-ordered, native-byte-order numpy arrays."""
    if isinstance(tree, dict) or hasattr(tree, "items"):
        return {str(k): _plain(v) for k, v in sorted(tree.items())}
    array = np.asarray(tree)
    return np.array(array, dtype=array.dtype.newbyteorder("="), order="C", copy=True)


def canonical_pickle(tree) -> bytes:
    """Pickle bytes that depend only on the values (what converters.load_haiku_checkpoint reads).

    The memo is off: with it, whether two arrays share one dtype *object* (which depends on how
    they were made, and on what ran before in the process) changes the bytes, and the manifest
    pins the source by sha256.
    """
    buffer = io.BytesIO()
    pickler = pickle.Pickler(buffer, protocol=4)
    pickler.fast = True  # no memo: the tree is a plain acyclic dict of arrays
    pickler.dump(tree)
    return buffer.getvalue()


def manifest_entry(name: str) -> dict:
    """The test manifest's entry of a tiny model before regeneration (status not-produced)."""
    task, family, seed = TINY[name]
    ckpt, io_path = source_files(name)
    rel = lambda p: str(Path(p).relative_to(FIXTURES))  # noqa: E731 - paths are relative to the manifest
    return {
        "kind": "test", "task": task, "preset": None, "config": load_config(config_path(name)),
        "status": "not-produced",
        "regenerate": f"perceiver-zoo-admin --manifest parity_tests/fixtures/zoo_test_manifest.yaml regenerate {name}",
        "publish_repo": f"perceiver-torch/{name}",
        "source": {
            "url": None, "path": rel(ckpt), "size": ckpt.stat().st_size, "sha256": sha256_file(ckpt),
            "licence": "Apache-2.0 (random test weights, not DeepMind's released parameters)",
            "attribution": "Architecture: DeepMind, \"Perceiver IO: A General Architecture for Structured Inputs & "
                           "Outputs\" (Jaegle et al., 2021, arXiv 2107.14795)",
            "produced_by": f"converters.jax_reference init/checkpoint_tree, seed {seed}, perturbed, at the "
                           f"golden {family} config (python scripts/make_tiny_sources.py {name})",
            "reference_io": rel(io_path),
        },
        "artifact": None, "parity": None,
        "preprocessing": {"inputs": f"random example_inputs(seed={seed}) in {rel(io_path)}; meaningless weights"},
        "notes": "Tiny test model: makes regenerate -> verify -> publish -> pull testable offline.",
    }


def register(name: str, manifest=TEST_MANIFEST) -> bool:
    """Add or refresh `name`'s test-manifest entry after its source was (re)made; returns whether it changed."""
    data = load_manifest(manifest)
    old = data["models"].get(name)
    new = manifest_entry(name)
    if old is not None and old["source"] == new["source"] and old["config"] == new["config"]:
        return False
    data["models"][name] = new
    save_manifest(data, manifest)
    return True
