"""`token=` of `create_model` / `from_pretrained` (huggingface_hub's semantics: a str is sent, True the machine's
and required, None the machine's if any, False none), against the Hub stand-in, whose private repos answer every
request without the write token as a repo that does not exist: a load that succeeds sent the token with each of
its requests (the HEAD, the header's range reads, the body)."""

from __future__ import annotations

import shutil

import huggingface_hub
import pytest

import perceiver_torch as pt
from perceiver_torch.zoo import ZooError

from .conftest import assert_same_weights, seeded_model
from .zoo_support import TEST_HUB, TEST_MANIFEST, answering_server, cached_files, hub_env

TOKEN = "test-write-token"
PRIVATE = "someone/private-lm"


def _without_a_token(monkeypatch, tmp_path) -> None:
    """No token on the machine: none in the environment, none saved by `hf auth login`."""
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))


@pytest.fixture
def private_hub(tmp_path, monkeypatch):
    _without_a_token(monkeypatch, tmp_path)
    model = seeded_model("language").eval()
    with hub_env(monkeypatch, tmp_path / "hub", tmp_path / "cache", token=TOKEN) as hub:
        pt.push_to_hub(model, PRIVATE, token=TOKEN, private=True)
        yield hub, model


def test_an_explicit_token_pulls_a_private_repo(private_hub, tmp_path):
    hub, model = private_hub
    with pytest.raises(pt.HubError, match=rf"hf-hub:{PRIVATE} .*: no such repo, or it is private and no token was "
                                          r"sent: pass one \(token='hf_\.\.\.' in Python, --token on the command "
                                          r"line\), set HF_TOKEN"):
        pt.create_model(f"hf-hub:{PRIVATE}")
    assert_same_weights(pt.create_model(f"hf-hub:{PRIVATE}", token=TOKEN), model)
    pulled = pt.PerceiverForMaskedLM.from_pretrained(f"hf-hub:{PRIVATE}", token=TOKEN, cache_dir=tmp_path / "other")
    assert_same_weights(pulled, model)
    assert any(p.endswith("model.safetensors") for p in cached_files(tmp_path / "other"))  # downloaded, with it


def test_a_wrong_token_is_named_as_having_no_access(private_hub, tmp_path):
    with pytest.raises(pt.HubError, match=r"no such repo, or it is private and the token sent has no access to it"):
        pt.create_model(f"hf-hub:{PRIVATE}", token="hf_someone_elses")
    assert cached_files(tmp_path / "cache") == []


def test_token_false_sends_none_and_true_sends_the_machines(private_hub, monkeypatch):
    hub, model = private_hub
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    with pytest.raises(pt.HubError, match="no token was sent"):
        pt.PerceiverForMaskedLM.from_pretrained(f"hf-hub:{PRIVATE}", token=False)
    assert_same_weights(pt.create_model(f"hf-hub:{PRIVATE}", token=True), model)
    assert_same_weights(pt.create_model(f"hf-hub:{PRIVATE}"), model)  # None: the machine's, as before


@pytest.mark.parametrize("token, error, message", [
    (True, ValueError, r"create_model: token=True sends this machine's Hub token, but there is none: set HF_TOKEN"),
    (123, TypeError, r"create_model: token must be a str \(a Hub access token\), True, False or None; got int"),
    (b"hf_x", TypeError, r"got bytes"),
    ("", ValueError, r"create_model: token is empty"),
    ("hf_secret\r\nX-Injected: 1", ValueError, r"create_model: token \(24 characters, not shown\) holds whitespace"),
    ("hf_secret ", ValueError, r"create_model: token \(10 characters, not shown\) holds whitespace"),
    ("hf_\x1bsecret", ValueError, r"create_model: token \(10 characters, not shown\) holds whitespace, control"),
    ("hf_\x7fsecret", ValueError, r"create_model: token \(10 characters, not shown\) holds whitespace, control"),
    # Not ASCII: the request failed, its UnicodeEncodeError quoting the character and its position in the secret.
    ("hf_\u00e9secret", ValueError, r"create_model: token \(10 characters, not shown\) holds whitespace, control or "
                                    r"non-ASCII characters"),
])
def test_a_token_that_cannot_be_sent_is_refused_before_any_request(private_hub, token, error, message):
    hub, _ = private_hub
    asked = hub.requests
    with pytest.raises(error, match=message) as refused:
        pt.create_model(f"hf-hub:{PRIVATE}", token=token)
    assert "secret" not in str(refused.value)
    with pytest.raises(error, match=message.replace("create_model", r"PerceiverForMaskedLM\.from_pretrained")):
        pt.PerceiverForMaskedLM.from_pretrained(f"hf-hub:{PRIVATE}", token=token)
    assert hub.requests == asked


