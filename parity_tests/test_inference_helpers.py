"""The task models' inference helpers run the model in eval mode, whatever mode it is in, and leave it as it was.

Before, `classify` on a model in train mode (a model straight from `build_model`, or a check in the middle of
training) updated the conv stem's batch-norm running statistics with its inputs and normalised with the batch's
own statistics, so an image's result depended on the batch it came in; with dropout, every helper was random.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from .conftest import golden_config, seeded_model


def _with_dropout(family: str) -> dict:
    config = golden_config(family)
    config["encoder"]["dropout_prob"] = 0.5  # train mode would drop half the activations
    return config


def _classify(model):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, size=(30 + 7 * i, 40, 3), dtype=np.uint8) for i in range(3)]
    return model.classify(images, k=3)


def _fill(model):
    return model.fill_masked(["ab[MASK]cd[MASK]", "x[MASK]"])


def _flow(model):
    g = torch.Generator().manual_seed(0)
    h, w = model.train_size
    frames = [torch.rand(1, 3, h + 3, w + 5, generator=g) * 2 - 1 for _ in range(2)]
    return model.estimate_flow(*frames)


def _autoencode(model):
    g = torch.Generator().manual_seed(0)
    images = torch.rand(1, model.num_frames, 3, model.image_size, model.image_size, generator=g)
    audio = torch.rand(1, model.num_samples, 1, generator=g) * 2 - 1
    return model.autoencode(images, audio)


HELPERS = {"imagenet_conv": _classify, "language": _fill, "optical_flow": _flow, "video_autoencoding": _autoencode}


def _same(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    return a == b


@pytest.mark.parametrize("family", sorted(HELPERS))
def test_a_helper_on_a_training_model_gives_the_eval_result_and_changes_nothing(family):
    helper = HELPERS[family]
    model = seeded_model(family, _with_dropout(family))
    with torch.no_grad():  # zero-initialised layers (the flow decoder's output) would make every output 0
        for p in model.parameters():
            if not p.any():
                p.normal_(0.0, 0.05)
    evaluated = copy.deepcopy(model).eval()
    expected = helper(evaluated)
    model.train()
    model.decoder.eval()  # a module the caller set apart keeps its own mode too
    modes = {name: m.training for name, m in model.named_modules()}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for _ in range(2):  # the same result each call: no dropout, no batch statistics
        assert _same(helper(model), expected)
    assert {name: m.training for name, m in model.named_modules()} == modes
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items()), "the helper changed the model"
    assert model.training and not model.decoder.training


def test_a_helper_restores_the_modes_when_it_fails():
    model = seeded_model("imagenet_conv").train()
    with pytest.raises(ValueError, match="expected an RGB image"):
        model.classify(np.zeros((8, 8), np.uint8))
    assert all(m.training for m in model.modules())
