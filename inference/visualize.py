"""Pictures of predictions and metrics, shared by evaluate.py, parse_images.py and train.py.

Figures are plain ``matplotlib.figure.Figure`` objects drawn on the Agg canvas: no pyplot, no
global backend switch, nothing that needs a display. evaluate.py saves them with
``save_figure``; train.py logs the very same figures with ``SummaryWriter.add_figure``.
Image helpers return RGB uint8 arrays (TensorBoard's ``dataformats="HWC"``); the BGR overlay of
parse_images.py is ``utils.pictures.overlay``.
"""

from __future__ import annotations

import io
import os

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from utils.files import write_bytes_atomic
from utils.labels import LabelSet
from utils.transforms import MEAN, STD


def denormalize_image(tensor: torch.Tensor) -> np.ndarray:
    """Inverse of :func:`normalize_image` for pictures: 3 x H x W float -> H x W x 3 uint8 BGR."""
    mean = torch.tensor(MEAN, dtype=torch.float32, device=tensor.device).view(3, 1, 1)
    std = torch.tensor(STD, dtype=torch.float32, device=tensor.device).view(3, 1, 1)
    image = (tensor.detach().float() * std + mean).mul_(255.0).round_().clamp_(0, 255)
    return image.to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def _new_figure(width_in: float, height_in: float) -> Figure:
    fig = Figure(figsize=(width_in, height_in), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def confusion_matrix_figure(mat, names: list[str], *, title: str = "Confusion matrix") -> Figure:
    """Row-normalised confusion matrix (rows: ground truth, columns: prediction), in percent.

    Each row shows where the pixels of one true class went, so the diagonal is the per-class
    accuracy; a class without ground-truth pixels gets an empty (zero) row.
    """
    mat = np.asarray(mat, dtype=np.float64)
    n = mat.shape[0]
    if mat.shape != (n, n) or len(names) != n:
        raise ValueError(f"confusion matrix {mat.shape} does not match {len(names)} class names")
    rows = mat.sum(axis=1, keepdims=True)
    norm = 100.0 * mat / np.maximum(rows, 1.0)

    size = 1.2 + 0.75 * n
    fig = _new_figure(size + 1.2, size)
    ax = fig.add_subplot()
    im = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=100.0)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="% of the true class's pixels")
    ax.set_xticks(range(n), labels=names, rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(n), labels=names)
    ax.set_xlabel("prediction")
    ax.set_ylabel("ground truth")
    ax.set_title(title)
    if n <= 20:
        for i in range(n):
            for j in range(n):
                value = norm[i, j]
                ax.text(
                    j,
                    i,
                    f"{value:.1f}",
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if value > 50.0 else "black",
                )
    return fig


def iou_bar_figure(
    per_class_iou, label_set: LabelSet, *, mean_iou: float | None = None, title: str = "Per-class IoU"
) -> Figure:
    """Bar chart of per-class IoU (percent), each bar named and coloured as its class in ``label_set``,
    mean as a line."""
    values = [float(v) for v in per_class_iou]
    names = list(label_set.names)
    if len(values) != len(names):
        raise ValueError(f"{len(values)} IoU values for {len(names)} class names")
    if mean_iou is None:
        mean_iou = float(np.mean(values)) if values else 0.0
    fig = _new_figure(1.5 + 0.8 * len(values), 4.0)
    ax = fig.add_subplot()
    colors = label_set.colours().astype(np.float64) / 255.0
    bars = ax.bar(range(len(values)), values, color=colors, edgecolor="black", linewidth=0.6)
    ax.bar_label(bars, labels=[f"{v:.1f}" for v in values], fontsize=8, padding=2)
    ax.axhline(mean_iou, color="tab:red", linestyle="--", linewidth=1.0)
    ax.set_xticks(range(len(values)), labels=names, rotation=45, ha="right", rotation_mode="anchor")
    ax.set_ylim(0.0, 108.0)
    ax.set_ylabel("IoU (%)")
    ax.set_title(f"{title} (dashed: mean IU {mean_iou:.2f})")
    return fig


def save_figure(fig: Figure, path: str, *, dpi: int = 120) -> None:
    """Write a figure (PNG, or any format matplotlib knows from the extension) through a temporary
    file, creating folders; a failed write raises :class:`utils.files.WriteError`."""
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=dpi, format=os.path.splitext(path)[1][1:] or "png")
    write_bytes_atomic(buffer.getvalue(), path)


def image_to_rgb(image: torch.Tensor) -> np.ndarray:
    """A normalised ``3 x H x W`` BGR network input -> displayable ``H x W x 3`` RGB uint8.

    The loader normalises the BGR channels as they are (docs/reference.md section 3.5); undoing
    that and reversing the channels gives true colours (the authors logged the BGR tensor as RGB,
    so theirs look swapped).
    """
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"expected a 3 x H x W image, got shape {tuple(image.shape)}")
    return np.ascontiguousarray(denormalize_image(image)[:, :, ::-1])


def label_to_rgb(label: torch.Tensor | np.ndarray, label_set: LabelSet) -> np.ndarray:
    """``H x W`` ids, or ``C x H x W`` scores (argmax taken) -> ``H x W x 3`` RGB uint8 in the label set's
    colours (255, ignored, white)."""
    if isinstance(label, torch.Tensor):
        label = label.detach()
        if label.ndim == 3:
            label = label.argmax(0)
        label = label.cpu().numpy()
    label = np.asarray(label)
    if label.ndim == 3:
        label = label.argmax(0)
    if label.ndim != 2:
        raise ValueError(f"expected an H x W label map or C x H x W scores, got shape {label.shape}")
    return label_set.colorize(label.astype(np.uint8))


def make_grid(tiles: list[np.ndarray], ncol: int = 4, pad: int = 2, pad_value: int = 255) -> np.ndarray:
    """Tile equally sized ``H x W x 3`` uint8 images row by row, ``pad`` pixels apart."""
    if not tiles:
        raise ValueError("no images to put in a grid")
    h, w = tiles[0].shape[:2]
    if any(t.shape != tiles[0].shape for t in tiles):
        raise ValueError("all grid tiles must have the same shape")
    ncol = max(1, min(ncol, len(tiles)))
    nrow = -(-len(tiles) // ncol)
    grid = np.full((pad + nrow * (h + pad), pad + ncol * (w + pad), 3), pad_value, dtype=np.uint8)
    for k, tile in enumerate(tiles):
        r, c = divmod(k, ncol)
        y, x = pad + r * (h + pad), pad + c * (w + pad)
        grid[y : y + h, x : x + w] = tile
    return grid


def image_grid(images: torch.Tensor, ncol: int = 4, max_images: int = 8) -> np.ndarray:
    """A batch of normalised BGR inputs (``N x 3 x H x W``) -> one RGB uint8 grid for TensorBoard."""
    return make_grid([image_to_rgb(im) for im in images[:max_images]], ncol=ncol)


def label_grid(
    labels: torch.Tensor | np.ndarray, label_set: LabelSet, ncol: int = 4, max_images: int = 8
) -> np.ndarray:
    """A batch of label maps (``N x H x W`` ids, 255 white) or scores (``N x C x H x W``) -> RGB grid."""
    return make_grid([label_to_rgb(lab, label_set) for lab in labels[:max_images]], ncol=ncol)
