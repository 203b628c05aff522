"""Evaluation during training and what a run shows in TensorBoard: the authors' scalars (one curve per
class by name), a confusion matrix and per-class IoU figures, one prediction next to its ground
truth, and the training image grids."""

from __future__ import annotations

import sys

import torch

from inference.predict import evaluate_model
from inference.visualize import confusion_matrix_figure, image_grid, iou_bar_figure, label_grid, label_to_rgb
from training.config import TrainConfig
from training.step import StepInfo
from utils.labels import LabelSet

# Evaluation splits and their TensorBoard tags (the authors': mIoUval, mIoUtest).
SCALAR_TAGS = {"val": "mIoUval", "trainTest": "mIoUtest"}


def log_training_images(writer, info: StepInfo, n: int, label_set: LabelSet) -> None:
    """Input (true colours), label and prediction grids of the step's first ``n`` images."""
    writer.add_image(
        "Images",
        image_grid(info.images.detach().float().cpu(), max_images=n),
        info.iteration,
        dataformats="HWC",
    )
    writer.add_image(
        "Labels", label_grid(info.labels.cpu(), label_set, max_images=n), info.iteration, dataformats="HWC"
    )
    predictions = info.outputs[-1][:n].detach().float().cpu()
    writer.add_image(
        "Preds", label_grid(predictions, label_set, max_images=n), info.iteration, dataformats="HWC"
    )


def evaluate(
    model: torch.nn.Module, splits: dict, cfg: TrainConfig, writer, epoch: int, label_set: LabelSet
) -> dict[str, dict]:
    """Evaluate each split with ``inference.predict.evaluate_model`` (evaluate.py's loop and metrics);
    log the scalars, figures and one example per split to ``writer`` (None on ranks other than 0)."""
    results = {}
    for split, (dataset, loader) in splits.items():
        example = {}

        def keep_first(name: str, label, index: int) -> None:
            if not example:
                example.update(label=label, index=index)

        matrix = evaluate_model(
            model,
            dataset,
            loader,
            cfg.device,
            label_set=label_set,
            amp=cfg.amp,
            channels_last=cfg.channels_last,
            progress=sys.stderr.isatty(),
            on_prediction=keep_first if writer is not None else None,
        )
        results[split] = matrix.compute()
        if writer is not None:
            _log_split(writer, split, matrix, results[split], dataset, example, label_set, epoch + 1)
    return results


def _log_split(
    writer, split: str, matrix, stats: dict, dataset, example: dict, label_set: LabelSet, step: int
) -> None:
    names = label_set.names
    scalars = dict(zip(names, stats["per_class_iou"]))
    scalars.update(
        {
            "Pixel accuracy": stats["pixel_accuracy"],
            "Mean accuracy": stats["mean_accuracy"],
            "Mean IU": stats["mean_iou"],
        }
    )
    writer.add_scalars(SCALAR_TAGS.get(split, f"mIoU{split}"), scalars, step)
    writer.add_figure(
        f"{split}/confusion_matrix", confusion_matrix_figure(matrix.mat, names), step, close=False
    )
    writer.add_figure(
        f"{split}/per_class_iou",
        iou_bar_figure(stats["per_class_iou"], label_set, mean_iou=stats["mean_iou"]),
        step,
        close=False,
    )
    if example:
        index = example["index"]
        pictures = {
            "image": dataset.read_image(index)[:, :, ::-1].copy(),  # BGR -> RGB
            "prediction": label_to_rgb(example["label"], label_set),
            "ground_truth": label_to_rgb(dataset.read_label(index), label_set),
        }
        for name, picture in pictures.items():
            writer.add_image(f"{split}/{name}", picture, step, dataformats="HWC")
