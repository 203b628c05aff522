"""training/loss.py: the five-output loss against the authors' CriterionAll written with stock ops."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.autograd.graph import saved_tensors_hooks

from training.loss import cross_entropy, parsing_loss


def authors_loss(outputs, labels, ignore_label=255):
    """CriterionAll: each output upsampled (bilinear, align_corners) to the labels, CE summed."""
    total = 0
    for out in outputs:
        out = F.interpolate(out, size=labels.shape[-2:], mode="bilinear", align_corners=True)
        out = out if out.dtype == torch.float64 else out.float()
        total = total + F.cross_entropy(out, labels, ignore_index=ignore_label)
    return total


def make_case(dtype, seed=0, ignored=0.2):
    g = torch.Generator().manual_seed(seed)
    outputs = [(torch.randn(2, 8, h, w, generator=g) * 3).to(dtype) for h, w in ((12, 10), (24, 20))]
    labels = torch.randint(0, 8, (2, 24, 20), generator=g)
    labels[torch.rand(labels.shape, generator=g) < ignored] = 255
    return outputs, labels


@pytest.mark.parametrize(
    "dtype,tol",
    [(torch.float64, 1e-12), (torch.float32, 1e-5), (torch.bfloat16, 1e-5)],
    ids=["fp64", "fp32", "bf16"],
)
def test_matches_the_authors_loss_and_gradients(dtype, tol):
    outputs, labels = make_case(dtype)
    ours_in = [o.clone().requires_grad_() for o in outputs]
    theirs_in = [o.clone().requires_grad_() for o in outputs]
    ours, theirs = parsing_loss(ours_in, labels), authors_loss(theirs_in, labels)
    assert ours.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    torch.testing.assert_close(ours.double(), theirs.double(), rtol=tol, atol=tol)
    (ours * 1.7).backward()
    (theirs * 1.7).backward()
    grad_tol = 1e-2 if dtype == torch.bfloat16 else tol  # both are float32 gradients rounded to bf16
    for a, b in zip(ours_in, theirs_in):
        assert a.grad.dtype == dtype
        torch.testing.assert_close(a.grad.double(), b.grad.double(), rtol=grad_tol, atol=1e-6)


def test_gradcheck():
    outputs, labels = make_case(torch.float64, seed=1)
    torch.autograd.gradcheck(lambda x: cross_entropy(x, labels), (outputs[1].requires_grad_(),))


def test_all_ignored_is_nan_like_the_stock_loss():
    outputs, labels = make_case(torch.float32, seed=2, ignored=1.1)
    x = outputs[1].requires_grad_()
    assert math.isnan(cross_entropy(x, labels).item())
    assert math.isnan(F.cross_entropy(x, labels, ignore_index=255).item())


def test_keeps_no_float32_copy_of_the_logits():
    outputs, labels = make_case(torch.bfloat16, seed=3)
    x = outputs[1].requires_grad_()
    saved = []
    with saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        cross_entropy(x, labels)
    big = [t for t in saved if t.numel() >= x.numel()]
    assert big and all(t.dtype == torch.bfloat16 for t in big), [(t.dtype, t.shape) for t in saved]
    saved.clear()
    with saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        F.cross_entropy(x.float(), labels, ignore_index=255)  # what it replaces keeps a float32 map
    assert any(t.dtype == torch.float32 and t.numel() >= x.numel() for t in saved)
