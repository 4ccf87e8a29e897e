"""Regenerate -> publish -> pull, end to end, on the golden language checkpoint (tiny, offline).

The source is DeepMind-code-made (the golden fixture); regeneration checks it against its stored
upstream outputs (and the JAX reference through the parity harness where that is installed),
publishing goes through huggingface_hub's upload API into a stand-in on 127.0.0.1, and pulling
goes through hf_hub_download with HF_ENDPOINT pointing at it.
"""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import threading

import huggingface_hub
import numpy as np
import pytest
import torch

import converters.zoo.regenerate as regen
from converters.zoo.cli import main as admin_cli
from converters.zoo.manifest_edit import update_entry
from converters.zoo.publish import publish
from converters.zoo.regenerate import regenerate
from converters.zoo.standin import serve
from parity_tests.conftest import assert_close, golden_io
from parity_tests.zoo_support import (
    GOLDEN,
    GOLDEN_ENTRY,
    copy_golden_files,
    golden_language_entry,
    hub_env,
    scratch_manifest,
)
from perceiver_torch.hashing import sha256_file
from perceiver_torch.zoo import ZooError, create_model, get_entry
from perceiver_torch.zoo.schema import ManifestError, validate_entry

TOKEN = "test-write-token"


@pytest.fixture(scope="module")
def produced(tmp_path_factory):
    """A scratch manifest whose golden entry was regenerated into a work dir (once per module)."""
    root = tmp_path_factory.mktemp("zoo")
    manifest = scratch_manifest(root / "zoo_manifest.yaml")
    result = regenerate(GOLDEN_ENTRY, work_dir=root / "work", manifest=manifest)
    return root, manifest, result


@pytest.fixture(scope="module")
def published(produced, tmp_path_factory):
    """The produced entry published into a stand-in repository tree; returns (manifest, hub tree, revision)."""
    root, manifest, _ = produced
    tree = tmp_path_factory.mktemp("hub")
    with serve(tree, token=TOKEN) as hub:
        info = publish(GOLDEN_ENTRY, endpoint=hub.endpoint, token=TOKEN, work_dir=root / "work", manifest=manifest)
    return manifest, tree, info["revision"]


def test_regenerate_writes_artifact_card_and_measured_figures(produced):
    root, manifest, result = produced
    assert result["changed"]
    entry = get_entry(GOLDEN_ENTRY, manifest)
    artifact, parity = entry["artifact"], entry["parity"]
    out = root / "work" / GOLDEN_ENTRY
    assert entry["status"] == "produced"
    assert sha256_file(out / "model.safetensors") == artifact["sha256"]
    assert (out / "model.safetensors").stat().st_size == artifact["size"]
    assert sha256_file(out / "README.md") == artifact["card_sha256"]
    card = (out / "README.md").read_text()
    assert artifact["sha256"] in card and entry["source"]["sha256"] in card
    assert parity["source_sha256"] == entry["source"]["sha256"]
    stored = [r for r in parity["runs"] if r["reference"].startswith("stored outputs")]
    assert [r["device"] for r in stored][0] == "cpu" and all(r["passed"] for r in parity["runs"])
    # The recorded figure is the measured one: recompute it from the artifact.
    io = golden_io("language")
    model = create_model(GOLDEN_ENTRY, pretrained=False, manifest=manifest)
    from safetensors.torch import load_file

    model.load_state_dict(load_file(out / "model.safetensors"))
    with torch.no_grad():
        logits = model(torch.from_numpy(io["input/inputs"]).long(), torch.from_numpy(io["input/input_mask"]))
    assert stored[0]["outputs"]["logits"]["max_abs"] == pytest.approx(
        float(np.abs(logits.numpy().astype(np.float64) - io["output/logits"]).max()), rel=1e-6)
    assert stored[0]["outputs"]["logits"]["max_abs"] < 1e-4


