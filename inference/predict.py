"""Prediction at test time: the one inference loop shared by evaluate.py, parse_images.py and train.py.

Pipeline for one image (docs/reference.md sections 3 and 7): letterbox the whole image into the
crop with the loader's affine transform -> network -> final map (``outputs[-1]``) resized to the
crop size (bilinear, ``align_corners=True``) -> optional flip / multi-scale averaging of the
softmax probabilities -> argmax on the device -> uint8 map to the CPU -> inverse affine back to
the original image size (nearest, border 0).

Only uint8 label maps leave the device, and the CPU work after the network (warp back, ground
truth, confusion matrix, saving pictures) runs in one background thread, in order, while the
device computes the next batch (``inference.pipeline.run_loop``, shared with the onnxruntime path).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset

from inference.metrics import ConfusionMatrix
from inference.pipeline import InferenceStats, check_scales, run_loop, scaled_size
from networks.dfpnet import resize
from utils.device import autocast, is_main_process
from utils.labels import IGNORE_LABEL, LabelSet

if TYPE_CHECKING:
    from inference.onnx_infer import OnnxModel


# --------------------------------------------------------------------------------------------
# Prediction of one batch
# --------------------------------------------------------------------------------------------


def final_map(outputs, num_classes: int) -> torch.Tensor:
    """The final prediction of DFPnet's output list (``outputs[-1]``; the authors nest it as ``[[...]]``)."""
    while isinstance(outputs, (list, tuple)):
        if not outputs:
            raise ValueError("the network returned an empty list of outputs")
        outputs = outputs[-1]
    if outputs.ndim != 4 or outputs.shape[1] != num_classes:
        raise ValueError(
            f"the network's final map has shape {tuple(outputs.shape)}, expected "
            f"N x {num_classes} x H x W (the label set's classes)"
        )
    return outputs


def predict_probs(
    model: nn.Module,
    images: torch.Tensor,
    *,
    label_set: LabelSet,
    flip: bool = False,
    scales: Sequence[float] = (1.0,),
    amp: str = "off",
) -> torch.Tensor:
    """Softmax probabilities ``N x C x h x w`` at the crop size ``h x w`` of ``images``.

    Args:
        model: returns DFPnet's list of maps; the last one is the prediction.
        images: ``N x 3 x h x w`` normalised crops on the model's device.
        label_set: the classes of the final map's channels (their number is checked) and the
            left/right pairs a flip swaps.
        flip: also predict the mirrored images; their probabilities are flipped back along W, the
            left/right class channels swapped (``LabelSet.flip_permutation``), and averaged in.
        scales: run on the images resized by each factor (bilinear, ``align_corners=True``), resize
            each output back to ``h x w`` and average the probabilities.
        amp: "off", "bf16" or "fp16" (``torch.autocast`` on the images' device type).
    """
    if images.ndim != 4:
        raise ValueError(f"expected N x 3 x H x W images, got shape {tuple(images.shape)}")
    scales = check_scales(scales)
    crop = tuple(images.shape[-2:])
    n = images.shape[0]
    num_classes = label_set.num_classes
    perm = label_set.flip_permutation()
    total = None
    with torch.no_grad():
        for scale in scales:
            x = images if scale == 1.0 else resize(images, scaled_size(crop, scale))
            if flip:  # one forward for both: BN runs on running statistics, so batching is free
                x = torch.cat([x, x.flip(-1)])
            with autocast(images.device.type, amp):
                outputs = model(x)
            probs = resize(final_map(outputs, num_classes).float(), crop).softmax(dim=1)
            if flip:
                probs = 0.5 * (probs[:n] + probs[n:].flip(-1)[:, perm])
            total = probs if total is None else total + probs
    return total / len(scales)


def predict_labels(
    model: nn.Module,
    images: torch.Tensor,
    *,
    label_set: LabelSet,
    flip: bool = False,
    scales: Sequence[float] = (1.0,),
    amp: str = "off",
    min_confidence: float | None = None,
) -> torch.Tensor:
    """``N x h x w`` uint8 class ids at the crop size, computed on the images' device.

    A single plain pass takes the argmax of the logits (softmax is monotonic, so the ids are the
    same, as in the authors' evaluation); flip or several scales average probabilities first.
    ``min_confidence``: pixels whose winning probability is below it are 255 (unlabelled).
    """
    if min_confidence is None and not flip and check_scales(scales) == (1.0,):
        with torch.no_grad(), autocast(images.device.type, amp):
            outputs = model(images)
        logits = resize(final_map(outputs, label_set.num_classes).float(), images.shape[-2:])
        return logits.argmax(dim=1).to(torch.uint8)
    probs = predict_probs(model, images, label_set=label_set, flip=flip, scales=scales, amp=amp)
    confidence, labels = probs.max(dim=1)
    labels = labels.to(torch.uint8)
    if min_confidence is not None:
        labels[confidence < min_confidence] = IGNORE_LABEL
    return labels


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------


