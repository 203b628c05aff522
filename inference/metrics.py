"""The one source of every segmentation metric: a confusion matrix that training and evaluation share.

The numbers follow the authors' evaluation (docs/reference.md section 7): pixels whose ground truth is the
ignore label are not counted; pixel accuracy = sum(tp) / N; mean accuracy = mean over classes of
tp / max(1, gt count); IoU_c = tp / max(1, gt + pred - tp); mean IU over ALL classes, background
included, so a class absent from both ground truth and prediction counts as 0 (the authors' way);
all in percent.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist

from utils.labels import IGNORE_LABEL


def _names(class_names: list[str] | None, n: int) -> list[str]:
    """The given names (one per class), or ``class_<i>`` without a label set."""
    names = list(class_names) if class_names is not None else [f"class_{i}" for i in range(n)]
    if len(names) != n:
        raise ValueError(f"{len(names)} class names for {n} classes")
    return names


def _to_numpy(array) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        return array.detach().cpu().numpy()
    return np.asarray(array)


class ConfusionMatrix:
    """Accumulates ``mat[gt, pred]`` pixel counts over images; reducible across processes.

    Args:
        num_classes: number of classes; ids must lie in ``[0, num_classes)``.
        ignore_label: ground-truth id that is not scored (255 in this project).
    """

    def __init__(self, num_classes: int, ignore_label: int = IGNORE_LABEL) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be at least 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_label = int(ignore_label)
        self.mat = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

    def update(self, gt, pred) -> None:
        """Add one label map (or a batch of them) to the matrix.

        ``gt`` and ``pred`` are integer numpy arrays or tensors of the same shape. Pixels whose
        ground truth is ``ignore_label`` are skipped; any other id outside the class range is an
        error, because silently dropping it would inflate every score.
        """
        gt, pred = _to_numpy(gt), _to_numpy(pred)
        if gt.shape != pred.shape:
            raise ValueError(f"ground truth {gt.shape} and prediction {pred.shape} differ in shape")
        n = self.num_classes
        keep = gt != self.ignore_label
        g = gt[keep].astype(np.int64, copy=False)
        p = pred[keep].astype(np.int64, copy=False)
        if g.size == 0:
            return
        if g.min() < 0 or g.max() >= n:
            bad = sorted(set(np.unique(g[(g < 0) | (g >= n)]).tolist()))
            raise ValueError(
                f"ground truth holds ids {bad} outside 0..{n - 1} "
                f"(and not the ignore label {self.ignore_label})"
            )
        if p.min() < 0 or p.max() >= n:
            bad = sorted(set(np.unique(p[(p < 0) | (p >= n)]).tolist()))
            raise ValueError(f"prediction holds ids {bad} outside 0..{n - 1}")
        self.mat += np.bincount(n * g + p, minlength=n * n).reshape(n, n)

    def reduce_from_all_processes(self) -> None:
        """Sum the matrices of all processes (no-op unless torch.distributed is initialised)."""
        if not (dist.is_available() and dist.is_initialized()):
            return
        # NCCL reduces only CUDA tensors; gloo and others take CPU tensors.
        device = (
            torch.device("cuda", torch.cuda.current_device())
            if dist.get_backend() == "nccl"
            else torch.device("cpu")
        )
        total = torch.from_numpy(self.mat).to(device)
        dist.barrier()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        self.mat = total.cpu().numpy().astype(np.int64)

    def compute(self) -> dict:
        """The summary numbers, in percent: pixel_accuracy, mean_accuracy, mean_iou, per_class_iou."""
        mat = self.mat.astype(np.float64)
        tp = np.diag(mat)
        gt_count = mat.sum(axis=1)
        pred_count = mat.sum(axis=0)
        total = mat.sum()
        class_accuracy = tp / np.maximum(1.0, gt_count)
        iou = tp / np.maximum(1.0, gt_count + pred_count - tp)
        return {
            "pixel_accuracy": float(100.0 * tp.sum() / max(1.0, total)),
            "mean_accuracy": float(100.0 * class_accuracy.mean()),
            "mean_iou": float(100.0 * iou.mean()),
            "per_class_iou": [float(100.0 * v) for v in iou],
        }

    def to_dict(self, class_names: list[str] | None = None) -> dict:
        """JSON-ready metrics: the summary numbers, per-class IoU keyed by name, the raw matrix."""
        names = _names(class_names, self.num_classes)
        stats = self.compute()
        return {
            "mean_iou": stats["mean_iou"],
            "pixel_accuracy": stats["pixel_accuracy"],
            "mean_accuracy": stats["mean_accuracy"],
            "per_class_iou": dict(zip(names, stats["per_class_iou"])),
            "confusion_matrix": self.mat.tolist(),
        }

    def table(self, class_names: list[str] | None = None) -> str:
        """The authors' evaluation table: IoU per class, then the three summary numbers."""
        names = _names(class_names, self.num_classes)
        stats = self.compute()
        width = max(14, *(len(n) for n in names))
        lines = [f"{'class':<{width}}  {'IoU (%)':>8}"]
        lines += [f"{name:<{width}}  {iou:8.2f}" for name, iou in zip(names, stats["per_class_iou"])]
        lines.append("-" * (width + 10))
        lines.append(f"{'Pixel accuracy':<{width}}  {stats['pixel_accuracy']:8.2f}")
        lines.append(f"{'Mean accuracy':<{width}}  {stats['mean_accuracy']:8.2f}")
        lines.append(f"{'Mean IU':<{width}}  {stats['mean_iou']:8.2f}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()
