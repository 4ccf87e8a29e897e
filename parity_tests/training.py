"""A few steps of classification training, as the fine-tuning and custom-task tests run them."""

from __future__ import annotations

import torch


def train_classifier(model: torch.nn.Module, inputs: torch.Tensor, labels: torch.Tensor, steps: int,
                     lr: float) -> list[float]:
    """Adam on cross-entropy for `steps` steps: the losses. Asserts every parameter gets a gradient (non-zero
    on the first step: nothing is detached or unused)."""
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for step in range(steps):
        loss = torch.nn.functional.cross_entropy(model(inputs), labels)
        optimiser.zero_grad()
        loss.backward()
        missing = [n for n, p in model.named_parameters() if p.grad is None or (step == 0 and not p.grad.any())]
        assert missing == [], f"step {step}: no gradient for {missing}"
        optimiser.step()
        losses.append(loss.item())
    return losses
