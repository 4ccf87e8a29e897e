"""`--token TOKEN` on the command lines that talk to the Hub (huggingface_hub's CLI spelling), against the Hub
stand-in, whose private repos answer any request without the write token as a repo that does not exist: a
command that succeeds sent the token with each of its requests. A token is never shown, in an error or a
usage message, and is checked before any request as `token=` is."""

from __future__ import annotations

import json
import shutil

import pytest

import perceiver_torch as pt
from converters import from_transformers
from converters.cli import main as convert_cli
from converters.transformers.export_cli import main as to_transformers_cli
from converters.transformers.source import TransformersSourceError
from converters.zoo.cli import main as admin_cli
from perceiver_torch.zoo.cli import main as zoo_cli

from . import test_hub_token
from .conftest import golden_config, seeded_model
from .test_hub_token import PRIVATE, TOKEN, _without_a_token
from .transformers_support import save_small, standin_repo
from .zoo_support import TEST_HUB, TEST_MANIFEST, cached_files, hub_env

SECRET = "hf_do_not_show_me"
# A private language model on the stand-in, and no token on this machine (test_hub_token's fixture).
private_hub = test_hub_token.private_hub
NO_TOKEN_SENT = ("no token was sent: pass one (token='hf_...' in Python, --token on the command line), set HF_TOKEN "
                 "or log in with `hf auth login`")


def _refused(capsys, status: int, run) -> str:
    """What the command `run` printed on stderr, once it exited with `status` (as main's return or SystemExit)."""
    try:
        code = run()
    except SystemExit as exc:  # argparse's usage errors
        code = exc.code
    assert code == status
    err = capsys.readouterr().err
    assert "Traceback" not in err and SECRET not in err and TOKEN not in err
    return err


def test_info_and_pull_send_the_token(private_hub, capsys):
    name = f"hf-hub:{PRIVATE}"
    err = _refused(capsys, 1, lambda: zoo_cli(["info", name]))
    assert f"perceiver-zoo: error: {name} " in err and NO_TOKEN_SENT in err
    assert zoo_cli(["info", name, "--token", TOKEN]) == 0
    assert "task: language" in capsys.readouterr().out
    assert NO_TOKEN_SENT in _refused(capsys, 1, lambda: zoo_cli(["pull", name]))
    assert zoo_cli(["pull", name, "--token", TOKEN]) == 0
    assert capsys.readouterr().out.startswith(f"{name}: commit ")


def test_predict_and_export_send_it_for_the_body_too(private_hub, tmp_path, capsys):
    """The header is read, then the body downloaded in a second step: both with the token (a fresh cache)."""
    hub, model = private_hub
    name = f"hf-hub:{PRIVATE}"
    text = "a sentence [MASK]"
    assert zoo_cli(["predict", name, text, "--json", "--token", TOKEN]) == 0
    assert json.loads(capsys.readouterr().out)["results"] == [{"input": text, "output": model.fill_masked(text)}]
    assert any(p.endswith("model.safetensors") for p in cached_files(tmp_path / "cache"))
    # A token without access is sent, and named as such (export stops there, before anything is written).
    err = _refused(capsys, 1, lambda: zoo_cli(["export", name, "-o", str(tmp_path / "m.pt2"), "--token", SECRET]))
    assert "the token sent has no access to it (the one given: token='hf_...' in Python, --token on the command " \
           "line; else HF_TOKEN or `hf auth login`'s)" in err
    assert not (tmp_path / "m.pt2").exists()


def test_push_takes_the_token(tmp_path, monkeypatch, capsys):
    _without_a_token(monkeypatch, tmp_path)
    path = pt.save_model(seeded_model("language").eval(), tmp_path / "lm.safetensors")
    with hub_env(monkeypatch, tmp_path / "hub", tmp_path / "cache", token=TOKEN):
        err = _refused(capsys, 1, lambda: zoo_cli(["push", str(path), "someone/cli-push"]))
        assert "needs a write token: pass one (token='hf_...' in Python, --token on the command line)" in err
        err = _refused(capsys, 1, lambda: zoo_cli(["push", str(path), "someone/cli-push", "--token", SECRET]))
        assert "upload to" in err and "failed" in err
        assert zoo_cli(["push", str(path), "someone/cli-push", "--token", TOKEN]) == 0
    assert "pushed to hf-hub:someone/cli-push as commit" in capsys.readouterr().out


