"""Regeneration end to end at the released size (issue 10, item 7), behind `slow`.

A random checkpoint at the exact released `language_perceiver_io_bytes` configuration (201,108,230
parameters, made with the JAX reference, seeded) is written in the release layout and served by a plain
HTTP server on 127.0.0.1 standing in for the release bucket. A manifest in tmp lists it as
`language-perceiver` with that file's size and sha256, and `regenerate` runs as a maintainer would:
download with a progress bar, size and sha256 check, conversion, the parity harness on the CPU at the
released size, the model card, the manifest entry; then a second run is a no-op.

The entry's kind is `test`, not `released`: a released language entry also has to pass the real
weights' colab-sentence check (`verify.known_checks`), which random weights cannot; a test entry has no
known checks, and the test asserts that none ran.

Two kinds of random weights, each a case: Haiku's initializers as they are (`initialised`), and those
plus seeded noise of 0.05 on every parameter (`perturbed`, as the tiny entries, so zero-initialised biases
and offsets matter). Measured on this seed: `initialised` gives logits up to |100| and max_abs 1.04e-4;
`perturbed` gives logits up to |253| and max_abs 1.1e-3, although the port is exact: in float64, JAX and
Torch agree to 2.3e-12, and each float32 side alone is 9e-4 from float64 (rounding that grows with the
activations' scale over 26 layers). An absolute float32 gate of 1e-4 failed the second case, so the
zoo's gate (`converters.zoo.verify`) is 1e-4 per unit of each output's range (`atol_per_unit_range`):
~4e-6 of the range here, while a structural bug moves outputs by O(1e-1) of it (the harness tests check
that a missing transpose or swapped query/key weights still fail under the scaled tolerance).

Release layout: the language release is its params tree alone (`checkpoint_tree`), pickled here as
plain dicts of numpy arrays (`tiny_sources.canonical_pickle`); DeepMind's file pickles Haiku
FlatMappings, which `converters.load_haiku_checkpoint` reads as well (test_checkpoint_reader.py).

Wall time and peak RSS of the test are logged (run with `-m slow -o log_cli=true` to see them);
they are figures for the notes, not assertions.
"""

from __future__ import annotations

import copy
import functools
import logging
import resource
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from safetensors import safe_open

from converters import jax_reference as ref
from converters.zoo.manifest_edit import save_manifest
from converters.zoo.regenerate import ARTIFACT_NAME, regenerate
from parity_tests.conftest import released_shapes
from parity_tests.tiny_sources import _plain, canonical_pickle
from perceiver_torch.hashing import sha256_file
from perceiver_torch.registry import preset
from perceiver_torch.zoo import get_entry

log = logging.getLogger(__name__)

pytestmark = pytest.mark.slow

NAME = "language-perceiver"
PRESET = "language_perceiver_io_bytes"
TASK = "language"
PARAMS = 201_108_230  # released_shapes.json, num_params of language_perceiver_io_bytes
SOURCE_NAME = f"{PRESET}.pickle"  # the release file's name
SEED = 0


# Two random checkpoints: Haiku's initializers as they are, and perturbed (seeded noise of 0.05 on every
# parameter, so zero-initialised biases and layer-norm offsets matter, as in the tiny entries).
PERTURB = {"initialised": False, "perturbed": True}


@pytest.fixture(scope="module", params=sorted(PERTURB))
def released_size_source(request, tmp_path_factory) -> tuple[str, Path]:
    """A random released-size checkpoint in the release layout, made once per kind of weights."""
    start = time.monotonic()
    config = preset(PRESET)["config"]
    inputs = ref.example_inputs(TASK, config, seed=SEED)
    params, state = ref.init(TASK, config, inputs, seed=SEED, perturb=PERTURB[request.param])
    shapes = {m: {n: list(x.shape) for n, x in leaves.items()} for m, leaves in params.items()}
    assert shapes == released_shapes()[PRESET]["params"]  # the exact released parameter tree
    assert sum(x.size for leaves in params.values() for x in leaves.values()) == PARAMS
    path = tmp_path_factory.mktemp("bucket") / SOURCE_NAME
    path.write_bytes(canonical_pickle(_plain(ref.checkpoint_tree(TASK, params, state))))
    log.info("released-size source (%s): %d bytes made in %.0f s", request.param, path.stat().st_size,
             time.monotonic() - start)
    return request.param, path


class _Quiet(SimpleHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - stdlib naming
        self.server.gets += 1
        super().do_GET()

    def log_message(self, format, *args):  # noqa: A002 - stdlib signature
        pass


class _Bucket:
    """A plain HTTP server on 127.0.0.1 serving one directory (what the release bucket is to a download)."""

    def __init__(self, directory: Path):
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(directory)))
        self.server.gets = 0
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.thread.join(timeout=5)
        self.server.server_close()


