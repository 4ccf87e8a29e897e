"""Under autocast, the weights of the repeated latent blocks are cast once per forward: same outputs, fewer casts."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import perceiver_torch.layers.encoder as encoder_module
from perceiver_torch.export import example_inputs
from perceiver_torch.layers import PerceiverEncoder
from perceiver_torch.layers.precision import autocast_weights

from .conftest import seeded_model


class CastsToBfloat16(TorchDispatchMode):
    """Storage addresses of the float32 tensors cast to bfloat16 (autocast's casts and ours alike)."""

    def __init__(self):
        super().__init__()
        self.sources = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.aten._to_copy.default and args[0].dtype == torch.float32 \
                and kwargs.get("dtype") == torch.bfloat16:
            self.sources.append(args[0].data_ptr())
        return func(*args, **kwargs)


def _encoder(num_blocks: int) -> PerceiverEncoder:
    torch.manual_seed(0)
    return PerceiverEncoder(12, num_self_attends_per_block=2, num_blocks=num_blocks, z_index_dim=5,
                            num_z_channels=16, num_cross_attend_heads=1, num_self_attend_heads=2).eval()


def _weight_casts(encoder: PerceiverEncoder, inputs: torch.Tensor) -> tuple[torch.Tensor, list]:
    weights = {p.data_ptr() for p in encoder.self_attends.parameters() if p.ndim == 2}
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16), CastsToBfloat16() as casts:
        out = encoder(inputs)
    return out, [s for s in casts.sources if s in weights]


def test_shared_weights_are_cast_once_for_all_repeats_with_the_same_output(monkeypatch):
    encoder = _encoder(num_blocks=3).requires_grad_(False)  # autocast's own cache needs requires_grad
    inputs = torch.randn(2, 7, 12)
    got, casts = _weight_casts(encoder, inputs)
    linears = [p for p in encoder.self_attends.parameters() if p.ndim == 2]
    assert len(casts) == len(linears) == 2 * 6  # per layer: query, key, value, output, two MLP layers
    monkeypatch.setattr(encoder_module, "autocast_weights", lambda module: None)
    want, uncached = _weight_casts(encoder, inputs)
    assert len(uncached) == 3 * len(linears)  # what autocast does alone: a cast at every use
    assert got.dtype == torch.float32 and torch.equal(got, want)


def test_gradients_are_unchanged_under_autocast(monkeypatch):
    encoder = _encoder(num_blocks=2).train()
    inputs = torch.randn(2, 7, 12)

    def grads():
        encoder.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            encoder(inputs).float().square().sum().backward()
        return {n: p.grad.clone() for n, p in encoder.named_parameters()}

    got = grads()
    monkeypatch.setattr(encoder_module, "autocast_weights", lambda module: None)
    want = grads()
    assert got.keys() == want.keys() and all(torch.equal(got[n], want[n]) for n in got)


def test_nothing_is_cast_outside_autocast_or_for_wider_weights():
    encoder = _encoder(num_blocks=2)
    assert autocast_weights(encoder.self_attends) is None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cast = autocast_weights(encoder.self_attends)
        assert cast and all(t.dtype == torch.bfloat16 for t in cast.values())
        assert set(cast) == {n for n, p in encoder.self_attends.named_parameters() if "norm" not in n}
        assert autocast_weights(encoder.self_attends.double()) == {}


@pytest.mark.parametrize("family", ["imagenet_learned", "imagenet_fourier", "imagenet_conv"])
def test_task_models_with_repeated_blocks_give_identical_outputs(family, monkeypatch):
    model = seeded_model(family).eval().requires_grad_(False)
    assert model.config["encoder"]["num_blocks"] > 1  # the repeated blocks are what this test is about
    inputs = example_inputs(model, batch=2)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        got = model(*inputs)
        monkeypatch.setattr(encoder_module, "autocast_weights", lambda module: None)
        want = model(*inputs)
    assert torch.equal(got, want)