def test_a_zoo_model_on_a_private_endpoint(tmp_path, monkeypatch, capsys):
    _without_a_token(monkeypatch, tmp_path)
    tree = tmp_path / "zoo-hub"
    shutil.copytree(TEST_HUB, tree)
    (tree / "perceiver-torch" / "tiny-language-perceiver" / "visibility").write_text("private\n")
    with hub_env(monkeypatch, tree, tmp_path / "cache", token=TOKEN):
        argv = ["--manifest", str(TEST_MANIFEST), "pull", "tiny-language-perceiver"]
        assert "RepositoryNotFoundError" in _refused(capsys, 1, lambda: zoo_cli(argv))
        assert zoo_cli([*argv, "--token", TOKEN]) == 0
        assert "tiny-language-perceiver: verified sha256" in capsys.readouterr().out
        monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "other-cache"))  # predict downloads it again
        argv = ["--manifest", str(TEST_MANIFEST), "predict", "tiny-language-perceiver", "a [MASK]"]
        assert "RepositoryNotFoundError" in _refused(capsys, 1, lambda: zoo_cli(argv))
        assert zoo_cli([*argv, "--token", TOKEN]) == 0


def test_perceiver_to_transformers_takes_it_for_hf_hub_repos(private_hub, tmp_path, capsys):
    config = golden_config("language")
    config["decoder"] = {**config["decoder"], "qk_channels": 256, "num_heads": 8}  # what transformers fixes
    pt.push_to_hub(seeded_model("language", config).eval(), "someone/private-exportable", token=TOKEN, private=True)
    name = "hf-hub:someone/private-exportable"
    out = tmp_path / "exported"
    assert NO_TOKEN_SENT in _refused(capsys, 1, lambda: to_transformers_cli([name, "-o", str(out)]))
    assert to_transformers_cli([name, "-o", str(out), "--token", TOKEN]) == 0
    assert (out / "model.safetensors").is_file()
    err = _refused(capsys, 2, lambda: to_transformers_cli([str(out / "model.safetensors"), "-o", str(tmp_path / "x"),
                                                           "--token", SECRET]))
    assert "--token applies to hf-hub:owner/name repos only" in err


def test_perceiver_convert_takes_it_for_a_private_transformers_repo(tmp_path, monkeypatch, capsys):
    _without_a_token(monkeypatch, tmp_path)
    repo = "someone/private-transformers-lm"
    standin_repo(tmp_path / "hub", repo, save_small("PerceiverForMaskedLM", tmp_path / "model"))
    (tmp_path / "hub" / repo / "visibility").write_text("private\n")
    out = tmp_path / "ours.safetensors"
    argv = ["language", "--from-transformers", repo, "-o", str(out)]
    with hub_env(monkeypatch, tmp_path / "hub", tmp_path / "cache", token=TOKEN):
        assert "RepositoryNotFoundError" in _refused(capsys, 1, lambda: convert_cli(argv))
        assert not out.exists()
        assert convert_cli([*argv, "--token", TOKEN]) == 0
    assert pt.load_model(out).task == "language"
    err = _refused(capsys, 2, lambda: convert_cli(["language", "ckpt.pickle", "--preset", "language_perceiver_io_bytes",
                                                   "-o", str(out), "--token", SECRET]))
    assert "--from-transformers [--revision] [--token]" in err
    err = _refused(capsys, 1, lambda: convert_cli(["language", "--from-transformers", str(tmp_path / "model"), "-o",
                                                   str(tmp_path / "local.safetensors"), "--token", SECRET]))
    assert "--token applies to Hub repos" in err


def test_from_transformers_token_false_sends_not_even_the_machines_token(tmp_path, monkeypatch):
    """huggingface_hub adds the machine's token to a request given token=None: False must reach every request."""
    repo = "someone/private-transformers-lm"
    standin_repo(tmp_path / "hub", repo, save_small("PerceiverForMaskedLM", tmp_path / "model"))
    (tmp_path / "hub" / repo / "visibility").write_text("private\n")
    with hub_env(monkeypatch, tmp_path / "hub", tmp_path / "cache", token=TOKEN) as hub:
        monkeypatch.setenv("HF_TOKEN", TOKEN)  # the machine's token has access
        asked = hub.requests
        with pytest.raises(TransformersSourceError, match="RepositoryNotFoundError"):
            from_transformers("language", repo, tmp_path / "a.safetensors", token=False)
        assert hub.requests - asked == 1  # config.json's HEAD, refused: with the machine's token a GET would follow
        assert from_transformers("language", repo, tmp_path / "b.safetensors").is_file()  # None: the machine's


