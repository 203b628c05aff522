"""training.optim.SGDInBackward: the same updates as torch.optim.SGD, made during backward."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from training.optim import SGDInBackward
from training.step import NonFiniteLossError, train_step


class _Net(nn.Module):
    """Two convolutions whose outputs DFPnet's loss takes (one parameter used twice: a shared head)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Conv2d(4, 3, 1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        y = torch.relu(self.body(x))
        return [self.head(y), self.head(y * 2)]


def _pair(optimizer_class, state: dict | None = None):
    torch.manual_seed(0)
    net = _Net()
    opt = optimizer_class(net.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    if state is not None:
        opt.load_state_dict(state)
    return net, opt


def _steps(net, opt, lrs, seed=1):
    gen = torch.Generator().manual_seed(seed)
    for i, lr in enumerate(lrs):
        images = torch.randn(2, 3, 8, 8, generator=gen)
        labels = torch.randint(0, 3, (2, 8, 8), generator=gen)
        train_step(net, opt, images, labels, lr=lr, iteration=i)


def _assert_same(a: nn.Module, a_opt, b: nn.Module, b_opt) -> None:
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(a_opt.state[p]["momentum_buffer"], b_opt.state[q]["momentum_buffer"])


def test_same_weights_and_momentum_as_sgd_also_after_loading_a_state():
    plain, plain_opt = _pair(torch.optim.SGD)
    fused, fused_opt = _pair(SGDInBackward)
    _steps(plain, plain_opt, [0.1, 0.05])
    _steps(fused, fused_opt, [0.1, 0.05])
    _assert_same(plain, plain_opt, fused, fused_opt)
    assert all(p.grad is None for p in fused.parameters())  # freed in backward
    # Resuming replaces the optimizer's group dicts; the learning rate set afterwards must still count.
    # A copy, as a checkpoint read back gives: loading keeps the tensors it is given.
    resumed, resumed_opt = _pair(SGDInBackward, copy.deepcopy(plain_opt.state_dict()))
    resumed.load_state_dict(plain.state_dict())
    _steps(plain, plain_opt, [0.2, 0.01], seed=2)
    _steps(resumed, resumed_opt, [0.2, 0.01], seed=2)
    _assert_same(plain, plain_opt, resumed, resumed_opt)
    _steps(fused, fused_opt, [0.3, 0.01], seed=2)
    assert not torch.equal(fused.head.weight, resumed.head.weight)  # not vacuous: the lr counts


def test_a_non_finite_loss_stops_before_any_update():
    net, opt = _pair(SGDInBackward)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    images = torch.full((2, 3, 8, 8), float("nan"))
    with pytest.raises(NonFiniteLossError, match="non-finite loss in iteration 5"):
        train_step(net, opt, images, torch.zeros(2, 8, 8, dtype=torch.long), lr=0.1, iteration=4)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert not opt.state and all(p.grad is None for p in net.parameters())
