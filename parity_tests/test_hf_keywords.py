"""The loading keywords transformers users pass to `from_pretrained`: `local_files_only` (the Hub cache only, what
is missing named), `force_download` (downloaded again though cached, verified alike), `torch_dtype` ("auto": the
checkpoint's) and a one-device `device_map`, and `save_pretrained(dir, push_to_hub=True, repo_id=...)`; against
the Hub stand-in, whose request count shows what was asked of it."""

from __future__ import annotations

import copy
import os
import shutil

import pytest
import torch

import perceiver_torch as pt
from converters.zoo import standin
from perceiver_torch.zoo import ZooError

from .conftest import assert_same_weights, seeded_model
from .test_hub_token import TOKEN, _without_a_token
from .zoo_support import TEST_HUB, TEST_MANIFEST, hub_env

REPO = "someone/shared-lm"
ZOO = "tiny-language-perceiver"
LM = pt.PerceiverForMaskedLM


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """The test zoo's tree and a user's repo REPO on the stand-in (an empty cache); yields it and REPO's model."""
    _without_a_token(monkeypatch, tmp_path)
    tree = tmp_path / "hub"
    shutil.copytree(TEST_HUB, tree)  # a copy: the stand-in serves nothing outside its root, and writes into it
    model = seeded_model("language").eval()
    with hub_env(monkeypatch, tree, tmp_path / "cache", token=TOKEN) as server:
        pt.push_to_hub(model, REPO, token=TOKEN)
        yield server, model


def _blob(path) -> os.stat_result:
    return os.stat(os.path.realpath(path))


def test_local_files_only_loads_from_the_cache_without_a_request(hub, tmp_path):
    server, model = hub
    asked = server.requests
    with pytest.raises(pt.HubError, match=rf"hf-hub:{REPO}: local_files_only=True and the Hub cache {tmp_path}/cache "
                                          r"holds no model\.safetensors for revision 'main'"):
        LM.from_pretrained(f"hf-hub:{REPO}", local_files_only=True)
    with pytest.raises(ZooError, match=rf"zoo model '{ZOO}': download of .* failed \(local_files_only=True and the "
                                       rf"file is not in the cache {tmp_path}/cache; pull it there online"):
        LM.from_pretrained(ZOO, manifest=TEST_MANIFEST, local_files_only=True)
    assert server.requests == asked
    LM.from_pretrained(f"hf-hub:{REPO}")  # into the cache
    zoo_model = LM.from_pretrained(ZOO, manifest=TEST_MANIFEST)
    asked = server.requests
    assert_same_weights(LM.from_pretrained(f"hf-hub:{REPO}", local_files_only=True), model)
    assert_same_weights(LM.from_pretrained(ZOO, manifest=TEST_MANIFEST, local_files_only=True), zoo_model)
    assert_same_weights(pt.create_model(f"hf-hub:{REPO}", local_files_only=True), model)
    assert server.requests == asked


def test_force_download_fetches_a_cached_file_again(hub, tmp_path):
    server, model = hub
    LM.from_pretrained(f"hf-hub:{REPO}")
    LM.from_pretrained(ZOO, manifest=TEST_MANIFEST)
    cached = {p: _blob(p) for p in (tmp_path / "cache").rglob("model.safetensors")}
    assert len(cached) == 2
    asked = server.requests
    LM.from_pretrained(ZOO, manifest=TEST_MANIFEST)
    assert server.requests == asked  # a cached zoo file: no request without force_download
    assert_same_weights(LM.from_pretrained(f"hf-hub:{REPO}", force_download=True), model)
    assert server.requests - asked >= 4  # HEAD, the header's two range reads, the body (HEAD and GET)
    asked = server.requests
    assert isinstance(pt.create_model(ZOO, manifest=TEST_MANIFEST, force_download=True), LM)
    assert server.requests - asked >= 2  # HEAD and GET
    for path, before in cached.items():  # each blob replaced by the verified new download
        assert _blob(path).st_ino != before.st_ino and _blob(path).st_size == before.st_size


