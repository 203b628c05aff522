"""Everything around the network at test time that needs no PyTorch: shared by the PyTorch loop
(``inference.predict``) and the onnxruntime one (``inference.onnx_infer``), so both see the same pixels.

- images in: ``list_images``, ``letterbox`` (the val loader's geometry) and ``ImageFiles``;
- the loop: ``run_loop`` hands batches to a ``predict`` function (numpy uint8 label maps out),
  warps each map back to its image's original size in one background thread, in order, while
  the next batch is predicted, and hands it to the caller;
- pictures out: ``save_prediction`` and ``save_legend`` (drawn by ``utils.pictures``).

Only numpy, OpenCV, tqdm and the project's torch-free modules are imported here.
"""

from __future__ import annotations

import collections
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import cv2
import numpy as np
from tqdm import tqdm

from utils.labels import LabelSet
from utils.pictures import legend_picture, overlay, write_image
from utils.transforms import (
    box_to_center_scale,
    crop_to_image,
    get_affine_transform,
    normalize_array,
    warp_to_crop,
)

# --------------------------------------------------------------------------------------------
# Images in
# --------------------------------------------------------------------------------------------

IMAGE_EXTENSIONS = (
    ".jpg",
    ".jpeg",
    ".jpe",
    ".png",
    ".bmp",
    ".dib",
    ".webp",
    ".tif",
    ".tiff",
    ".jp2",
    ".pbm",
    ".pgm",
    ".ppm",
    ".pnm",
    ".pxm",
    ".sr",
    ".ras",
    ".exr",
    ".hdr",
    ".pic",
    ".avif",
    ".gif",
)


def list_images(inputs: Sequence[str]) -> list[str]:
    """Files named on the command line as they are, plus the image files inside named folders (sorted)."""
    paths: list[str] = []
    for item in inputs:
        if os.path.isdir(item):
            paths += sorted(
                os.path.join(item, f)
                for f in os.listdir(item)
                if f.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(item, f))
            )
        else:
            paths.append(item)
    return paths


def letterbox(image_bgr: np.ndarray, crop_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The val loader's geometry: the whole image fitted into the crop, aspect kept, border 0.

    Returns ``(crop_bgr_uint8, center, scale)``.
    """
    height, width = image_bgr.shape[:2]
    center, scale = box_to_center_scale(width, height, crop_size[1] / crop_size[0])
    matrix = get_affine_transform(center, scale, 0.0, crop_size)
    return warp_to_crop(image_bgr, matrix, crop_size, nearest=False, border_value=0), center, scale


class ImageFiles:
    """Arbitrary image files as ``(image, meta)`` samples, prepared exactly like a val split.

    ``image`` is the normalised 3 x h x w float32 crop (numpy; PyTorch's DataLoader collates it
    into a tensor). meta holds name (the output stem, made unique), path, center, scale, height,
    width and error (empty, or one line saying why the file could not be read; its image is then
    all zeros).
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

    def __getitem__(self, index: int) -> tuple[np.ndarray, dict]:
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
        meta = {
            "name": self.names[index],
            "path": path,
            "center": center,
            "scale": scale,
            "height": image.shape[0],
            "width": image.shape[1],
            "error": error,
        }
        return normalize_array(crop), meta


def batches(samples: Sequence, batch_size: int) -> Iterator[tuple[np.ndarray, dict]]:
    """``(images, meta)`` batches of ``samples`` in order, collated like PyTorch's DataLoader does
    (images stacked, meta as a dict of per-image lists), without PyTorch."""
    for start in range(0, len(samples), batch_size):
        items = [samples[i] for i in range(start, min(start + batch_size, len(samples)))]
        meta = {key: [m[key] for _, m in items] for key in items[0][1]}
        yield np.stack([image for image, _ in items]), meta


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
    """Undo the collation of ``meta``: one plain dict per image (tensors become numpy arrays)."""
    items: list[dict] = [{} for _ in range(n)]
    for key, value in meta.items():
        if hasattr(value, "numpy"):  # a torch.Tensor from the DataLoader
            value = value.numpy()
        for i in range(n):
            items[i][key] = value[i]
    return items


def run_loop(
    loader: Iterable,
    predict: Callable[[object], np.ndarray],
    handle: Callable[[dict, np.ndarray | None], None],
    *,
    total: int | None = None,
    truncate_centers: bool = False,
    progress: bool = True,
    desc: str = "predicting",
    stats: InferenceStats | None = None,
) -> InferenceStats:
    """``predict`` every ``(images, meta)`` batch of ``loader`` (N x h x w uint8 label maps at the crop
    size) and hand each image's map, warped back to its original size, to ``handle(meta_item, label)``.

    An item whose meta carries a non-empty ``"error"`` (an unreadable file) is handed over with
    ``label=None``. ``handle`` runs in one background thread, in loader order; its exceptions stop
    the loop and are raised here.
    """
    stats = stats if stats is not None else InferenceStats()
    bar = tqdm(total=total, desc=desc, unit="img", dynamic_ncols=True, disable=not progress)

    def post(preds: np.ndarray, items: list[dict]) -> None:
        crop = preds.shape[-2:]
        for pred, item in zip(preds, items):
            if item.get("error"):
                handle(item, None)
                continue
            label = crop_to_image(
                pred,
                item["center"],
                item["scale"],
                int(item["width"]),
                int(item["height"]),
                crop,
                truncate_center=truncate_centers,
            )
            handle(item, label)

    pending: collections.deque = collections.deque()
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dfpnet-post")
    start = time.perf_counter()
    try:
        for images, meta in loader:
            tick = time.perf_counter()
            preds = predict(images)
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
        bar.close()
    return stats


def scaled_size(size: Sequence[int], scale: float) -> tuple[int, int]:
    """The crop size times ``scale``, rounded, at least 1 (multi-scale testing)."""
    return max(1, int(round(size[0] * scale))), max(1, int(round(size[1] * scale)))


def check_scales(scales: Sequence[float]) -> tuple[float, ...]:
    """The test-time scales as floats; ValueError unless they are positive and finite, at least one."""
    scales = tuple(float(s) for s in scales)
    if not scales or any(not math.isfinite(s) or s <= 0 for s in scales):
        raise ValueError(f"scales must be a non-empty list of positive numbers, got {scales}")
    return scales


# --------------------------------------------------------------------------------------------
# Pictures out
# --------------------------------------------------------------------------------------------


def save_prediction(
    out_dir: str,
    stem: str,
    label: np.ndarray,
    image_bgr: np.ndarray | None = None,
    *,
    label_set: LabelSet,
    alpha: float = 0.5,
) -> list[str]:
    """Write ``<stem>_label.png`` (class ids), ``<stem>_color.png`` (the label set's colours) and, given
    the image, ``<stem>_overlay.jpg``; returns the paths. Raises ``OSError`` naming a file that cannot
    be written."""
    base = os.path.join(out_dir, stem)
    os.makedirs(os.path.dirname(base) or ".", exist_ok=True)
    pictures = [(base + "_label.png", label), (base + "_color.png", label_set.colorize(label)[:, :, ::-1])]
    if image_bgr is not None:
        pictures.append((base + "_overlay.jpg", overlay(image_bgr, label, label_set, alpha)))
    for path, picture in pictures:
        write_image(path, picture)
    return [path for path, _ in pictures]


LEGEND_FILE = "legend.png"


def save_legend(out_dir: str, label_set: LabelSet) -> str:
    """Write ``<out_dir>/legend.png`` (:func:`legend_picture`); returns its path."""
    path = os.path.join(out_dir, LEGEND_FILE)
    write_image(path, legend_picture(label_set))
    return path
