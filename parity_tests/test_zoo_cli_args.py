"""`perceiver-zoo` refuses a bad manifest path, output location or --chunks up front: one error line,
nothing pulled, traced or left behind."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from converters.zoo.cli import main as admin_cli
from parity_tests.zoo_support import TEST_HUB, TEST_MANIFEST, cached_files, hub_env
from perceiver_torch import create_model, load_model
from perceiver_torch.zoo.cli import main as zoo_cli

REPO = Path(__file__).resolve().parents[1]

MANIFEST = ["--manifest", str(TEST_MANIFEST)]


@pytest.fixture
def hub(monkeypatch, tmp_path):
    with hub_env(monkeypatch, TEST_HUB, tmp_path / "cache") as served:
        yield served


def _refused(capsys, hub, tmp_path, argv, code, message):
    if code == 2:  # argparse's usage error
        with pytest.raises(SystemExit) as exit_info:
            zoo_cli(argv)
        assert exit_info.value.code == 2
    else:
        assert zoo_cli(argv) == code
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err
    assert hub.requests == 0 and cached_files(tmp_path / "cache") == []  # refused before the pull


def test_a_manifest_that_is_a_directory_is_named_as_such(tmp_path, capsys, hub):
    _refused(capsys, hub, tmp_path, ["--manifest", str(tmp_path), "list"], 1,
             f"perceiver-zoo: error: zoo manifest {tmp_path} is a directory, not a manifest file")


def test_an_output_below_a_file_is_refused_before_the_pull(tmp_path, capsys, hub):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    out = blocker / "sub" / "lm.pt2"
    _refused(capsys, hub, tmp_path, [*MANIFEST, "export", "tiny-language-perceiver", "-o", str(out)], 1,
             f"perceiver-zoo: error: cannot write {out}: {blocker} is not a directory.")
    assert blocker.read_text() == "x"


def test_an_output_in_an_unwritable_folder_is_refused_before_the_pull(tmp_path, capsys, hub, monkeypatch):
    folder = tmp_path / "read-only"
    folder.mkdir()
    real_access = os.access
    # As root, mode bits do not stop writes; what access(2) says for this folder is what is checked.
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == str(folder) else real_access(p, mode))
    out = folder / "new" / "lm.pt2"
    _refused(capsys, hub, tmp_path, [*MANIFEST, "export", "tiny-language-perceiver", "-o", str(out)], 1,
             f"perceiver-zoo: error: cannot write {out}: the folder {folder} is not writable.")
    assert list(folder.iterdir()) == []  # no folder made for it


@pytest.mark.parametrize("name, chunks, code, message", [
    ("tiny-multimodal-perceiver", "0", 2, "--chunks must be >= 1 (decoding chunks per clip); got 0"),
    ("tiny-multimodal-perceiver", "-3", 2, "--chunks must be >= 1 (decoding chunks per clip); got -3"),
    ("tiny-multimodal-perceiver", "3", 1, "chunks=3 must divide both the 512 image points and the 8 audio patches"),
    ("tiny-language-perceiver", "2", 1, "chunks applies only to the video autoencoder"),
])
def test_bad_chunks_are_refused_before_the_pull(tmp_path, capsys, hub, name, chunks, code, message):
    out = tmp_path / "out" / "m.pt2"
    _refused(capsys, hub, tmp_path, [*MANIFEST, "export", name, "-o", str(out), "--chunks", chunks], code, message)
    assert not out.parent.exists()


def test_admin_serve_standin_takes_the_stand_ins_options():
    # `perceiver-zoo-admin serve-standin --root DIR` as the README gives it (the options were swallowed before).
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-m", "converters.zoo", "serve-standin", "--root", str(TEST_HUB),
                             "--idle-timeout", "0.5"], capture_output=True, text=True, timeout=60, cwd=repo,
                            env={**os.environ, "PYTHONPATH": str(repo)})
    assert result.returncode == 0, result.stderr
    assert f"serving {TEST_HUB.resolve()} at http://127.0.0.1:" in result.stdout and "(read-only)" in result.stdout
    missing = subprocess.run([sys.executable, "-m", "converters.zoo", "serve-standin"], capture_output=True,
                             text=True, timeout=60, cwd=repo, env={**os.environ, "PYTHONPATH": str(repo)})
    assert missing.returncode == 2 and "the following arguments are required: --root" in missing.stderr


@pytest.mark.parametrize("option, value, message", [
    ("--port", "99999", "argument --port: the port must be 0-65535 (0: any free one); got '99999'"),
    ("--idle-timeout", "-5", "argument --idle-timeout: must be a number of seconds > 0; got '-5'"),
])
def test_admin_serve_standin_refuses_bad_numbers_as_usage_errors(capsys, option, value, message):
    with pytest.raises(SystemExit) as exit_info:
        admin_cli(["serve-standin", "--root", str(TEST_HUB), option, value])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err and "Traceback" not in err, err


def test_admin_serve_standin_refuses_a_root_or_port_it_cannot_use_in_one_line(tmp_path, capsys):
    a_file, missing, other = tmp_path / "a-file", tmp_path / "missing", tmp_path / "other"
    a_file.write_text("x")
    other.mkdir()
    (other / "notes.txt").write_text("x")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for argv, message in [
            (["--root", str(a_file)], f"--root {a_file} is not a directory"),
            (["--root", str(missing)], f"--root {missing} does not exist; a read-only stand-in would serve an empty "
                                       "tree (--writable starts a new one)"),
            (["--root", str(other)], f"--root {other} is not a stand-in tree: it holds no repository"),
            (["--root", str(TEST_HUB), "--port", str(port)], f"cannot listen on 127.0.0.1:{port}: Address already in"),
        ]:
            assert admin_cli(["serve-standin", *argv]) == 1, argv
            err = capsys.readouterr().err
            assert err.startswith(f"perceiver-zoo-admin: error: {message}") and err.count("\n") == 1, err
    assert not missing.exists() and a_file.read_text() == "x" and os.listdir(other) == ["notes.txt"]
    # --writable starts a new tree where none is (and stops after its idle timeout, exit 0)
    assert admin_cli(["serve-standin", "--root", str(missing), "--writable", "--idle-timeout", "0.2"]) == 0
    assert missing.is_dir() and list(missing.iterdir()) == []


def test_admin_serve_standin_stops_on_ctrl_c_with_one_line():
    # SIGINT set back to its default in the child: a shell's background job (a CI run) would inherit it ignored.
    with subprocess.Popen([sys.executable, "-m", "converters.zoo", "serve-standin", "--root", str(TEST_HUB)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)},
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)) as server:
        try:
            assert server.stdout is not None and "serving" in server.stdout.readline()
            server.send_signal(signal.SIGINT)
            out, err = server.communicate(timeout=60)
        finally:
            server.kill()  # a no-op once it has exited
    assert (server.returncode, out, err) == (0, "stopped (Ctrl-C)\n", "")


def test_an_interrupted_pull_says_so_without_a_traceback(capsys, hub, tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):  # what Ctrl-C raises mid-download
        raise KeyboardInterrupt

    monkeypatch.setattr("perceiver_torch.zoo.download.http_get", interrupted)
    assert zoo_cli([*MANIFEST, "pull", "tiny-language-perceiver"]) == 130
    assert capsys.readouterr().err.splitlines()[-1] == "perceiver-zoo: interrupted; no file was left half-written."
    assert cached_files(tmp_path / "cache") == []  # the temp file and the folders made for it are gone


def test_the_meta_device_is_refused_before_the_pull_and_kept_for_the_untrained_architecture(tmp_path, capsys, hub):
    """Weights cannot be loaded onto the meta device: refused as a device, not reported as a broken file."""
    message = "device 'meta' holds no data, so no weights can be loaded onto it: give cpu or cuda"
    _refused(capsys, hub, tmp_path, [*MANIFEST, "predict", "tiny-language-perceiver", "x", "--device", "meta"], 1,
             f"perceiver-zoo: error: {message}")
    for load in (lambda: create_model("tiny-language-perceiver", device="meta", manifest=TEST_MANIFEST),
                 lambda: create_model("hf-hub:someone/model", device="meta"),
                 lambda: load_model(tmp_path / "missing.safetensors", device=torch.device("meta"))):
        with pytest.raises(ValueError, match=re.escape(message)):
            load()
    assert hub.requests == 0 and cached_files(tmp_path / "cache") == []
    untrained = create_model("tiny-language-perceiver", pretrained=False, device="meta", manifest=TEST_MANIFEST)
    assert all(p.is_meta for p in untrained.parameters())


def test_a_reader_that_closes_stdout_early_ends_the_cli_quietly():
    """`perceiver-zoo list | head -1`: the closed pipe is a quiet exit (status 141, as SIGPIPE's), not an error."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # closed before the CLI writes a byte: every write meets a closed pipe
    with subprocess.Popen([sys.executable, "-m", "perceiver_torch.zoo.cli", "list"], stdout=write_end,
                          stderr=subprocess.PIPE, cwd=REPO) as cli:
        os.close(write_end)
        err = cli.stderr.read() if cli.stderr else b""
    assert (cli.returncode, err) == (141, b"")


@pytest.mark.parametrize("argv", [["predict", "", "x"], ["info", ""], ["export", "", "-o", "out.pt2"]])
def test_an_empty_model_argument_is_named_as_empty(argv, capsys, tmp_path, monkeypatch):
    """Before, '' became Path('.') and was reported as '. is a directory without a model.safetensors'."""
    monkeypatch.chdir(tmp_path)
    assert zoo_cli(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("perceiver-zoo: error: MODEL is empty: give a zoo name") and err.count("\n") == 1
    assert os.listdir(tmp_path) == []