def _test_manifest(path: Path, url: str, source: Path, weights: str) -> Path:
    """A manifest whose `language-perceiver` is the released entry with this source (kind `test`)."""
    entry = copy.deepcopy(get_entry(NAME))  # the packaged (released) entry
    entry.update(kind="test", notes="Random weights at the released configuration (released-size regeneration test).",
                 regenerate=f"perceiver-zoo-admin --manifest {path} regenerate {NAME}")
    entry["source"].update(url=f"{url}/{SOURCE_NAME}", path=None, size=source.stat().st_size,
                           sha256=sha256_file(source), reference_io=None,
                           licence="Apache-2.0 (random test weights, not DeepMind's released parameters)",
                           produced_by=f"converters.jax_reference init/checkpoint_tree, seed {SEED}, perturbed, "
                                       f"at the {PRESET} preset ({weights} weights)")
    save_manifest({"schema_version": 1, "models": {NAME: entry}}, path)
    return path


def _safetensors_params(path: Path) -> int:
    with safe_open(str(path), framework="pt") as f:
        total = 0
        for key in f.keys():  # noqa: SIM118 - safe_open has no __iter__
            count = 1
            for dim in f.get_slice(key).get_shape():
                count *= dim
            total += count
    return total


def test_regenerate_language_perceiver_at_released_size_from_a_local_bucket(released_size_source, tmp_path,
                                                                             monkeypatch, capfd):
    weights, source_file = released_size_source
    start = time.monotonic()
    for var in ("no_proxy", "NO_PROXY"):  # the download must reach 127.0.0.1 directly, whatever proxy is set
        monkeypatch.setenv(var, "127.0.0.1,localhost")
    work = tmp_path / "work"
    with _Bucket(source_file.parent) as bucket:
        manifest = _test_manifest(tmp_path / "zoo_manifest.yaml", bucket.url, source_file, weights)
        source = get_entry(NAME, manifest)["source"]

        result = regenerate(NAME, work_dir=work, manifest=manifest)
        first = time.monotonic() - start
        assert bucket.server.gets == 1  # downloaded once, from the bucket
        progress = capfd.readouterr().err
        assert SOURCE_NAME in progress and "100%" in progress  # tqdm's bar on stderr

        downloaded = work / "_sources" / SOURCE_NAME
        assert sha256_file(downloaded) == source["sha256"] and downloaded.stat().st_size == source["size"]
        assert result["changed"] is True
        entry = get_entry(NAME, manifest)
        assert entry["status"] == "produced" and entry["kind"] == "test"
        artifact, parity = entry["artifact"], entry["parity"]
        out, card = work / NAME / ARTIFACT_NAME, work / NAME / "README.md"
        assert Path(result["artifact"]) == out and Path(result["card"]) == card
        assert artifact["filename"] == ARTIFACT_NAME and artifact["size"] == out.stat().st_size
        assert artifact["sha256"] == sha256_file(out) and artifact["card_sha256"] == sha256_file(card)
        assert _safetensors_params(out) == PARAMS
        assert parity["source_sha256"] == source["sha256"] and parity["known_checks"] == []
        (run,) = parity["runs"]  # the JAX reference on the CPU (no stored outputs for this entry, no CUDA here)
        assert run["reference"].startswith("JAX reference") and run["device"] == "cpu" and run["task"] == TASK
        # float32 at 1e-4 per unit of the logits' range (verify.ATOL with atol_per_unit_range): at this size
        # the logits reach ~100-250 and both implementations' float32 rounding grows with them.
        assert run["passed"] and run["dtype"] == "float32" and run["rtol"] == 1e-4
        assert run["atol_per_unit_range"] is True and run["atol"] > 1e-4
        logits = run["outputs"]["logits"]
        assert logits["passed"] and logits["shape"] == [1, 2048, 262] and logits["max_abs"] < run["atol"]
        text = card.read_text()
        assert f"# {NAME}" in text and source["sha256"] in text and artifact["sha256"] in text

        before = (manifest.read_bytes(), out.stat().st_mtime_ns, card.stat().st_mtime_ns)
        again = regenerate(NAME, work_dir=work, manifest=manifest)
        assert again == {"name": NAME, "changed": False}
        assert (manifest.read_bytes(), out.stat().st_mtime_ns, card.stat().st_mtime_ns) == before
        assert bucket.server.gets == 1  # the checked local copy was reused

    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is KiB on Linux
    log.info("released-size regeneration (%s weights): first run %.0f s, with the no-op rerun %.0f s; peak RSS "
             "of the test process so far %.2f GiB (includes making the source); logits max_abs %.2e max_rel %.2e",
             weights, first, time.monotonic() - start, peak_gib, logits["max_abs"], logits["max_rel"])