def test_a_zoo_model_on_a_private_endpoint_takes_the_token_too(tmp_path, monkeypatch):
    _without_a_token(monkeypatch, tmp_path)
    tree = tmp_path / "zoo-hub"
    shutil.copytree(TEST_HUB, tree)
    (tree / "perceiver-torch" / "tiny-language-perceiver" / "visibility").write_text("private\n")
    with hub_env(monkeypatch, tree, tmp_path / "cache", token=TOKEN):
        with pytest.raises(ZooError, match=r"zoo model 'tiny-language-perceiver': download of .* failed: "
                                           r"RepositoryNotFoundError"):
            pt.create_model("tiny-language-perceiver", manifest=TEST_MANIFEST)
        with pytest.raises(TypeError, match="fetch: token must be a str"):
            pt.zoo.fetch("tiny-language-perceiver", manifest=TEST_MANIFEST, token=123)
        assert pt.zoo.fetch("tiny-language-perceiver", manifest=TEST_MANIFEST, token=TOKEN).is_file()
        model = pt.create_model("tiny-language-perceiver", manifest=TEST_MANIFEST, token=TOKEN)
    assert isinstance(model, pt.PerceiverForMaskedLM) and not model.training


def test_token_false_sends_not_even_the_machines_token_to_a_zoo_endpoint(tmp_path, monkeypatch):
    """huggingface_hub adds the machine's token to a request given token=None: False must reach every request."""
    tree = tmp_path / "zoo-hub"
    shutil.copytree(TEST_HUB, tree)
    (tree / "perceiver-torch" / "tiny-language-perceiver" / "visibility").write_text("private\n")
    with hub_env(monkeypatch, tree, tmp_path / "cache", token=TOKEN) as hub:
        monkeypatch.setenv("HF_TOKEN", TOKEN)  # the machine's token has access
        asked = hub.requests
        with pytest.raises(ZooError, match="RepositoryNotFoundError"):
            pt.create_model("tiny-language-perceiver", manifest=TEST_MANIFEST, token=False)
        assert hub.requests - asked == 1  # the HEAD, refused: with the machine's token it would pass, and a GET follow
        assert not (tmp_path / "cache" / "models--perceiver-torch--tiny-language-perceiver" / "blobs").exists()
        assert pt.create_model("tiny-language-perceiver", manifest=TEST_MANIFEST) is not None  # None: the machine's


def test_keywords_that_do_not_apply_are_named_as_such(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing is asked of any server
    with pytest.raises(TypeError, match=r"PerceiverForMaskedLM.from_pretrained: unexpected keyword argument\(s\) "
                                        r"'revison' \(it takes cache_dir, device, device_map, dtype, endpoint, "
                                        r"force_download, local_files_only, manifest, mirror, num_classes, revision, "
                                        r"token, torch_dtype\)"):
        pt.PerceiverForMaskedLM.from_pretrained("hf-hub:a/b", revison="main")
    with pytest.raises(TypeError, match=r"'hf-hub:a/b' is a Hub repo, which takes no mirror \(those select a zoo "
                                        r"model's source: zoo names only\)"):
        pt.PerceiverForMaskedLM.from_pretrained("hf-hub:a/b", mirror=tmp_path, token="hf_x")
    with pytest.raises(TypeError, match=r"is a file, which takes no token \(only device, dtype, their"):
        pt.PerceiverForMaskedLM.from_pretrained(tmp_path / "lm.safetensors", token="hf_x")


@pytest.mark.parametrize("token, sent", [(False, "no token was sent"), ("hf_other", "the token sent has no access")])
def test_a_gated_repo_says_so_and_whether_a_token_went(tmp_path, monkeypatch, token, sent):
    """The Hub answers a gated repo's file with 403 and X-Error-Code GatedRepo: accepting its conditions is what
    is missing, not the repo (the refusal said 'no such repo, or it is private')."""
    _without_a_token(monkeypatch, tmp_path)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))

    def answer(method, path, number):
        return 403, {"X-Error-Code": "GatedRepo", "X-Error-Message": "Access to model a/b is restricted."}, b""

    with answering_server(answer) as server:
        with pytest.raises(pt.HubError, match=f"the repo is gated: accept its conditions on the Hub with the account "
                                              f"whose token is sent \\({sent}") as refused:
            pt.create_model("hf-hub:someone/gated", endpoint=server.endpoint, token=token)
    assert "hf_other" not in str(refused.value)  # a token is never shown


def test_push_to_hub_checks_its_token_as_loading_does(tmp_path, monkeypatch):
    """A token that could not be sent is refused before any request, without being shown; False sends none, which
    cannot upload."""
    _without_a_token(monkeypatch, tmp_path)
    with hub_env(monkeypatch, tmp_path / "hub", tmp_path / "cache", token=TOKEN) as hub:
        model = seeded_model("language").eval()
        with pytest.raises(ValueError, match=r"push_to_hub: token \(10 characters, not shown\) holds whitespace"):
            pt.push_to_hub(model, PRIVATE, token="hf_secret ")
        with pytest.raises(TypeError, match=r"push_to_hub: token must be a str"):
            pt.push_to_hub(model, PRIVATE, token=123)
        monkeypatch.setenv("HF_TOKEN", TOKEN)
        with pytest.raises(pt.HubError, match=r"needs a write token"):
            pt.push_to_hub(model, PRIVATE, token=False)
        assert hub.requests == 0
        assert pt.push_to_hub(model, PRIVATE, token=True)  # the machine's