def test_second_run_is_a_no_op(produced):
    root, manifest, _ = produced
    before = manifest.read_bytes()
    artifact = root / "work" / GOLDEN_ENTRY / "model.safetensors"
    mtime = artifact.stat().st_mtime_ns
    assert regenerate(GOLDEN_ENTRY, work_dir=root / "work", manifest=manifest) == {"name": GOLDEN_ENTRY,
                                                                                   "changed": False}
    assert manifest.read_bytes() == before and artifact.stat().st_mtime_ns == mtime


def test_forced_regeneration_is_byte_identical(produced, tmp_path):
    root, manifest, _ = produced
    copy = tmp_path / "m.yaml"
    shutil.copy(manifest, copy)
    copy_golden_files(tmp_path)
    regenerate(GOLDEN_ENTRY, work_dir=tmp_path / "work", manifest=copy)
    assert sha256_file(tmp_path / "work" / GOLDEN_ENTRY / "model.safetensors") == \
        get_entry(GOLDEN_ENTRY, manifest)["artifact"]["sha256"]


def test_wrong_source_is_refused_and_nothing_written(tmp_path):
    manifest = scratch_manifest(tmp_path / "m.yaml")
    before = manifest.read_bytes()
    bad = tmp_path / "checkpoint.pickle"
    bad.write_bytes((GOLDEN / "language" / "checkpoint.pickle").read_bytes()[:-1] + b"\x00")
    with pytest.raises(ZooError, match="sha256"):
        regenerate(GOLDEN_ENTRY, source_path=bad, work_dir=tmp_path / "work", manifest=manifest)
    with pytest.raises(ZooError, match="bytes"):
        regenerate(GOLDEN_ENTRY, source_path=GOLDEN / "language" / "io.npz", work_dir=tmp_path / "work",
                   manifest=manifest)
    assert manifest.read_bytes() == before and not (tmp_path / "work").exists()


def test_failed_parity_writes_nothing(tmp_path):
    """A source whose stored outputs disagree with the conversion must not produce an artifact."""
    manifest = scratch_manifest(tmp_path / "m.yaml")
    io = golden_io("language")
    io["output/logits"] = io["output/logits"] + 1e-2
    np.savez(tmp_path / GOLDEN_ENTRY / "io.npz", **io)
    before = manifest.read_bytes()
    with pytest.raises(ZooError, match="FAILED"):
        regenerate(GOLDEN_ENTRY, work_dir=tmp_path / "work", manifest=manifest)
    assert manifest.read_bytes() == before
    assert list((tmp_path / "work" / GOLDEN_ENTRY).iterdir()) == []


def test_source_downloaded_over_http(tmp_path):
    """source.url is fetched (here from a plain HTTP server on 127.0.0.1), checked, then converted."""
    served = tmp_path / "bucket"
    served.mkdir()
    shutil.copy(GOLDEN / "language" / "checkpoint.pickle", served / "language.pickle")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        entry = golden_language_entry()
        entry["source"].update(path=None, url=f"http://127.0.0.1:{server.server_address[1]}/language.pickle")
        manifest = scratch_manifest(tmp_path / "m.yaml", {GOLDEN_ENTRY: entry})
        assert regenerate(GOLDEN_ENTRY, work_dir=tmp_path / "work", manifest=manifest)["changed"]
        downloaded = tmp_path / "work" / "_sources" / "language.pickle"
        assert sha256_file(downloaded) == entry["source"]["sha256"]
        entry["source"]["url"] = f"http://127.0.0.1:{server.server_address[1]}/missing.pickle"
        manifest = scratch_manifest(tmp_path / "m2.yaml", {GOLDEN_ENTRY: entry})
        with pytest.raises(ZooError, match="could not download"):
            regenerate(GOLDEN_ENTRY, work_dir=tmp_path / "work2", manifest=manifest)
        assert not (tmp_path / "work2" / "_sources").exists() or not any((tmp_path / "work2" / "_sources").iterdir())
    finally:
        server.shutdown()
        server.server_close()