def test_a_forced_download_is_verified_as_a_first_one(hub, tmp_path):
    """A download that does not match what the server announced is refused, and the cached file stays."""
    server, model = hub
    LM.from_pretrained(f"hf-hub:{REPO}")
    server.faults["corrupt"] = True
    with pytest.raises(pt.zoo.IntegrityError, match="nothing was kept in the cache"):
        LM.from_pretrained(f"hf-hub:{REPO}", force_download=True)
    server.faults.clear()
    assert_same_weights(LM.from_pretrained(f"hf-hub:{REPO}", local_files_only=True), model)  # the cached one stays


def test_a_forced_download_with_the_hub_down_does_not_fall_back_to_the_cache(hub, monkeypatch):
    LM.from_pretrained(f"hf-hub:{REPO}")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:1")  # nothing listens there
    assert LM.from_pretrained(f"hf-hub:{REPO}") is not None  # the cached commit, with a warning
    with pytest.raises(pt.HubError, match=rf"hf-hub:{REPO} .*: the Hub could not be reached .*; force_download=True "
                                          r"downloads the file again, so the cache's copy was not used"):
        LM.from_pretrained(f"hf-hub:{REPO}", force_download=True)


def test_fetch_keywords_that_cannot_be_honoured_are_refused_before_any_request(hub, tmp_path, monkeypatch):
    server, _ = hub
    asked = server.requests
    for name in (f"hf-hub:{REPO}", ZOO):
        extra = {"manifest": TEST_MANIFEST} if name == ZOO else {}
        with pytest.raises(ValueError, match=r"PerceiverForMaskedLM\.from_pretrained: local_files_only=True reads "
                                             r"the Hub cache only and force_download=True downloads again"):
            LM.from_pretrained(name, local_files_only=True, force_download=True, **extra)
        with pytest.raises(TypeError, match=r"from_pretrained: force_download must be True or False; got str 'no'"):
            LM.from_pretrained(name, force_download="no", **extra)
        with pytest.raises(TypeError, match=r"create_model: local_files_only must be True or False; got int 1"):
            pt.create_model(name, local_files_only=1, **extra)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match="force_download=True downloads again, but HF_HUB_OFFLINE is set"):
        LM.from_pretrained(f"hf-hub:{REPO}", force_download=True)
    assert server.requests == asked


def test_a_file_satisfies_local_files_only_and_takes_no_force_download(tmp_path):
    model = seeded_model("language").eval()
    model.save_pretrained(tmp_path / "saved")
    assert_same_weights(LM.from_pretrained(tmp_path / "saved", local_files_only=True), model)
    with pytest.raises(TypeError, match=r"is a file, which takes no force_download \(only device, dtype, their"):
        LM.from_pretrained(tmp_path / "saved", force_download=True)
    assert_same_weights(LM.from_pretrained(tmp_path / "saved", force_download=False), model)  # the default, spelt


