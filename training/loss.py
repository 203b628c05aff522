"""DFPnet's training loss: the sum of the cross-entropies of its five outputs (docs/reference.md
section 6)."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from utils.labels import IGNORE_LABEL


def _at_least_float32(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype == torch.float64 else x.float()


class _CrossEntropy(torch.autograd.Function):
    """``F.cross_entropy(logits.float(), labels, ignore_index=ignore_label)`` (mean over the pixels
    whose label is not ignored; NaN when there is none), computed in float32 for 16- and 32-bit
    logits (float64 stays float64).

    What it keeps for backward is the difference: the logits (which the caller holds anyway), the
    labels and the per-pixel log-sum-exp, and backward recomputes the softmax from them. The stock
    version on a float32 copy of bf16 logits keeps a float32 log-softmax of the whole map, several
    times more for DFPnet's five full-size outputs (bench/RESULTS.md section 1).
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, labels: torch.Tensor, ignore_label: int) -> torch.Tensor:
        x = _at_least_float32(logits)
        lse = torch.logsumexp(x, dim=1)
        valid = labels != ignore_label
        target = torch.where(valid, labels, 0).unsqueeze(1)
        nll = (lse - x.gather(1, target).squeeze(1)).masked_fill_(~valid, 0.0)
        ctx.ignore_label = ignore_label
        ctx.save_for_backward(logits, labels, lse)
        return nll.sum() / valid.sum()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        logits, labels, lse = ctx.saved_tensors
        valid = labels != ctx.ignore_label
        target = torch.where(valid, labels, 0).unsqueeze(1)
        # d/dlogits = (softmax - onehot(label)) / count on valid pixels, 0 on ignored ones.
        grad_x = torch.exp(_at_least_float32(logits) - lse.unsqueeze(1))
        grad_x.scatter_add_(1, target, torch.full_like(lse, -1.0).unsqueeze(1))
        grad_x.mul_((valid * (grad / valid.sum())).unsqueeze(1))
        return grad_x.to(logits.dtype), None, None


def cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, ignore_label: int = IGNORE_LABEL
) -> torch.Tensor:
    """Mean float32 cross-entropy of N x C x H x W ``logits`` against N x H x W ``labels``."""
    if not (logits.requires_grad and torch.is_grad_enabled()):
        return F.cross_entropy(_at_least_float32(logits), labels, ignore_index=ignore_label)
    return _CrossEntropy.apply(logits, labels, ignore_label)


def parsing_loss(
    outputs: Sequence[torch.Tensor], labels: torch.Tensor, ignore_label: int = IGNORE_LABEL
) -> torch.Tensor:
    """Sum over outputs of CE(ignore ``ignore_label``), each resized to the label size first.

    Resizing is bilinear with align_corners=True, as the authors' ``CriterionAll``; the loss is
    computed in float32 even under autocast (float64 in float64).
    """
    size = labels.shape[-2:]
    total = labels.new_zeros((), dtype=torch.float32)
    for out in outputs:
        if out.shape[-2:] != size:
            out = F.interpolate(out, size=size, mode="bilinear", align_corners=True)
        total = total + cross_entropy(out, labels, ignore_label)
    return total
