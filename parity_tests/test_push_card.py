"""`push_to_hub` and the repo's model card: a README.md already in the repo is kept (as transformers and timm keep
it) unless `overwrite_card=True` / `perceiver-zoo push --overwrite-card`; a repo without one gets the generated
card. Against the Hub stand-in, with the real huggingface_hub client."""

from __future__ import annotations

import os

import huggingface_hub
import pytest
import yaml

import perceiver_torch as pt
from perceiver_torch.zoo.cli import main as zoo_cli

from .conftest import seeded_model
from .zoo_support import hub_env

TOKEN = "test-write-token"
REPO = "someone/carded-lm"
MY_CARD = "---\nlicense: mit\ndatasets: [my-corpus]\n---\n\n# My notes\n\nFine-tuned on my corpus.\n"


def _card(hub, revision: str) -> str:
    # cache_dir given: huggingface_hub read HF_HUB_CACHE at its import, so hub_env's would not reach it.
    path = huggingface_hub.hf_hub_download(REPO, "README.md", revision=revision, endpoint=hub.endpoint, token=TOKEN,
                                           cache_dir=os.environ["HF_HUB_CACHE"])
    return open(path, encoding="utf-8").read()


def _write_my_card(hub, revision: str | None = None) -> str:
    api = huggingface_hub.HfApi(endpoint=hub.endpoint, token=TOKEN)
    return api.upload_file(path_or_fileobj=MY_CARD.encode(), path_in_repo="README.md", repo_id=REPO,
                           revision=revision).oid


def _weights(hub, revision: str) -> bytes:
    path = huggingface_hub.hf_hub_download(REPO, "model.safetensors", revision=revision, endpoint=hub.endpoint,
                                           token=TOKEN, cache_dir=os.environ["HF_HUB_CACHE"])
    return open(path, "rb").read()


def test_a_card_already_in_the_repo_is_kept_unless_overwrite_card(tmp_path, monkeypatch):
    first, second = seeded_model("language", seed=0).eval(), seeded_model("language", seed=1).eval()
    with hub_env(monkeypatch, tmp_path / "hub", tmp_path / "cache", token=TOKEN) as hub:
        generated = pt.push_to_hub(first, REPO, token=TOKEN)
        assert "library_name: perceiver-torch" in _card(hub, generated)  # a repo without a card gets one
        _write_my_card(hub)
        kept = pt.push_to_hub(second, REPO, token=TOKEN)
        assert _card(hub, kept) == MY_CARD
        pt.save_model(second, tmp_path / "second.safetensors")
        assert _weights(hub, kept) == (tmp_path / "second.safetensors").read_bytes()  # the weights did change
        dev = pt.push_to_hub(first, REPO, token=TOKEN, revision="dev")  # a new branch holds main's card
        assert _card(hub, dev) == MY_CARD
        replaced = pt.push_to_hub(second, REPO, token=TOKEN, overwrite_card=True)
        assert "library_name: perceiver-torch" in _card(hub, replaced) and "My notes" not in _card(hub, replaced)
        assert _card(hub, dev) == MY_CARD  # another branch is untouched


def test_a_repo_created_with_a_card_keeps_it_on_the_first_push(tmp_path, monkeypatch):
    with hub_env(monkeypatch, tmp_path / "hub", tmp_path / "cache", token=TOKEN) as hub:
        huggingface_hub.HfApi(endpoint=hub.endpoint, token=TOKEN).create_repo(REPO)
        _write_my_card(hub)
        commit = pt.push_to_hub(seeded_model("language").eval(), REPO, token=TOKEN)
        assert _card(hub, commit) == MY_CARD
        assert sorted(p.name for p in (tmp_path / "hub" / REPO / commit).iterdir()) == ["README.md",
                                                                                         "model.safetensors"]


def test_a_transformers_repo_is_not_pushed_into(tmp_path, monkeypatch):
    """Pushing into a transformers model's repo replaced its model.safetensors with ours: transformers then loaded it
    with every weight initialised at random, a load report its only sign. Refused, the repo left as it was."""
    with hub_env(monkeypatch, tmp_path / "hub", tmp_path / "cache", token=TOKEN) as hub:
        api = huggingface_hub.HfApi(endpoint=hub.endpoint, token=TOKEN)
        api.create_repo(REPO)
        before = api.upload_file(path_or_fileobj=b'{"model_type": "perceiver"}', path_in_repo="config.json",
                                 repo_id=REPO).oid
        with pytest.raises(pt.HubError, match=f"push_to_hub: {hub.endpoint}/{REPO} holds a transformers model "
                                              r"\(config.json\); pushing would replace its model.safetensors"):
            pt.push_to_hub(seeded_model("language").eval(), REPO, token=TOKEN)
        assert api.model_info(REPO).sha == before