@pytest.mark.parametrize("cli, argv", [
    (zoo_cli, ["--token", SECRET, "pull", "tiny-language-perceiver"]),  # before the command: an invalid command
    (zoo_cli, ["list", f"--token={SECRET}"]),  # a command that does not take it: unrecognized arguments
    (zoo_cli, ["pull", "hf-hub:a/b", "--tokn", SECRET]),  # misspelt
    (zoo_cli, ["pull", "hf-hub:a/b", "--endpoint", "http://127.0.0.1:9", SECRET]),  # a stray word shaped as a token
    (admin_cli, ["--token", SECRET, "publish", "tiny-language-perceiver"]),
    (admin_cli, ["regenerate", "tiny-language-perceiver", "--token", SECRET]),
    (convert_cli, ["language", "c.pickle", "--preset", "language_perceiver_io_bytes", "-o", "x", "--tokn", SECRET]),
    (zoo_cli, ["pull", "hf-hub:a/b", f"--hf-token={SECRET}"]),  # other tools' spellings of the option
    (zoo_cli, ["pull", "hf-hub:a/b", "--use-auth-token", "not-hf-shaped"]),
    (zoo_cli, ["--token", "e", "pull"]),  # a one-letter token: replaced as a word, the message still readable
], ids=["zoo-before-command", "zoo-list-equals", "misspelt", "stray", "admin-before-command", "admin-regenerate",
        "convert-misspelt", "hf-token-equals", "use-auth-token", "short"])
def test_usage_errors_never_show_a_token_given_where_it_is_not_taken(capsys, cli, argv):
    err = _refused(capsys, 2, lambda: cli(argv))  # _refused: neither SECRET nor TOKEN in what was printed
    assert "<token, not shown>" in err and "not-hf-shaped" not in err, err
    assert "error: argument command: invalid choice" in err or "unrecognized arguments" in err, err


@pytest.mark.parametrize("token, problem", [
    ("", "argument --token: is empty; give a Hub access token, or leave --token out to use this machine's"),
    (f"{SECRET} ", "argument --token: (18 characters, not shown) holds whitespace, control or non-ASCII characters"),
    (f"{SECRET}\x1b", "argument --token: (18 characters, not shown) holds whitespace"),
    (f"{SECRET}\u00e9", "argument --token: (18 characters, not shown) holds whitespace"),
])
def test_a_token_that_cannot_be_sent_is_a_usage_error_that_does_not_show_it(private_hub, tmp_path, capsys, token,
                                                                            problem):
    hub, _ = private_hub
    asked = hub.requests
    name = f"hf-hub:{PRIVATE}"
    for run in (lambda: zoo_cli(["info", name, f"--token={token}"]),
                lambda: zoo_cli(["pull", name, f"--token={token}"]),
                lambda: zoo_cli(["predict", name, "x", f"--token={token}"]),
                lambda: zoo_cli(["export", name, "-o", str(tmp_path / "m.pt2"), f"--token={token}"]),
                lambda: zoo_cli(["push", str(tmp_path), "someone/x", f"--token={token}"]),
                lambda: to_transformers_cli([name, "-o", str(tmp_path / "x"), f"--token={token}"]),
                lambda: admin_cli(["publish", "x", f"--token={token}"])):
        assert problem in _refused(capsys, 2, run)
    assert hub.requests == asked


def test_the_token_applies_only_where_something_is_fetched(tmp_path, capsys):
    err = _refused(capsys, 2, lambda: zoo_cli(["info", str(tmp_path / "m.safetensors"), "--token", SECRET]))
    assert "--token applies to hf-hub: repos; " in err
    err = _refused(capsys, 2, lambda: zoo_cli(["predict", str(tmp_path / "m.safetensors"), "x", "--token", SECRET]))
    assert "--token applies to zoo models and hf-hub: repos; " in err


def test_the_help_points_to_hf_token(capsys):
    with pytest.raises(SystemExit):
        zoo_cli(["pull", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--token TOKEN a Hub access token" in out and "prefer HF_TOKEN=... or `hf auth login`" in out