def test_publish_records_the_commit_and_is_idempotent(produced, published):
    root, _, _ = produced
    manifest, tree, revision = published
    entry = get_entry(GOLDEN_ENTRY, manifest)
    assert entry["status"] == "published" and entry["artifact"]["revision"] == revision
    assert (tree / "tests/golden-language/refs/main").read_text().strip() == revision
    assert sha256_file(tree / "tests/golden-language" / revision / "model.safetensors") == entry["artifact"]["sha256"]
    with serve(tree, token=TOKEN) as hub:
        again = publish(GOLDEN_ENTRY, endpoint=hub.endpoint, token=TOKEN, work_dir=root / "work", manifest=manifest)
        assert again["revision"] == revision  # unchanged files: no new commit
        before = manifest.read_bytes()
        # 401; or huggingface_hub's "Server disconnected", as test_user_hub's push without a token explains:
        # refused either way, the manifest unchanged.
        with pytest.raises(ZooError, match="401 Unauthorized|RemoteProtocolError: Server disconnected"):
            publish(GOLDEN_ENTRY, endpoint=hub.endpoint, token="wrong", work_dir=root / "work", manifest=manifest)
        assert manifest.read_bytes() == before


def test_publish_without_a_token_uses_the_one_hf_auth_login_saved(produced, published, tmp_path, monkeypatch):
    """As huggingface_hub (and --token's help) say: HF_TOKEN, else the token `hf auth login` saved."""
    root, _, _ = produced
    manifest, tree, revision = published
    monkeypatch.delenv("HF_TOKEN", raising=False)
    saved = tmp_path / "saved-token"
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(saved))
    with serve(tree, token=TOKEN) as hub:
        with pytest.raises(ZooError, match=r"publishing needs a write token: --token \(token= in Python\), the "
                                           r"HF_TOKEN environment variable or `hf auth login`"):
            publish(GOLDEN_ENTRY, endpoint=hub.endpoint, work_dir=root / "work", manifest=manifest)
        with pytest.raises(ValueError, match=r"publish: token is empty"):  # refused, not the machine's used instead
            publish(GOLDEN_ENTRY, endpoint=hub.endpoint, token="", work_dir=root / "work", manifest=manifest)
        saved.write_text(TOKEN)
        assert publish(GOLDEN_ENTRY, endpoint=hub.endpoint, work_dir=root / "work", manifest=manifest)["revision"] \
            == revision


def test_publish_into_a_stand_in_tree_that_is_not_one_is_refused(produced, tmp_path, capsys):
    """A mistyped --stand-in was made, published into and pinned in the manifest; now one line, nothing done."""
    root, manifest, _ = produced
    copy, notes = tmp_path / "m.yaml", tmp_path / "notes"
    shutil.copy(manifest, copy)
    notes.mkdir()
    (notes / "todo.txt").write_text("x")
    before = copy.read_bytes()
    for tree, problem in [(tmp_path / "typo", "does not exist; to start a new stand-in tree, make an empty directory"),
                          (notes, "is not a stand-in tree: it holds no repository")]:
        assert admin_cli(["--manifest", str(copy), "publish", GOLDEN_ENTRY, "--stand-in", str(tree),
                          "--work-dir", str(root / "work")]) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"perceiver-zoo-admin: error: --stand-in {tree} {problem}") and err.count("\n") == 1
    assert copy.read_bytes() == before and not (tmp_path / "typo").exists() and os.listdir(notes) == ["todo.txt"]


