"""compile_frozen: weight freezing that holds for every call and shape, matching eager."""

from __future__ import annotations

import pytest
import torch

import perceiver_torch as pt
from perceiver_torch.export import example_inputs

from .conftest import seeded_model

# As test_compile: Inductor's fused kernels may reorder float32 reductions; a wrong graph is O(1e-1).
TOLERANCE = 1e-5
# Halving every weight moves these outputs by 0.1-0.5: a graph that reads the live weights follows eager
# within TOLERANCE, a frozen one (weights folded in as constants) stays at least this far from it.
FROZEN_GAP = 1e-2


def _model(family: str) -> torch.nn.Module:
    return seeded_model(family).eval()


def test_frozen_model_matches_eager_and_is_frozen_at_every_shape():
    model = _model("imagenet_learned")
    torch._dynamo.reset()
    # Compiled unfrozen first with compile_frozen's own arguments: without the freezing option Dynamo hands
    # this graph back to compile_frozen (measured, torch 2.13).
    plain = torch.compile(model, dynamic=False)
    small, large = example_inputs(model, batch=2), example_inputs(model, batch=3)
    with torch.no_grad():
        plain(*small)
    fast = pt.compile_frozen(model)
    frozen = [fast(*small), fast(*large)]  # the second shape recompiles: frozen too
    with torch.no_grad():
        eager = [model(*small), model(*large)]
        for got, want in zip(frozen, eager, strict=True):
            torch.testing.assert_close(got, want, rtol=0, atol=TOLERANCE)
        for p in model.parameters():
            p.mul_(0.5)  # what the frozen graphs must not follow (freezing's documented contract)
        changed = [model(*small), model(*large)]
        assert (changed[0] - eager[0]).abs().max() > FROZEN_GAP
        assert (plain(*small) - changed[0]).abs().max() < TOLERANCE  # the unfrozen graph reads the live weights
    for inputs, live in zip((small, large), changed, strict=True):
        assert (fast(*inputs) - live).abs().max() > FROZEN_GAP


def test_calls_need_no_grad_context_and_return_no_graph():
    model = _model("imagenet_learned")
    torch._dynamo.reset()
    out = pt.compile_frozen(model)(*example_inputs(model, batch=2))
    assert not out.requires_grad and out.grad_fn is None


def test_further_inductor_options_are_passed_with_freezing(monkeypatch):
    seen = {}

    def fake_compile(model, **kwargs):
        seen.update(kwargs)
        return model

    monkeypatch.setattr(torch, "compile", fake_compile)
    model = _model("imagenet_learned")
    pt.compile_frozen(model, options={"max_autotune": True})
    assert seen["options"] == {"max_autotune": True, "freezing": True}
    pt.compile_frozen(model)
    assert seen["options"] == {"freezing": True}


@pytest.mark.parametrize("kwargs, refusal", [
    ({"options": "max_autotune"}, "options must be a mapping"),
    ({"options": {1: True}}, "options must be a mapping"),
    ({"dynamic": "yes"}, "dynamic must be True, False or None"),
    ({"fullgraph": None}, "dynamic must be True, False or None and fullgraph True or False; got dynamic=False, "
                          "fullgraph=None"),
])
def test_arguments_are_checked_before_compiling(kwargs, refusal):
    with pytest.raises(TypeError, match=f"compile_frozen: {refusal}"):
        pt.compile_frozen(_model("imagenet_learned"), **kwargs)
    with pytest.raises(TypeError, match="compile_frozen: model must be an nn.Module"):
        pt.compile_frozen(lambda x: x)


def test_options_cannot_turn_freezing_off():
    model = _model("imagenet_learned")
    with pytest.raises(ValueError, match="must not set 'freezing'"):
        pt.compile_frozen(model, options={"freezing": False})
