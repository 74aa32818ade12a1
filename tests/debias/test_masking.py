"""Where SWiFT's mask acts: on the optimiser's update (survives Adam) or on the gradient (does not)."""

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from trustmed.debias.swift import UpdateMask, masked_grad_hook
from trustmed.train import fit


class _Pair(nn.Module):
    """Two parameter tensors that always receive the same gradient."""

    def __init__(self):
        super().__init__()
        self.masked = nn.Parameter(torch.zeros(8))
        self.plain = nn.Parameter(torch.zeros(8))


def _loss(model: _Pair, batch) -> torch.Tensor:
    (c,) = batch
    c = c.mean(0)
    return (model.masked * c).sum() + (model.plain * c).sum()


def _moved(optimizer: str, mask_on: str, mask_value: float = 0.5, weight_decay: float = 0.0):
    torch.manual_seed(0)
    model = _Pair()
    with torch.no_grad():
        start = torch.randn(8)
        model.masked.copy_(start)
        model.plain.copy_(start)
    masks = {"masked": torch.full((8,), mask_value), "plain": torch.ones(8)}
    on_update = mask_on == "update"
    wd = weight_decay if on_update else 0.0
    if optimizer == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=0.01, weight_decay=wd)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=wd)
    masking = UpdateMask(opt, dict(model.named_parameters()), masks) if on_update else None
    loader = DataLoader(TensorDataset(torch.randn(40, 8) + 1.0), batch_size=4)
    hook = None if on_update else masked_grad_hook(masks, weight_decay)
    fit(model, opt, loader, _loss, epochs=2, grad_hook=hook)  # accelerate-prepared optimiser
    if masking is not None:
        masking.remove()
    half = (model.masked.detach() - start).norm()
    full = (model.plain.detach() - start).norm()
    return float(half), float(full)


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_update_mask_halves_the_step_with_any_optimiser(optimizer):
    half, full = _moved(optimizer, "update")
    assert full > 0
    assert half / full == pytest.approx(0.5, abs=0.05)


def test_gradient_mask_is_cancelled_by_adam_but_not_by_sgd():
    half, full = _moved("adam", "gradient")
    assert half / full == pytest.approx(1.0, abs=0.05)  # Adam's scaling undoes m = 0.5
    half, full = _moved("sgd", "gradient")
    assert half / full == pytest.approx(0.5, abs=0.05)


@pytest.mark.parametrize("mask_on", ["update", "gradient"])
@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_zero_mask_freezes_the_entry_weight_decay_included(optimizer, mask_on):
    half, full = _moved(optimizer, mask_on, mask_value=0.0, weight_decay=0.1)
    assert half == 0.0 and full > 0


def test_update_mask_hooks_come_off():
    p = nn.Parameter(torch.zeros(2))
    opt = torch.optim.SGD([p], lr=1.0)
    UpdateMask(opt, {"p": p}, {"p": torch.zeros(2)}).remove()
    p.grad = torch.ones(2)
    opt.step()
    assert torch.equal(p.detach(), -torch.ones(2))
