"""Prediction at test time: the one inference loop shared by evaluate.py, parse_images.py and train.py.

Pipeline for one image (SPEC sections 3 and 7): letterbox the whole image into the crop with the
loader's affine transform -> network -> final map (``outputs[-1]``) resized to the crop size
(bilinear, ``align_corners=True``) -> optional flip / multi-scale averaging of the softmax
probabilities -> argmax on the device -> uint8 map to the CPU -> inverse affine back to the
original image size (nearest, border 0).

Only uint8 label maps leave the device, and the CPU work after the network (warp back, ground
truth, confusion matrix, saving pictures) runs in one background thread, in order, while the
device computes the next batch.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from dataset.transforms import normalize_image
from utils.labels import IGNORE_LABEL, colorize, flip_permutation
from utils.metrics import ConfusionMatrix
from utils.transforms import box_to_center_scale, crop_to_image, get_affine_transform, warp_to_crop
from utils.visualize import overlay

AMP_MODES = ("off", "bf16", "fp16")
_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


# --------------------------------------------------------------------------------------------
# Prediction of one batch
# --------------------------------------------------------------------------------------------

def autocast(device_type: str, amp: str = "off") -> contextlib.AbstractContextManager:
    """``torch.autocast`` for ``amp`` in {"bf16", "fp16"} on ``device_type``; a no-op for "off"."""
    if amp not in AMP_MODES:
        raise ValueError(f"amp must be one of {', '.join(AMP_MODES)}, got {amp!r}")
    if amp == "off":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, dtype=_AMP_DTYPES[amp])


def final_map(outputs, num_classes: int) -> torch.Tensor:
    """The final prediction of DFPnet's output list (``outputs[-1]``; the authors nest it as ``[[...]]``)."""
    while isinstance(outputs, (list, tuple)):
        if not outputs:
            raise ValueError("the network returned an empty list of outputs")
        outputs = outputs[-1]
    if outputs.ndim != 4 or outputs.shape[1] != num_classes:
        raise ValueError(f"the network's final map has shape {tuple(outputs.shape)}, expected "
                         f"N x {num_classes} x H x W (is --num-classes right?)")
    return outputs


def _resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)


def _scaled_size(size: Sequence[int], scale: float) -> tuple[int, int]:
    return max(1, int(round(size[0] * scale))), max(1, int(round(size[1] * scale)))


def _check_scales(scales: Sequence[float]) -> tuple[float, ...]:
    scales = tuple(float(s) for s in scales)
    if not scales or any(not np.isfinite(s) or s <= 0 for s in scales):
        raise ValueError(f"scales must be a non-empty list of positive numbers, got {scales}")
    return scales


def predict_probs(model: nn.Module, images: torch.Tensor, *, flip: bool = False,
                  scales: Sequence[float] = (1.0,), amp: str = "off", num_classes: int = 8) -> torch.Tensor:
    """Softmax probabilities ``N x C x h x w`` at the crop size ``h x w`` of ``images``.

    Args:
        model: returns DFPnet's list of maps; the last one is the prediction.
        images: ``N x 3 x h x w`` normalised crops on the model's device.
        flip: also predict the mirrored images; their probabilities are flipped back along W, the
            left/right class channels swapped (``utils.labels.flip_permutation``), and averaged in.
        scales: run on the images resized by each factor (bilinear, ``align_corners=True``), resize
            each output back to ``h x w`` and average the probabilities.
        amp: "off", "bf16" or "fp16" (``torch.autocast`` on the images' device type).
        num_classes: channels expected in the final map.
    """
    if images.ndim != 4:
        raise ValueError(f"expected N x 3 x H x W images, got shape {tuple(images.shape)}")
    scales = _check_scales(scales)
    crop = tuple(images.shape[-2:])
    n = images.shape[0]
    perm = flip_permutation(num_classes)
    total = None
    with torch.no_grad():
        for scale in scales:
            x = images if scale == 1.0 else _resize(images, _scaled_size(crop, scale))
            if flip:  # one forward for both: BN runs on running statistics, so batching is free
                x = torch.cat([x, x.flip(-1)])
            with autocast(images.device.type, amp):
                outputs = model(x)
            probs = _resize(final_map(outputs, num_classes).float(), crop).softmax(dim=1)
            if flip:
                probs = 0.5 * (probs[:n] + probs[n:].flip(-1)[:, perm])
            total = probs if total is None else total + probs
    return total / len(scales)


