"""set_grad_checkpointing: the same gradients from every task model, with fewer activations kept for backward.

Golden configurations with random weights (seeded) and encoder dropout, in training mode. The checkpointed
blocks run the same CPU kernels on the same values in the same order, and non-reentrant checkpointing replays
the random state dropout drew from, so outputs and gradients are compared bit for bit.
"""

from __future__ import annotations

import copy

import pytest
import torch

from perceiver_torch.export import example_inputs
from perceiver_torch.layers import CrossAttention, SelfAttention, checkpointing

from .conftest import GOLDEN_TASKS, golden_config, seeded_model

DROPOUT = 0.2


def _model(family: str) -> torch.nn.Module:
    config = copy.deepcopy(golden_config(family))
    config["encoder"]["dropout_prob"] = DROPOUT  # dropout's masks must be the same in the recomputation
    model = seeded_model(family, config).train()
    for weight in model.parameters():  # flow's last layer starts at zero, which would zero every gradient
        if weight.ndim > 1 and not weight.any():
            torch.nn.init.normal_(weight, std=0.02)
    return model


def _inputs(model, family: str) -> tuple:
    inputs = example_inputs(model, batch=2)
    if family == "video_autoencoding":  # a decoding chunk: forward with subsample indices
        images, audio, image_points, audio_points = inputs
        inputs = (images, audio, {"image": image_points, "audio": audio_points})
    return inputs


def _step(model, inputs, autocast: bool, call=None):
    """Outputs and every parameter's gradient (None where unused) of one forward and backward, dropout seeded."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(1)
    with torch.autocast("cpu", torch.bfloat16, enabled=autocast):
        out = (model if call is None else call)(*inputs)
    outputs = list(out.values()) if isinstance(out, dict) else [out]
    sum((o.float() ** 2).mean() for o in outputs).backward()
    return [o.detach() for o in outputs], {n: p.grad for n, p in model.named_parameters()}


def _blocks(model) -> list[torch.nn.Module]:
    return [m for m in model.modules() if isinstance(m, (SelfAttention, CrossAttention))]


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16_autocast"])
@pytest.mark.parametrize("family", GOLDEN_TASKS)
def test_checkpointed_gradients_are_the_same(family, autocast):
    # bf16 autocast covers ImageNet's repeated latent block, whose shared weight casts the checkpointed
    # path leaves to autocast (encoder.py).
    model = _model(family)
    inputs = _inputs(model, family)
    outputs, grads = _step(model, inputs, autocast)
    model.set_grad_checkpointing()
    assert _blocks(model) and all(block.grad_checkpointing for block in _blocks(model))
    outputs_ckpt, grads_ckpt = _step(model, inputs, autocast)
    for expected, actual in zip(outputs, outputs_ckpt, strict=True):
        torch.testing.assert_close(actual, expected, rtol=0, atol=0)
    # The same parameters get gradients (video's mask tokens and label padding are unused in both), among
    # them every checkpointed block's.
    unused = sorted(n for n, g in grads.items() if g is None)
    assert sorted(n for n, g in grads_ckpt.items() if g is None) == unused
    assert not any(p.grad is None for block in _blocks(model) for p in block.parameters())
    for name, grad in grads.items():
        if grad is not None:
            torch.testing.assert_close(grads_ckpt[name], grad, rtol=0, atol=0, msg=lambda m, n=name: f"{n}: {m}")
    # Dropout was live: another seed gives other outputs (else the replay above proved nothing).
    torch.manual_seed(2)
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=autocast):
        other = model(*inputs)
    other = list(other.values()) if isinstance(other, dict) else [other]
    assert any(not torch.equal(o, e) for o, e in zip(other, outputs, strict=True))


def _saved_activation_bytes(model, inputs) -> int:
    """Bytes of the distinct storages autograd keeps for backward during a forward, parameters excluded."""
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            kept[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(*inputs)
    return sum(kept.values())


@pytest.mark.parametrize("family", GOLDEN_TASKS)
def test_checkpointing_keeps_fewer_activations(family):
    model = _model(family)
    inputs = _inputs(model, family)
    full = _saved_activation_bytes(model, inputs)
    model.set_grad_checkpointing(True)
    checkpointed = _saved_activation_bytes(model, inputs)
    # Each checkpointed block keeps only its inputs; the blocks hold most of every task's activations
    # (measured: 0.02-0.4 of the full amount here, the conv stem's being outside them), so at most half.
    assert 0 < checkpointed < full / 2, (checkpointed, full)
    model.set_grad_checkpointing(False)
    assert _saved_activation_bytes(model, inputs) == full


def test_checkpointing_acts_only_while_autograd_records(monkeypatch):
    model = _model("language")
    inputs = _inputs(model, "language")
    calls = []
    real = checkpointing.checkpoint
    monkeypatch.setattr(checkpointing, "checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))
    model.set_grad_checkpointing(True)
    with torch.no_grad():
        model(*inputs)
    assert calls == []  # inference (and export, compiled inference: both under no_grad) runs the blocks as they are
    model(*inputs)
    encoder = model.encoder
    assert len(calls) == 1 + encoder.num_blocks * len(encoder.self_attends) + 1  # cross, latent layers, decoder
    model.set_grad_checkpointing(False)
    calls.clear()
    model(*inputs)
    assert calls == []


def test_set_grad_checkpointing_takes_a_bool():
    model = _model("language")
    with pytest.raises(TypeError, match="enable must be a bool; got str 'yes'"):
        model.set_grad_checkpointing("yes")
    assert not any(block.grad_checkpointing for block in _blocks(model))


@pytest.mark.slow
def test_compiled_training_step_with_checkpointing_matches_eager():
    # torch.compile traces non-reentrant checkpointing as one graph; Inductor's fused kernels round
    # differently, so 1e-5 as for the compiled forward (test_compile.py).
    model = _model("imagenet_conv")
    for module in model.modules():  # Inductor draws its own dropout masks: compare without dropout
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    inputs = _inputs(model, "imagenet_conv")
    model.set_grad_checkpointing(True)
    _, expected = _step(model, inputs, autocast=False)
    expected = {n: g.clone() for n, g in expected.items()}
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True)
    _, actual = _step(model, inputs, autocast=False, call=compiled)
    for name, grad in expected.items():
        torch.testing.assert_close(actual[name], grad, rtol=0, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}")