def test_regenerating_a_published_entry_on_a_fresh_checkout_keeps_its_publication(published, tmp_path, caplog):
    """No out/zoo/NAME (a clean checkout): the byte-identical artifact kept the entry published, as it was."""
    manifest, tree, revision = published
    copy = tmp_path / "m.yaml"
    shutil.copy(manifest, copy)
    copy_golden_files(tmp_path)
    before = copy.read_bytes()
    work = tmp_path / "work"
    assert regenerate(GOLDEN_ENTRY, work_dir=work, manifest=copy)["changed"] is False
    assert copy.read_bytes() == before  # status, revision, parity record and card_sha256 as published
    assert (work / GOLDEN_ENTRY / "README.md").read_bytes() == (tree / "tests/golden-language" / revision /
                                                                "README.md").read_bytes()
    assert regenerate(GOLDEN_ENTRY, work_dir=work, manifest=copy) == {"name": GOLDEN_ENTRY, "changed": False}
    with serve(tree, token=TOKEN) as hub:  # the work dir holds what was published: no new commit
        assert publish(GOLDEN_ENTRY, endpoint=hub.endpoint, token=TOKEN, work_dir=work,
                       manifest=copy)["revision"] == revision
    # The entry's text changed since: the card it would write is not the published one; still kept, and said.
    entry = get_entry(GOLDEN_ENTRY, copy)
    entry["preprocessing"]["note"] = "edited after publishing"
    update_entry(GOLDEN_ENTRY, entry, copy)
    edited = copy.read_bytes()
    assert regenerate(GOLDEN_ENTRY, work_dir=tmp_path / "work2", manifest=copy)["card"] is None
    assert copy.read_bytes() == edited and not (tmp_path / "work2" / GOLDEN_ENTRY / "README.md").exists()
    assert "differs from the published one" in caplog.text


def test_pull_by_name_matches_upstream(published, tmp_path, monkeypatch):
    manifest, tree, revision = published
    with hub_env(monkeypatch, tree, tmp_path / "cache"):
        model = create_model(GOLDEN_ENTRY, manifest=manifest)
    assert not model.training
    io = golden_io("language")
    with torch.no_grad():
        logits = model(torch.from_numpy(io["input/inputs"]).long(), torch.from_numpy(io["input/input_mask"]))
    assert_close(logits.numpy(), io["output/logits"], what="pulled golden-language logits")
    snapshot = tmp_path / "cache" / "models--tests--golden-language" / "snapshots" / revision / "model.safetensors"
    assert snapshot.is_file()


class _ColabOracle(torch.nn.Module):
    """Answers the colab sentence the way upstream_release.md says the released model does, if (and only if)
    it is given exactly the colab's input: bytes 51..59 masked, padded with 0 to 2048, mask on the 60 bytes."""

    def __init__(self, answer):
        super().__init__()
        from perceiver_torch import BytesTokenizer

        self.tokenizer = BytesTokenizer()
        self.answer = answer

    def forward(self, ids, mask):
        text = self.tokenizer.encode("This is an incomplete sentence where some words are missing.")
        expected_ids = text[:51] + [3] * 9 + [0] * (2048 - 60)
        logits = torch.zeros(1, ids.shape[1], 262)
        if ids[0].tolist() == expected_ids and mask[0].tolist() == [1] * 60 + [0] * 1988:
            logits[0, torch.arange(51, 60), torch.tensor(self.answer)] = 1.0
        return logits


def test_language_colab_check_builds_the_colab_input():
    from converters.zoo.verify import COLAB_GREEDY_IDS, known_checks

    released = {"kind": "released", "task": "language"}
    (check,) = known_checks(released, _ColabOracle(COLAB_GREEDY_IDS))
    assert check["passed"] and check["got"] == [38, 115, 111, 121, 121, 111, 116, 109, 52]
    (check,) = known_checks(released, _ColabOracle([38] * 9))
    assert not check["passed"]
    assert known_checks({"kind": "test", "task": "language"}, _ColabOracle(COLAB_GREEDY_IDS)) == []