def predict_labels(model: nn.Module, images: torch.Tensor, *, flip: bool = False,
                   scales: Sequence[float] = (1.0,), amp: str = "off", num_classes: int = 8) -> torch.Tensor:
    """``N x h x w`` uint8 class ids at the crop size, computed on the images' device.

    A single plain pass takes the argmax of the logits (softmax is monotonic, so the ids are the
    same, as in the authors' evaluation); flip or several scales average probabilities first.
    """
    if not flip and _check_scales(scales) == (1.0,):
        with torch.no_grad(), autocast(images.device.type, amp):
            outputs = model(images)
        logits = _resize(final_map(outputs, num_classes).float(), images.shape[-2:])
    else:
        logits = predict_probs(model, images, flip=flip, scales=scales, amp=amp, num_classes=num_classes)
    return logits.argmax(dim=1).to(torch.uint8)


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------

@dataclass
class InferenceStats:
    """What the loop measured: images predicted, wall time, and the part spent on the device path
    (copy in, network, argmax, uint8 copy out); the rest is loading and post-processing."""
    images: int = 0
    seconds: float = 0.0
    network_seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    @property
    def network_share(self) -> float:
        return self.network_seconds / self.seconds if self.seconds > 0 else 0.0


def _split_meta(meta: dict, n: int) -> list[dict]:
    """Undo the DataLoader's collation of ``meta``: one plain dict per image."""
    items: list[dict] = [{} for _ in range(n)]
    for key, value in meta.items():
        if isinstance(value, torch.Tensor):
            value = value.numpy()
        for i in range(n):
            items[i][key] = value[i]
    return items


def _is_main_process() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def run_inference(model: nn.Module, loader: Iterable, device: torch.device | str,
                  handle: Callable[[dict, np.ndarray | None], None], *, num_classes: int, amp: str = "off",
                  flip: bool = False, scales: Sequence[float] = (1.0,), truncate_centers: bool = False,
                  channels_last: bool = False, progress: bool = True, desc: str = "predicting",
                  stats: InferenceStats | None = None) -> InferenceStats:
    """Predict every batch of ``loader`` (yielding ``(images, meta)``) and hand each image's
    prediction, warped back to its original size, to ``handle(meta_item, label)``.

    ``meta_item`` is the image's meta dict (name, center, scale, height, width, ...). An item whose
    meta carries a non-empty ``"error"`` (an unreadable file) is handed over with ``label=None``.
    ``handle`` runs in one background thread, in loader order; its exceptions stop the loop and
    are raised here. The model is put in eval mode and given back in the mode it came in.
    """
    device = torch.device(device)
    stats = stats if stats is not None else InferenceStats()
    total = len(loader.sampler) if hasattr(loader, "sampler") and hasattr(loader.sampler, "__len__") else None
    bar = tqdm(total=total, desc=desc, unit="img", dynamic_ncols=True,
               disable=not (progress and _is_main_process()))

    def post(preds: np.ndarray, items: list[dict]) -> None:
        crop = preds.shape[-2:]
        for pred, item in zip(preds, items):
            if item.get("error"):
                handle(item, None)
                continue
            label = crop_to_image(pred, item["center"], item["scale"], int(item["width"]),
                                  int(item["height"]), crop, truncate_center=truncate_centers)
            handle(item, label)

    was_training = model.training
    model.eval()
    pending: collections.deque = collections.deque()
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dfpnet-post")
    start = time.perf_counter()
    try:
        with torch.inference_mode():
            for images, meta in loader:
                tick = time.perf_counter()
                images = images.to(device, non_blocking=True)
                if channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
                preds = predict_labels(model, images, flip=flip, scales=scales, amp=amp,
                                       num_classes=num_classes).cpu().numpy()
                stats.network_seconds += time.perf_counter() - tick
                pending.append(pool.submit(post, preds, _split_meta(meta, len(preds))))
                while len(pending) > 2:  # bounded: post-processing may lag by at most two batches
                    pending.popleft().result()
                stats.images += len(preds)
                bar.update(len(preds))
        while pending:
            pending.popleft().result()
    finally:
        # On an error, work still queued is dropped rather than run (it could only fail again).
        pool.shutdown(wait=True, cancel_futures=True)
        stats.seconds += time.perf_counter() - start
        model.train(was_training)
        bar.close()
    return stats


def evaluate_model(model: nn.Module, dataset, loader: Iterable, device: torch.device | str, *,
                   num_classes: int, amp: str = "off", flip: bool = False, scales: Sequence[float] = (1.0,),
                   truncate_centers: bool = False, progress: bool = True,
                   on_prediction: Callable[[str, np.ndarray, int], None] | None = None,
                   channels_last: bool = False, stats: InferenceStats | None = None) -> ConfusionMatrix:
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
    matrix = ConfusionMatrix(num_classes, ignore_label=getattr(dataset, "ignore_label", IGNORE_LABEL))
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
            raise ValueError(f"{dataset.label_path(index)}: ground truth is {gt.shape[1]}x{gt.shape[0]} "
                             f"(WxH) but its image is {label.shape[1]}x{label.shape[0]}")
        try:
            matrix.update(gt, label)
        except ValueError as exc:
            raise ValueError(f"{dataset.label_path(index)}: {exc}") from None
        if on_prediction is not None:
            on_prediction(name, label, index)

    run_inference(model, loader, device, score, num_classes=num_classes, amp=amp, flip=flip, scales=scales,
                  truncate_centers=truncate_centers, channels_last=channels_last, progress=progress,
                  desc="evaluating", stats=stats)
    matrix.reduce_from_all_processes()
    return matrix


