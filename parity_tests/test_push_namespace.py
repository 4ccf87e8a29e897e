"""`push_to_hub(model, "name")` without an owner, as huggingface_hub takes it: the server says whom the token belongs
to (`HfApi.whoami`, ``GET /api/whoami-v2``) and the repo is that user's, against the Hub stand-in (whose write token
belongs to `standin.USER`)."""

from __future__ import annotations

import pytest
from huggingface_hub import HfApi

import perceiver_torch as pt
from converters.zoo import standin
from perceiver_torch.zoo.cli import main as zoo_cli

from .conftest import assert_same_weights, seeded_model
from .test_hub_token import TOKEN, _without_a_token
from .zoo_support import hub_env

OWNER = standin.USER


def test_a_bare_name_is_pushed_to_the_token_owners_namespace(tmp_path, monkeypatch, caplog):
    _without_a_token(monkeypatch, tmp_path)
    model = seeded_model("language").eval()
    with hub_env(monkeypatch, tmp_path / "hub", tmp_path / "cache", token=TOKEN):
        with caplog.at_level("INFO", logger="perceiver_torch.zoo.push"):
            commit = pt.push_to_hub(model, "my-lm", token=TOKEN)
        assert f"'my-lm' is {OWNER}/my-lm (the token belongs to {OWNER})" in caplog.text
        assert_same_weights(pt.PerceiverForMaskedLM.from_pretrained(f"hf-hub:{OWNER}/my-lm", revision=commit), model)
        again = model.push_to_hub("my-lm", token=TOKEN, commit_message="again")  # the model's method alike
        assert again == commit  # the same files: no new commit
    card = (tmp_path / "hub" / OWNER / "my-lm" / commit / "README.md").read_text()
    assert f"# {OWNER}/my-lm" in card and f'from_pretrained("hf-hub:{OWNER}/my-lm")' in card


def test_the_cli_prints_the_repo_it_resolved(tmp_path, monkeypatch, capsys):
    _without_a_token(monkeypatch, tmp_path)
    path = pt.save_model(seeded_model("language").eval(), tmp_path / "lm.safetensors")
    with hub_env(monkeypatch, tmp_path / "hub", tmp_path / "cache", token=TOKEN):
        assert zoo_cli(["push", str(path), "from-the-cli", "--token", TOKEN]) == 0
    assert capsys.readouterr().out.startswith(f"{path}: pushed to hf-hub:{OWNER}/from-the-cli as commit ")


def test_a_token_the_server_refuses_is_named_and_nothing_is_created(tmp_path, monkeypatch):
    _without_a_token(monkeypatch, tmp_path)
    model = seeded_model("language").eval()
    with hub_env(monkeypatch, tmp_path / "hub", tmp_path / "cache", token=TOKEN) as hub:
        with pytest.raises(pt.HubError, match=rf"push_to_hub: 'my-lm' names no owner, and asking {hub.endpoint} whom "
                                              r"the token belongs to \(to push to that user's 'my-lm'\) failed: "
                                              r"HfHubHTTPError: Invalid user token\..*name the repo 'owner/my-lm'") \
                as refused:
            pt.push_to_hub(model, "my-lm", token="hf_not_the_secret")
        assert "hf_not_the_secret" not in str(refused.value)
        asked = hub.requests
        with pytest.raises(pt.HubError, match=r"push_to_hub: uploading to .*/my-lm needs a write token"):
            pt.push_to_hub(model, "my-lm")  # none on this machine: refused before asking anything
        assert hub.requests == asked
    assert [p.name for p in (tmp_path / "hub").iterdir()] == []


def test_a_model_save_model_refuses_is_refused_before_asking_the_server_anything(tmp_path, monkeypatch):
    _without_a_token(monkeypatch, tmp_path)
    model = seeded_model("language").eval().double()
    with hub_env(monkeypatch, tmp_path / "hub", tmp_path / "cache", token=TOKEN) as hub:
        asked = hub.requests
        with pytest.raises(ValueError, match="float64"):
            pt.push_to_hub(model, "my-lm", token=TOKEN)
        assert hub.requests == asked  # not even whom the token belongs to


def test_the_stand_in_answers_whoami_and_creates_a_bare_name_in_its_users_namespace(tmp_path):
    with standin.serve(tmp_path / "hub", token=TOKEN, user="someone") as hub:
        api = HfApi(endpoint=hub.endpoint, token=TOKEN)
        assert api.whoami()["name"] == "someone"
        assert api.create_repo("bare").repo_id == "someone/bare"
        with pytest.raises(Exception, match="Invalid user token"):
            HfApi(endpoint=hub.endpoint, token="hf_other").whoami()
    assert (tmp_path / "hub" / "someone" / "bare" / "refs" / "main").is_file()
