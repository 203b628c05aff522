"""DFPnet's training loss: the sum of the cross-entropies of its five outputs (SPEC section 6)."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F


def parsing_loss(outputs: Sequence[torch.Tensor], labels: torch.Tensor, ignore_label: int = 255) -> torch.Tensor:
    """Sum over outputs of CE(ignore ``ignore_label``), each resized to the label size first.

    Resizing is bilinear with align_corners=True, as the authors' ``CriterionAll``; the loss is
    computed in float32 even under autocast.
    """
    size = labels.shape[-2:]
    total = labels.new_zeros((), dtype=torch.float32)
    for out in outputs:
        if out.shape[-2:] != size:
            out = F.interpolate(out, size=size, mode="bilinear", align_corners=True)
        total = total + F.cross_entropy(out.float(), labels, ignore_index=ignore_label)
    return total