def make_eval_loader(dataset: Dataset, *, batch_size: int = 1, workers: int = 2,
                     pin_memory: bool = False) -> DataLoader:
    """A loader over this process's shard of ``dataset``: every ``world_size``-th image from its rank.

    Unlike ``DistributedSampler`` it never pads the shards with repeated images, so the reduced
    confusion matrix counts every image exactly once.
    """
    indices = list(range(len(dataset)))
    if dist.is_available() and dist.is_initialized():
        indices = indices[dist.get_rank()::dist.get_world_size()]
    return DataLoader(dataset, batch_size=batch_size, sampler=indices, num_workers=workers,
                      pin_memory=pin_memory, drop_last=False)


# --------------------------------------------------------------------------------------------
# Images without ground truth (parse_images.py)
# --------------------------------------------------------------------------------------------

def letterbox(image_bgr: np.ndarray, crop_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The val loader's geometry: the whole image fitted into the crop, aspect kept, border 0.

    Returns ``(crop_bgr_uint8, center, scale)``.
    """
    height, width = image_bgr.shape[:2]
    center, scale = box_to_center_scale(width, height, crop_size[1] / crop_size[0])
    matrix = get_affine_transform(center, scale, 0.0, crop_size)
    return warp_to_crop(image_bgr, matrix, crop_size, nearest=False, border_value=0), center, scale


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".dib", ".webp", ".tif", ".tiff", ".jp2",
                    ".pbm", ".pgm", ".ppm", ".pnm", ".pxm", ".sr", ".ras", ".exr", ".hdr", ".pic",
                    ".avif", ".gif")


def list_images(inputs: Sequence[str]) -> list[str]:
    """Files named on the command line as they are, plus the image files inside named folders (sorted)."""
    paths: list[str] = []
    for item in inputs:
        if os.path.isdir(item):
            paths += sorted(os.path.join(item, f) for f in os.listdir(item)
                            if f.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(item, f)))
        else:
            paths.append(item)
    return paths


class ImageFiles(Dataset):
    """Arbitrary image files as ``(image, meta)`` samples, prepared exactly like a val split.

    meta holds name (the output stem, made unique), path, center, scale, height, width and error
    (empty, or one line saying why the file could not be read; its image is then all zeros).
    """

    def __init__(self, paths: Sequence[str], crop_size: tuple[int, int]) -> None:
        self.paths = list(paths)
        self.crop_size = (int(crop_size[0]), int(crop_size[1]))
        self.names: list[str] = []
        used: dict[str, int] = {}
        for path in self.paths:  # two "img.png" from different folders must not overwrite each other
            stem = os.path.splitext(os.path.basename(path))[0] or "image"
            used[stem] = used.get(stem, 0) + 1
            self.names.append(stem if used[stem] == 1 else f"{stem}_{used[stem]}")

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        path = self.paths[index]
        error = ""
        image = None
        if not os.path.isfile(path):
            error = "no such file"
        else:
            image = cv2.imread(path, cv2.IMREAD_COLOR)
            if image is None:
                error = "OpenCV cannot read it as an image (unreadable, truncated or an unknown format)"
        if image is None:
            image = np.zeros((1, 1, 3), dtype=np.uint8)
        crop, center, scale = letterbox(image, self.crop_size)
        meta = {"name": self.names[index], "path": path, "center": center, "scale": scale,
                "height": image.shape[0], "width": image.shape[1], "error": error}
        return normalize_image(crop), meta


def save_prediction(out_dir: str, stem: str, label: np.ndarray, image_bgr: np.ndarray | None = None, *,
                    alpha: float = 0.5) -> list[str]:
    """Write ``<stem>_label.png`` (class ids), ``<stem>_color.png`` (palette) and, given the image,
    ``<stem>_overlay.jpg``; returns the paths. Raises ``OSError`` naming a file that cannot be written."""
    base = os.path.join(out_dir, stem)
    os.makedirs(os.path.dirname(base) or ".", exist_ok=True)
    pictures = [(base + "_label.png", label), (base + "_color.png", colorize(label)[:, :, ::-1])]
    if image_bgr is not None:
        pictures.append((base + "_overlay.jpg", overlay(image_bgr, label, alpha)))
    for path, picture in pictures:
        if not cv2.imwrite(path, np.ascontiguousarray(picture)):
            raise OSError(f"{path}: could not write the picture")
    return [path for path, _ in pictures]


# --------------------------------------------------------------------------------------------
# Command line pieces shared by evaluate.py and parse_images.py
# --------------------------------------------------------------------------------------------

def parse_size(text: str) -> tuple[int, int]:
    """``"H,W"`` -> ``(H, W)``, both positive integers (argparse type)."""
    parts = [p.strip() for p in str(text).split(",")]
    try:
        size = tuple(int(p) for p in parts)
    except ValueError:
        size = ()
    if len(size) != 2 or min(size) < 1:
        raise argparse.ArgumentTypeError(f"expected H,W (two positive integers), got {text!r}")
    return size  # type: ignore[return-value]


def parse_scales(text: str) -> tuple[float, ...]:
    """``"0.75,1.0,1.25"`` -> a tuple of positive finite floats, at least one (argparse type)."""
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    try:
        scales = tuple(float(p) for p in parts)
    except ValueError:
        scales = ()
    if not scales or any(not np.isfinite(s) or s <= 0 for s in scales):
        raise argparse.ArgumentTypeError(f"expected positive numbers separated by commas, got {text!r}")
    return scales


def _number(text: str, cast: Callable[[str], float], minimum: float, strict: bool, expected: str):
    """argparse type: ``text`` as ``cast`` (int or float), finite and > (strict) or >= ``minimum``."""
    try:
        value = cast(text)
    except ValueError:
        value = None
    ok = value is not None and math.isfinite(value) and (value > minimum if strict else value >= minimum)
    if not ok:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    return _number(text, int, 0, True, "a positive integer")


def non_negative_int(text: str) -> int:
    return _number(text, int, 0, False, "an integer >= 0")


def positive_float(text: str) -> float:
    return _number(text, float, 0.0, True, "a positive number")


def non_negative_float(text: str) -> float:
    return _number(text, float, 0.0, False, "a number >= 0")


def add_inference_arguments(parser: argparse.ArgumentParser) -> None:
    """The prediction flags evaluate.py and parse_images.py share."""
    parser.add_argument("--input-size", type=parse_size, default=(384, 384), metavar="H,W",
                        help="crop the network sees, height,width (authors' run: 384,384)")
    parser.add_argument("--num-classes", type=positive_int, default=8,
                        help="number of classes the checkpoint predicts (8 for the Dog dataset)")
    parser.add_argument("--batch-size", type=positive_int, default=1, help="images per forward pass")
    parser.add_argument("--workers", type=non_negative_int, default=2,
                        help="DataLoader worker processes reading and warping images")
    parser.add_argument("--device", default="auto",
                        help="auto (CUDA when available, else CPU), cpu, cuda, cuda:1, ...")
    parser.add_argument("--amp", choices=AMP_MODES, default=None,
                        help="autocast precision for the network: off (float32), bf16 or fp16; default bf16 "
                             "where the device runs it natively, else off (bf16 moves mean IU by under "
                             "0.1 point, see bench/RESULTS.md; --amp off reproduces float32 exactly)")
    parser.add_argument("--flip", action="store_true",
                        help="flip testing: average with the mirrored image's prediction "
                             "(left/right classes swapped)")
    parser.add_argument("--scales", type=parse_scales, default=(1.0,), metavar="S1,S2,...",
                        help="multi-scale testing: average predictions at these input scales, "
                             "e.g. 0.75,1.0,1.25")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                        help="run the network in channels-last memory format (faster on recent GPUs "
                             "and CPUs; same numbers)")


def default_amp(device: torch.device) -> str:
    """bf16 where it is native: GPUs with bf16 and CPUs with AVX512-BF16/AMX; float32 elsewhere."""
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "off"
    try:  # oneDNN's own test for native bf16 (AVX512-BF16, AMX); a private op, hence the guard
        native = torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        native = False
    return "bf16" if native else "off"


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA if available, else CPU; anything else is checked so a typo fails clearly."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ValueError(f"--device {name!r} is not a device (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name}: CUDA is not available in this PyTorch/on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) visible")
    return device


def load_model(restore_from: str, num_classes: int, device: torch.device, *,
               channels_last: bool = False) -> nn.Module:
    """DFPNet with the weights of any checkpoint format we know, on ``device``, in eval mode.

    Raises ``utils.checkpoint.CheckpointError`` (one line naming the file and the keys) on a bad file.
    """
    from networks.dfpnet import DFPNet  # imported here: the loop above runs with any model
    from utils.checkpoint import load_model_weights

    model = DFPNet(num_classes=num_classes)
    load_model_weights(model, restore_from)
    model.to(device).eval()
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return model