def test_torch_dtype_and_device_map_are_dtype_and_device(tmp_path):
    model = seeded_model("language").eval()
    saved = tmp_path / "saved"
    model.save_pretrained(saved)
    half = LM.from_pretrained(saved, torch_dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16 and LM.from_pretrained(saved, torch_dtype="bfloat16").dtype == torch.bfloat16
    assert_same_weights(half, copy.deepcopy(model).to(torch.bfloat16))  # as model.to(dtype) gives it
    for auto in ({"torch_dtype": "auto"}, {"dtype": "auto"}, {}):
        assert_same_weights(LM.from_pretrained(saved, **auto), model)  # the checkpoint's: float32
    for placed in ({"device_map": "cpu"}, {"device_map": {"": "cpu"}}, {"device": torch.device("cpu")},
                   {"device": "cpu", "device_map": torch.device("cpu")},
                   {"device_map": {"encoder": "cpu", "decoder": torch.device("cpu")}}):  # every module on one
        assert LM.from_pretrained(saved, **placed).device == torch.device("cpu")
    with pytest.raises(TypeError, match=r"from_pretrained: dtype=torch\.float16 and torch_dtype=torch\.bfloat16 were "
                                        r"both given; give one \(torch_dtype is transformers' spelling of dtype\)"):
        LM.from_pretrained(saved, dtype=torch.float16, torch_dtype="bfloat16")
    with pytest.raises(ValueError, match=r"from_pretrained: torch_dtype must be one of float32, bfloat16, float16, "
                                         r"float64 \(a name or the torch dtype\) or 'auto' \(the checkpoint's\); got "
                                         r"torch\.int8"):
        LM.from_pretrained(saved, torch_dtype=torch.int8)
    for spread in ("auto", "balanced", {"encoder": 0, "decoder": "cpu"}):
        with pytest.raises(ValueError, match=r"device_map=.* spreads the model over devices, which perceiver-torch "
                                             r"does not do: it loads a model onto one device\. Give that device"):
            LM.from_pretrained(saved, device_map=spread)
    with pytest.raises(TypeError, match=r"device='cpu' and device_map='cuda:0' were both given"):
        LM.from_pretrained(saved, device="cpu", device_map=0)
    with pytest.raises(ValueError, match=r"device_map=\{\} places no module; give a device"):
        LM.from_pretrained(saved, device_map={})
    with pytest.raises(TypeError, match=r"device_map must be a device \(a str, torch.device or GPU index\) or a map "
                                        r"of modules to one device; got bool True"):
        LM.from_pretrained(saved, device_map=True)


def test_save_pretrained_pushes_what_it_saved(tmp_path, monkeypatch):
    _without_a_token(monkeypatch, tmp_path)
    model = seeded_model("language").eval()
    with hub_env(monkeypatch, tmp_path / "hub", tmp_path / "cache", token=TOKEN) as server:
        path = model.save_pretrained(tmp_path / "to-push", push_to_hub=True, repo_id=REPO, token=TOKEN, private=True)
        assert path == tmp_path / "to-push" / "model.safetensors"
        assert_same_weights(LM.from_pretrained(f"hf-hub:{REPO}", token=TOKEN), model)
        model.save_pretrained(tmp_path / "my-lm", push_to_hub=True, token=TOKEN)  # transformers' default: its name
        assert_same_weights(LM.from_pretrained(f"hf-hub:{standin.USER}/my-lm"), model)
        asked = server.requests
        for kwargs, error, message in (
                ({"token": TOKEN}, TypeError, r"save_pretrained: token applies to the upload; pass push_to_hub=True"),
                ({"push_to_hub": "yes"}, TypeError, r"save_pretrained: push_to_hub must be True or False; got str"),
                ({"push_to_hub": True, "tokn": TOKEN}, TypeError, r"save_pretrained: unexpected keyword argument\(s\) "
                                                                  r"'tokn' \(it takes push_to_hub and, with "
                                                                  r"push_to_hub=True, repo_id, "),
                ({"tokn": TOKEN}, TypeError, r"save_pretrained: unexpected keyword argument\(s\) 'tokn'"),
                ({"push_to_hub": True, "repo_id": "a/b/c"}, ValueError, r"repo_id must be a Hub repo id 'owner/name', "
                                                                        r"or a name .*; got 'a/b/c'\."),
                # the values too, before the file is written (save_pretrained then push_to_hub, as in transformers)
                ({"push_to_hub": True, "repo_id": REPO, "token": ""}, ValueError, r"push_to_hub: token is empty"),
                ({"push_to_hub": True, "repo_id": REPO, "private": "yes"}, TypeError, r"private must be True, False"),
                ({"push_to_hub": True, "repo_id": REPO, "revision": "../x"}, ValueError, r"revision"),
                ({"push_to_hub": True, "repo_id": REPO, "token": False}, pt.HubError, r"needs a write token"),
                ({"push_to_hub": True, "repo_id": REPO}, pt.HubError, r"needs a write token"),  # none on the machine
                ({"push_to_hub": True, "repo_id": REPO, "token": TOKEN, "endpoint": 5}, TypeError, r"endpoint must"),
                ({"push_to_hub": True}, ValueError, r"save_pretrained: the directory's name 'refused\.\.' is no Hub "
                                                    r"repo name; pass repo_id='owner/name'")):
            refused = tmp_path / ("refused.." if kwargs == {"push_to_hub": True} else "refused")
            with pytest.raises(error, match=message):
                model.save_pretrained(refused, **kwargs)
            assert not refused.exists()  # refused before anything was written
        assert server.requests == asked


def test_create_model_takes_device_none_as_the_cpu_as_from_pretrained_does():
    model = pt.create_model("vision-perceiver-fourier", pretrained=False, device=None, num_classes=3)
    assert {p.device.type for p in model.parameters()} == {"cpu"}
