"""The input normalisation as tensors (docs/reference.md section 3.5) and the numpy -> tensor step.

The authors read images with OpenCV (BGR) and normalise them with ImageNet's mean and std,
which are RGB statistics, applied to the BGR channels *as they are*. Their released weights
(and the ImageNet backbone they start from, trained the same way in that code base) expect
exactly this input, so we keep it: do not convert to RGB here, or the weights see swapped
colours and lose accuracy. The numbers and the arithmetic live in ``utils.transforms``
(``MEAN``, ``STD``, ``normalize_array``), which does not import torch, so that the onnxruntime
path normalises with the very same code.
"""
from __future__ import annotations

import numpy as np
import torch

from utils.transforms import MEAN, STD, normalize_array

__all__ = ["MEAN", "STD", "ToTensorNormalized", "default_transform", "denormalize_image", "normalize_image"]


def normalize_image(image: np.ndarray) -> torch.Tensor:
    """H x W x 3 uint8 BGR array -> 3 x H x W float32 tensor, ``(x / 255 - MEAN) / STD`` per channel."""
    return torch.from_numpy(normalize_array(image))


def denormalize_image(tensor: torch.Tensor) -> np.ndarray:
    """Inverse of :func:`normalize_image` for pictures: 3 x H x W float -> H x W x 3 uint8 BGR."""
    mean = torch.tensor(MEAN, dtype=torch.float32, device=tensor.device).view(3, 1, 1)
    std = torch.tensor(STD, dtype=torch.float32, device=tensor.device).view(3, 1, 1)
    image = (tensor.detach().float() * std + mean).mul_(255.0).round_().clamp_(0, 255)
    return image.to(torch.uint8).permute(1, 2, 0).cpu().numpy()


class ToTensorNormalized:
    """The default sample transform of :class:`dataset.datasets.CartoonDataSet`.

    Called as ``transform(image, label=None, edge=None)`` and returns the triple
    ``(image, label, edge)``: the image normalised by :func:`normalize_image`, label and edge
    as int64 tensors (what ``cross_entropy`` wants); a ``None`` stays ``None``. A custom
    transform passed to the dataset must follow the same protocol.
    """

    def __call__(self, image: np.ndarray, label: np.ndarray | None = None,
                 edge: np.ndarray | None = None):
        image_t = normalize_image(image)
        label_t = None if label is None else torch.from_numpy(np.ascontiguousarray(label, dtype=np.int64))
        edge_t = None if edge is None else torch.from_numpy(np.ascontiguousarray(edge, dtype=np.int64))
        return image_t, label_t, edge_t

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mean={MEAN}, std={STD}, channels=BGR)"


def default_transform() -> ToTensorNormalized:
    """The transform every script uses: BGR uint8 -> normalised float tensor, labels -> int64."""
    return ToTensorNormalized()