def run_inference(
    model: nn.Module | OnnxModel,
    loader: Iterable,
    device: torch.device | str | None,
    handle: Callable[[dict, np.ndarray | None], None],
    *,
    label_set: LabelSet,
    amp: str = "off",
    flip: bool = False,
    scales: Sequence[float] = (1.0,),
    truncate_centers: bool = False,
    channels_last: bool = False,
    progress: bool = True,
    desc: str = "predicting",
    stats: InferenceStats | None = None,
    min_confidence: float | None = None,
) -> InferenceStats:
    """Predict every batch of ``loader`` (yielding ``(images, meta)``) and hand each image's
    prediction, warped back to its original size, to ``handle(meta_item, label)``.

    ``meta_item`` is the image's meta dict (name, center, scale, height, width, ...). An item whose
    meta carries a non-empty ``"error"`` (an unreadable file) is handed over with ``label=None``.
    ``handle`` runs in one background thread, in loader order; its exceptions stop the loop and
    are raised here. A PyTorch model is put in eval mode and given back in the mode it came in;
    a ``inference.onnx_infer.OnnxModel`` runs on the CPU (``device``, ``amp`` and ``channels_last`` unused).
    ``label_set`` gives the classes to expect and the pairs a flip swaps; ``min_confidence`` leaves
    pixels whose winning probability is below it unlabelled (255).
    """
    total = len(loader.sampler) if hasattr(loader, "sampler") and hasattr(loader.sampler, "__len__") else None
    progress = progress and is_main_process()
    if not isinstance(model, nn.Module):

        def predict_onnx(images: torch.Tensor) -> np.ndarray:
            return model.predict_labels(
                images.numpy(), flip=flip, scales=scales, label_set=label_set, min_confidence=min_confidence
            )

        return run_loop(
            loader,
            predict_onnx,
            handle,
            total=total,
            truncate_centers=truncate_centers,
            progress=progress,
            desc=desc,
            stats=stats,
        )

    device = torch.device(device)

    def predict(images: torch.Tensor) -> np.ndarray:
        images = images.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return (
            predict_labels(
                model,
                images,
                label_set=label_set,
                flip=flip,
                scales=scales,
                amp=amp,
                min_confidence=min_confidence,
            )
            .cpu()
            .numpy()
        )

    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            return run_loop(
                loader,
                predict,
                handle,
                total=total,
                truncate_centers=truncate_centers,
                progress=progress,
                desc=desc,
                stats=stats,
            )
    finally:
        model.train(was_training)


def evaluate_model(
    model: nn.Module | OnnxModel,
    dataset,
    loader: Iterable,
    device: torch.device | str | None,
    *,
    label_set: LabelSet,
    amp: str = "off",
    flip: bool = False,
    scales: Sequence[float] = (1.0,),
    truncate_centers: bool = False,
    progress: bool = True,
    on_prediction: Callable[[str, np.ndarray, int], None] | None = None,
    channels_last: bool = False,
    stats: InferenceStats | None = None,
) -> ConfusionMatrix:
    """Evaluate ``model`` on a val-type split and return the confusion matrix (reduced over processes).

    ``loader`` yields ``(image, meta)`` batches of ``dataset`` in any order (shuffled, or one
    shard per process): each prediction finds its ground truth through ``meta["name"]``, read
    at the original size with ``dataset.read_label``. An image met twice on one process (a padded
    distributed sampler) is counted once. ``on_prediction(name, label, index)`` gets every
    prediction at the original size (to save pictures). ``stats`` is filled with timings if given.
    """
    ids = list(dataset.ids)
    index_of = {name: i for i, name in enumerate(ids)}
    if len(index_of) != len(ids):
        twice = sorted({name for name in ids if ids.count(name) > 1})
        raise ValueError(f"the split lists these ids more than once: {', '.join(twice[:5])}")
    ignore_label = getattr(dataset, "ignore_label", IGNORE_LABEL)
    matrix = ConfusionMatrix(label_set.num_classes, ignore_label=ignore_label)
    seen: set[int] = set()

    def score(item: dict, label: np.ndarray | None) -> None:
        name = str(item["name"])
        index = index_of.get(name)
        if index is None:
            raise ValueError(f"the loader gave an image named {name!r}, which is not in the split's ids")
        if label is None:
            raise ValueError(f"{dataset.image_path(index)}: {item['error']}")
        if index in seen:
            return
        seen.add(index)
        gt = dataset.read_label(index)
        if gt.shape != label.shape:
            raise ValueError(
                f"{dataset.label_path(index)}: ground truth is {gt.shape[1]}x{gt.shape[0]} "
                f"(WxH) but its image is {label.shape[1]}x{label.shape[0]}"
            )
        try:
            matrix.update(gt, label)
        except ValueError as exc:
            raise ValueError(f"{dataset.label_path(index)}: {exc}") from None
        if on_prediction is not None:
            on_prediction(name, label, index)

    run_inference(
        model,
        loader,
        device,
        score,
        label_set=label_set,
        amp=amp,
        flip=flip,
        scales=scales,
        truncate_centers=truncate_centers,
        channels_last=channels_last,
        progress=progress,
        desc="evaluating",
        stats=stats,
    )
    matrix.reduce_from_all_processes()
    return matrix


def make_eval_loader(
    dataset: Dataset, *, batch_size: int = 1, workers: int = 2, pin_memory: bool = False
) -> DataLoader:
    """A loader over this process's shard of ``dataset``: every ``world_size``-th image from its rank.

    Unlike ``DistributedSampler`` it never pads the shards with repeated images, so the reduced
    confusion matrix counts every image exactly once.
    """
    indices = list(range(len(dataset)))
    if dist.is_available() and dist.is_initialized():
        indices = indices[dist.get_rank() :: dist.get_world_size()]
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=indices,
        num_workers=workers,
        pin_memory=pin_memory,
        drop_last=False,
    )