def test_a_card_pushed_while_the_push_looks_is_not_overwritten_unseen(tmp_path, monkeypatch):
    """The commit names the parent whose files were looked at: a card committed in between fails the upload (the
    Hub's 412), rather than being replaced by the generated card."""
    with hub_env(monkeypatch, tmp_path / "hub", tmp_path / "cache", token=TOKEN) as hub:
        model_info = huggingface_hub.HfApi.model_info

        def looked_then_someone_pushed(self, *args, **kwargs):
            info = model_info(self, *args, **kwargs)
            _write_my_card(hub)
            return info

        monkeypatch.setattr(huggingface_hub.HfApi, "model_info", looked_then_someone_pushed)
        with pytest.raises(pt.HubError, match=rf"push_to_hub: upload to {hub.endpoint}/{REPO} failed: .*412"):
            pt.push_to_hub(seeded_model("language").eval(), REPO, token=TOKEN)
        assert _card(hub, "main") == MY_CARD


def test_overwrite_card_must_be_a_bool(tmp_path, monkeypatch):
    with hub_env(monkeypatch, tmp_path / "hub", tmp_path / "cache", token=TOKEN) as hub:
        with pytest.raises(TypeError, match=r"push_to_hub: overwrite_card must be True or False; got str 'no'"):
            pt.push_to_hub(seeded_model("language").eval(), REPO, token=TOKEN, overwrite_card="no")
        assert hub.requests == 0


def test_cli_push_keeps_the_card_and_says_so_unless_overwrite_card(tmp_path, monkeypatch, capsys):
    path = pt.save_model(seeded_model("language").eval(), tmp_path / "lm.safetensors")
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    with hub_env(monkeypatch, tmp_path / "hub", tmp_path / "cache", token=TOKEN) as hub:
        assert zoo_cli(["push", str(path), REPO]) == 0
        assert capsys.readouterr().out.splitlines()[0].endswith("; wrote README.md")
        _write_my_card(hub)
        assert zoo_cli(["push", str(path), REPO, "--message", "again"]) == 0
        first_line = capsys.readouterr().out.splitlines()[0]
        assert first_line.endswith("; kept the repo's README.md (--overwrite-card replaces it)")
        assert _card(hub, first_line.split(" as commit ")[1].split(";")[0]) == MY_CARD
        assert zoo_cli(["push", str(path), REPO, "--overwrite-card"]) == 0
        first_line = capsys.readouterr().out.splitlines()[0]
        assert first_line.endswith("; wrote README.md")
        assert "library_name: perceiver-torch" in _card(hub, first_line.split(" as commit ")[1].split(";")[0])


def _front_matter(card: str) -> dict:
    return yaml.safe_load(card.split("---\n")[1])


@pytest.mark.parametrize("source_repo, licence", [("deepmind/language-perceiver", "cc-by-4.0"), (None, None)])
def test_the_generated_card_gives_the_hubs_task_and_a_release_derived_licence(tmp_path, monkeypatch, source_repo,
                                                                              licence):
    """The pushed card had neither a pipeline_tag (the Hub's task filters) nor the licence the export card gives
    weights converted from DeepMind's release; weights of unknown origin get none (the sharer's to state)."""
    metadata = {"source_repo": source_repo} if source_repo else None
    path = pt.save_model(seeded_model("language").eval(), tmp_path / "m.safetensors", metadata=metadata)
    with hub_env(monkeypatch, tmp_path / "hub", tmp_path / "cache", token=TOKEN) as hub:
        front = _front_matter(_card(hub, pt.push_to_hub(path, REPO, token=TOKEN)))
    assert front["pipeline_tag"] == "fill-mask" and front["library_name"] == "perceiver-torch"
    assert front.get("license") == licence


def test_a_push_to_a_branch_looks_at_the_branch_not_main(tmp_path, monkeypatch):
    """The card check and the commit's parent are the branch's: main moving on meanwhile does not fail the push,
    and a card on main is not taken for the branch's."""
    with hub_env(monkeypatch, tmp_path / "hub", tmp_path / "cache", token=TOKEN) as hub:
        pt.push_to_hub(seeded_model("language", seed=0).eval(), REPO, token=TOKEN, revision="dev")  # dev: a card
        _write_my_card(hub)  # main's card only
        pt.push_to_hub(seeded_model("language", seed=1).eval(), REPO, token=TOKEN)  # main moves on
        main = hub.resolve(REPO, "main")
        commit = pt.push_to_hub(seeded_model("language", seed=2).eval(), REPO, token=TOKEN, revision="dev")
        assert hub.resolve(REPO, "dev") == commit and hub.resolve(REPO, "main") == main
        assert _card(hub, commit) != MY_CARD and _card(hub, main) == MY_CARD