def test_stored_output_check_runs_cuda_with_tf32_off_and_restores_it(tmp_path, monkeypatch):
    # cuDNN's TF32 is on by default, which put float32 convolutions ~4e-4 off the stored outputs (tolerance
    # 1e-4): the CUDA run must see it off, and the settings are restored. No GPU is needed: the call is recorded.
    from converters.zoo import verify

    np.savez(tmp_path / "io.npz", **{"input/x": np.zeros(2, np.float32), "output/y": np.ones(2, np.float32)})
    seen = []

    def run(task, model, inputs, device):
        seen.append((device, torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32,
                     torch.get_float32_matmul_precision()))
        return {"y": np.ones(2, np.float32)}

    class Placed:
        def to(self, device):
            return self

    monkeypatch.setattr(verify, "devices", lambda: ["cpu", "cuda"])
    monkeypatch.setattr(verify, "run_upstream_layout", run)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)  # torch's default (monkeypatch restores it)
    runs = verify.stored_io_runs("language", Placed(), tmp_path / "io.npz", "test")
    assert [r["passed"] for r in runs] == [True, True]
    assert seen[0][:2] == ("cpu", True) and seen[1] == ("cuda", False, False, "highest")
    assert torch.backends.cudnn.allow_tf32 is True  # restored


def test_a_new_converter_reproducing_the_published_bytes_is_recorded_and_then_up_to_date(published, tmp_path,
                                                                                          monkeypatch):
    """A converter-version bump whose output is byte-identical keeps the publication and notes the new version in
    parity.reverified, so the next run is a no-op instead of converting and verifying again on every run."""
    manifest, tree, revision = published
    copy = tmp_path / "m.yaml"
    shutil.copy(manifest, copy)
    copy_golden_files(tmp_path)
    before = get_entry(GOLDEN_ENTRY, copy)
    monkeypatch.setattr(regen, "CONVERTER_VERSION", before["parity"]["converter_version"] + "-next")
    work = tmp_path / "work"
    assert regenerate(GOLDEN_ENTRY, work_dir=work, manifest=copy)["changed"] is False
    after = get_entry(GOLDEN_ENTRY, copy)
    reverified = after["parity"].pop("reverified")
    assert after == before  # status, revision, artifact, parity figures and card_sha256 as published
    assert reverified["converter_version"] == regen.CONVERTER_VERSION and set(reverified) == {
        "date", "converter_version", "versions"}
    assert (work / GOLDEN_ENTRY / "README.md").read_bytes() == (tree / "tests/golden-language" / revision /
                                                                "README.md").read_bytes()
    recorded = copy.read_bytes()

    def no_conversion(*args, **kwargs):
        raise AssertionError("an up-to-date entry was converted again")

    monkeypatch.setattr(regen, "convert", no_conversion)
    assert regenerate(GOLDEN_ENTRY, work_dir=work, manifest=copy) == {"name": GOLDEN_ENTRY, "changed": False}
    assert copy.read_bytes() == recorded
    with serve(tree, token=TOKEN) as hub:  # nothing to publish: the same files, the same commit
        assert publish(GOLDEN_ENTRY, endpoint=hub.endpoint, token=TOKEN, work_dir=work,
                       manifest=copy)["revision"] == revision


def test_reverified_is_only_for_a_published_entry(published):
    manifest, _, _ = published
    entry = get_entry(GOLDEN_ENTRY, manifest)
    entry["parity"]["reverified"] = {"date": "2026-12-07", "converter_version": "x", "versions": {}}
    validate_entry(GOLDEN_ENTRY, entry)
    entry["status"] = "produced"
    with pytest.raises(ManifestError, match="parity.reverified.*absent while status is 'produced'"):
        validate_entry(GOLDEN_ENTRY, entry)
    entry["status"], entry["parity"]["reverified"] = "produced", {"date": "2026-12-07"}
    with pytest.raises(ManifestError, match=r"parity.reverified.converter_version'.*is required"):
        validate_entry(GOLDEN_ENTRY, entry)
