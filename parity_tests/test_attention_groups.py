"""Eager CPU attention that materialises its logits takes a few sequences at a time at large batches, with the
same values as one batched call; under autocast and when traced it keeps the single call."""

from __future__ import annotations

import pytest
import torch

from perceiver_torch.layers import attention

BATCH, HEADS, TQ, TKV = 5, 3, 5, 7


def _heads(d_qk: int, d_v: int, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    shapes = ((BATCH, HEADS, TQ, d_qk), (BATCH, HEADS, TKV, d_qk), (BATCH, HEADS, TKV, d_v))
    return tuple(torch.randn(*shape, generator=g).to(dtype) for shape in shapes)


def _masks() -> dict:
    g = torch.Generator().manual_seed(1)
    return {
        "none": None,
        "keys": torch.rand(BATCH, 1, 1, TKV, generator=g) > 0.3,
        "keys, batch 1": torch.rand(1, 1, 1, TKV, generator=g) > 0.3,
        "full": torch.rand(BATCH, 1, TQ, TKV, generator=g) > 0.3,
    }


def _attend_counting(monkeypatch, q, k, v, mask, group_bytes: int) -> tuple[torch.Tensor, int]:
    """attend's output and how many times it computed probabilities, with LOGITS_GROUP_BYTES = group_bytes."""
    monkeypatch.setattr(attention, "LOGITS_GROUP_BYTES", group_bytes)
    calls = []
    probabilities = attention._probabilities
    monkeypatch.setattr(attention, "_probabilities", lambda *a: calls.append(1) or probabilities(*a))
    out = attention.attend(q, k, v, mask)
    monkeypatch.setattr(attention, "_probabilities", probabilities)
    return out, len(calls)


# (dtype, bytes a logit takes on the path): float32 / float64 heads of unequal widths take _explicit_attention,
# bfloat16 ones with narrower q/k take _narrow_key_attention, whose logits are float32.
PATHS = {"float64": (torch.float64, 8), "float32": (torch.float32, 4), "bfloat16": (torch.bfloat16, 4)}


@pytest.mark.parametrize("mask", sorted(_masks()))
@pytest.mark.parametrize("dtype", sorted(PATHS))
def test_sequence_groups_give_the_batched_values(dtype, mask, monkeypatch):
    """Groups of 2 sequences out of 5 (the last one short): three calls, bit for bit the single call's output
    (each sequence's matmuls and softmax are independent, so no tolerance)."""
    dtype, logit_bytes = PATHS[dtype]
    q, k, v = _heads(4, 6, dtype)
    m = _masks()[mask]
    per_sequence = HEADS * TQ * TKV * logit_bytes
    single, single_calls = _attend_counting(monkeypatch, q, k, v, m, 1 << 60)
    grouped, grouped_calls = _attend_counting(monkeypatch, q, k, v, m, 2 * per_sequence)
    assert (single_calls, grouped_calls) == (1, 3)
    assert grouped.dtype == single.dtype and grouped.shape == single.shape == (BATCH, HEADS, TQ, 6)
    assert torch.equal(grouped, single)


def test_one_sequence_over_the_budget_is_taken_alone(monkeypatch):
    q, k, v = _heads(4, 6, torch.float32)
    _, calls = _attend_counting(monkeypatch, q, k, v, None, 1)
    assert calls == BATCH


def test_float32_heads_under_autocast_keep_the_single_call(monkeypatch):
    """matmul with out= skips autocast's cast to bfloat16, so grouping there would change the values: the
    single autocast call is kept, and the output is what it gives."""
    q, k, v = _heads(4, 6, torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = torch.matmul(attention._probabilities(q, k, None, 0.5), v)
        got, calls = _attend_counting(monkeypatch, q, k, v, None, 1)
    assert calls == 1
    assert got.dtype == want.dtype == torch.bfloat16
    assert torch.equal(got, want)


class _Attend(torch.nn.Module):
    def forward(self, q, k, v):
        return attention.attend(q, k, v, None)


def test_export_with_a_dynamic_batch_keeps_one_batched_call(monkeypatch):
    """Traced, the batch may be symbolic: no Python loop over it. The exported program holds the two matmuls of
    one call and matches eager at another batch size (float32: the same kernels, bit for bit)."""
    monkeypatch.setattr(attention, "LOGITS_GROUP_BYTES", 1)
    q, k, v = _heads(4, 6, torch.float32)
    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.export.export(_Attend(), (q, k, v), dynamic_shapes=({0: batch}, {0: batch}, {0: batch}))
    targets = [str(node.target) for node in program.graph.nodes if node.op == "call_function"]
    assert sum("matmul" in t or "bmm" in t for t in targets) == 2, targets
    q3, k3, v3 = (x[:3] for x in (q, k, v))
    torch.testing.assert_close(program.module()(q3, k3, v3), attention.attend(q3, k3, v3, None), atol=0, rtol=0)


def test_compile_keeps_one_batched_call(monkeypatch):
    """Compiled for a fixed batch, the graph keeps the single call too (Inductor plans the whole thing)."""
    monkeypatch.setattr(attention, "LOGITS_GROUP_BYTES", 1)
    q, k, v = _heads(4, 6, torch.float32)
    graphs = []

    def record(graph_module, example_inputs):
        graphs.append(graph_module)
        return graph_module.forward

    torch._dynamo.reset()
    compiled = torch.compile(_Attend(), backend=record, dynamic=False, fullgraph=True)
    torch.testing.assert_close(compiled(q, k, v), attention.attend(q, k, v, None), atol=0, rtol=0)
    assert len(graphs) == 1
    targets = [str(node.target) for node in graphs[0].graph.nodes if node.op == "call_function"]
    assert sum("matmul" in t for t in targets) == 2, targets


@pytest.mark.parametrize("dtype", sorted(PATHS))
def test_calls_autograd_records_keep_the_single_call(dtype, monkeypatch):
    """matmul's out= has no backward: inputs that require grad take the single call, and gradients flow. Without
    autograd recording, the same tensors are taken in groups again."""
    q, k, v = (x.requires_grad_() for x in _heads(4, 6, PATHS[dtype][0]))
    out, calls = _attend_counting(monkeypatch, q, k, v, _masks()["keys"], 1)
    assert calls == 1
    out.float().square().sum().backward()
    assert all(x.grad is not None and x.grad.abs().sum() > 0 for x in (q, k, v))
    with torch.no_grad():
        _, calls = _attend_counting(monkeypatch, q, k, v, _masks()["keys"], 1)
    assert calls == BATCH


def test_a_model_trains_where_its_logits_exceed_the_group_budget(monkeypatch):
    """The released language model's cross-attention logits (16 MiB a sequence) exceed LOGITS_GROUP_BYTES at
    any batch: a training step at batch 3 of the golden model, with the budget below one sequence."""
    from perceiver_torch.export import example_inputs

    from .conftest import seeded_model

    monkeypatch.setattr(attention, "LOGITS_GROUP_BYTES", 1)
    model = seeded_model("language").train()
    ids, mask = example_inputs(model, batch=3)
    model(ids, mask).float().square().mean().backward()
    assert all(p.grad is not None for p in model.parameters())
