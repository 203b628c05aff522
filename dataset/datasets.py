"""The cartoon dog parsing dataset (docs/reference.md sections 2 and 3): one sample = one warped crop.

Layout of a split ``<split>`` under ``root``::

    <split>_id.txt                 one image id per line
    <split>_images/<id>.jpg        the picture (read as BGR, as the authors)
    <split>_segmentations/<id>.png single-channel label ids of the label set, 255 = ignore

Training splits (``train``, ``trainval``: names starting with "train" except ``trainTest``)
are augmented exactly as the authors' loader, drawing random numbers in the same order so a
seeded run reproduces their samples; every other split returns the un-augmented crop that
evaluation warps back with :func:`utils.transforms.crop_to_image`.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable

import cv2
import numpy as np
import torch.utils.data

from dataset.layout import LABEL_EXT, image_file, read_id_list, split_paths
from utils import recipe
from utils.labels import IGNORE_LABEL, LabelSet, resolve_label_set
from utils.transforms import (
    MEAN,
    STD,
    box_to_center_scale,
    get_affine_transform,
    normalize_array,
    warp_to_crop,
)

# The numbers and the arithmetic of the normalisation live in ``utils.transforms`` (no torch), so that
# the onnxruntime path normalises with the very same code; here they become tensors.


def normalize_image(image: np.ndarray) -> torch.Tensor:
    """H x W x 3 uint8 BGR array -> 3 x H x W float32 tensor, ``(x / 255 - MEAN) / STD`` per channel."""
    return torch.from_numpy(normalize_array(image))


class ToTensorNormalized:
    """The default sample transform of :class:`dataset.datasets.CartoonDataSet`.

    Called as ``transform(image, label=None, edge=None)`` and returns the triple
    ``(image, label, edge)``: the image normalised by :func:`normalize_image`, the label as an
    int64 tensor (what ``cross_entropy`` wants), the edge as uint8 (the authors' int64 took 8x the
    memory for a map no loss reads: docs/differences.md row 17); a ``None`` stays ``None``. A
    custom transform passed to the dataset must follow the same protocol.
    """

    def __call__(self, image: np.ndarray, label: np.ndarray | None = None, edge: np.ndarray | None = None):
        image_t = normalize_image(image)
        label_t = None if label is None else torch.from_numpy(np.ascontiguousarray(label, dtype=np.int64))
        edge_t = None if edge is None else torch.from_numpy(np.ascontiguousarray(edge, dtype=np.uint8))
        return image_t, label_t, edge_t

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mean={MEAN}, std={STD}, channels=BGR)"


def default_transform() -> ToTensorNormalized:
    """The transform every script uses: BGR uint8 -> normalised float tensor, labels -> int64."""
    return ToTensorNormalized()


def is_training_split(split: str) -> bool:
    """True for the augmented splits: ``train``, ``trainval``, ... but not the held-out ``trainTest``."""
    return split.startswith("train") and split.lower() != "traintest"


def label_edges(label: np.ndarray, ignore_label: int = IGNORE_LABEL) -> np.ndarray:
    """H x W uint8 0/1 map of label boundaries: pixels whose label differs from a 4-neighbour.

    A pair with an ``ignore_label`` pixel on either side is no boundary, so the crop's padding
    and unlabelled regions do not draw edges. (The authors' CE2P-style loader also widened the
    edges to 3 pixels; DFPnet's loss never reads them, so we keep the thin map.)
    """
    label = np.asarray(label)
    valid = label != ignore_label
    edge = np.zeros(label.shape, dtype=np.uint8)
    across = (label[:, 1:] != label[:, :-1]) & valid[:, 1:] & valid[:, :-1]
    edge[:, 1:] |= across
    edge[:, :-1] |= across
    down = (label[1:, :] != label[:-1, :]) & valid[1:, :] & valid[:-1, :]
    edge[1:, :] |= down
    edge[:-1, :] |= down
    return edge


class CartoonDataSet(torch.utils.data.Dataset):
    """One split of the Dog dataset, as the authors' loader reads it (docs/reference.md section 3).

    Args:
        root: the data directory holding ``<split>_id.txt``, ``<split>_images/`` and
            ``<split>_segmentations/``.
        dataset: the split name (``train``, ``val``, ``trainTest``, ``trainval``, ...).
        crop_size: ``(height, width)`` of the network input; the whole image is letterboxed
            into it.
        scale_factor: training scale jitter ``sf``: the scale is multiplied by
            ``clip(N(0, 1) * sf + 1, 1 - sf, 1 + sf)``.
        rotation_factor: training rotation ``rf`` in degrees: ``clip(N(0, 1) * rf, -2 rf, 2 rf)``,
            applied to 60 % of the samples.
        flip_prob: probability of a horizontal mirror (the label set's left/right pairs swapped).
        ignore_label: label of pixels outside the image after the warp (and of unlabelled pixels).
        transform: ``None`` returns numpy arrays (uint8 BGR image, int64 label, uint8 edge);
            :func:`default_transform` returns tensors. Any callable
            ``(image, label=None, edge=None) -> (image, label, edge)`` works.
        label_set: the classes (label ids beyond them are an error) and the left/right pairs a
            mirror swaps; default ``<root>/labels.json`` if there is one, else the Dog set.

    Items are ``(image, label, edge, meta)`` for training splits and ``(image, meta)`` for the
    others; ``meta`` holds ``name``, ``center``, ``scale`` (float32 ``[2]``, as used for the
    warp), ``height``, ``width`` (the original size), ``rotation`` (degrees) and ``flip``
    (mirrored or not), and batches with the default ``DataLoader`` collate.

    Random numbers are always drawn in the authors' order (scale: numpy; rotation gate:
    Python ``random``, then the angle: numpy, only inside the gate; flip: Python ``random``),
    whatever the factors: ``scale_factor=0``, ``rotation_factor=0`` or ``flip_prob=0`` switch
    an augmentation off without shifting the random streams of the other draws.
    """

    def __init__(
        self,
        root: str,
        dataset: str,
        crop_size: tuple[int, int] | int = recipe.INPUT_SIZE,
        scale_factor: float = recipe.SCALE_FACTOR,
        rotation_factor: float = recipe.ROTATION_FACTOR,
        flip_prob: float = recipe.FLIP_PROB,
        ignore_label: int = IGNORE_LABEL,
        transform: Callable | None = None,
        label_set: LabelSet | None = None,
    ) -> None:
        if isinstance(crop_size, int):
            crop_size = (crop_size, crop_size)
        self.root = str(root)
        self.dataset = dataset
        self.crop_size = (int(crop_size[0]), int(crop_size[1]))
        self.aspect_ratio = self.crop_size[1] / self.crop_size[0]
        self.scale_factor = float(scale_factor)
        self.rotation_factor = float(rotation_factor)
        self.flip_prob = float(flip_prob)
        self.ignore_label = int(ignore_label)
        self.transform = transform
        self.label_set = label_set or resolve_label_set(data_dir=self.root)
        self.num_classes = self.label_set.num_classes
        self.is_train = is_training_split(dataset)
        self._flip_lut = self.label_set.flip_lut()

        if not os.path.isdir(self.root):
            raise FileNotFoundError(f"data directory not found: {self.root}")
        list_path, self._image_dir, self._label_dir = split_paths(self.root, dataset)
        if not os.path.isfile(list_path):
            raise FileNotFoundError(
                f"id list of split '{dataset}' not found: {list_path} "
                f"(expected the layout of dataset/README.md)"
            )
        self.ids = read_id_list(list_path)
        if not self.ids:
            raise ValueError(f"id list {list_path} holds no ids")
        present = self._listing(self._image_dir)
        self._image_paths = [image_file(self._image_dir, i, present) for i in self.ids]
        self._check_files(self._image_paths, present)
        if self.is_train:
            # Evaluation splits may come without labels (read_label then names the file).
            self._check_files(
                [os.path.join(self._label_dir, i + LABEL_EXT) for i in self.ids],
                self._listing(self._label_dir),
            )

    def _listing(self, folder: str) -> set[str]:
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"folder of split '{self.dataset}' not found: {folder}")
        return set(os.listdir(folder))

    def _check_files(self, paths: list[str], present: set[str]) -> None:
        # Failing here, once, beats a worker crashing mid-epoch on the first missing file.
        missing = [p for p in paths if os.path.basename(p) not in present]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise FileNotFoundError(f"file listed in {self.dataset}_id.txt not found: {missing[0]}{more}")

    def __len__(self) -> int:
        return len(self.ids)

    def image_path(self, index: int) -> str:
        return self._image_paths[index]

    def label_path(self, index: int) -> str:
        return os.path.join(self._label_dir, self.ids[index] + LABEL_EXT)

    def read_image(self, index: int) -> np.ndarray:
        """The original H x W x 3 uint8 BGR image."""
        path = self.image_path(index)
        image = cv2.imread(path, cv2.IMREAD_COLOR)
        if image is None:
            raise _unreadable(path, "image")
        return image

    def read_label(self, index: int) -> np.ndarray:
        """The original H x W uint8 label map (what evaluation scores against)."""
        path = self.label_path(index)
        label = cv2.imread(path, cv2.IMREAD_GRAYSCALE)
        if label is None:
            raise _unreadable(path, "label")
        return label

    def _check_label(self, label: np.ndarray, image: np.ndarray, index: int) -> None:
        if label.shape != image.shape[:2]:
            raise ValueError(
                f"label {self.label_path(index)} is {label.shape[1]}x{label.shape[0]} but its "
                f"image is {image.shape[1]}x{image.shape[0]} (W x H)"
            )
        # max() is cheap; only a map that holds 255 or a bad id pays for the exact test.
        if label.max() >= self.num_classes:
            bad = np.unique(label[(label >= self.num_classes) & (label != self.ignore_label)])
            if bad.size:
                raise ValueError(
                    f"label {self.label_path(index)} holds ids {bad.tolist()} that the label "
                    f"set ({self.label_set.describe()}) does not have "
                    f"(0..{self.num_classes - 1}, and {self.ignore_label} ignored)"
                )

    def _draw_augmentation(self) -> tuple[float, float, bool]:
        """(scale multiplier, rotation in degrees, flip?) in the authors' draw order."""
        sf, rf = self.scale_factor, self.rotation_factor
        scale_mult = float(np.clip(np.random.randn() * sf + 1, 1 - sf, 1 + sf))
        # The gate is drawn first (Python RNG) and the angle only inside it (numpy RNG).
        rotation = 0.0
        if random.random() <= recipe.ROTATION_PROB:  # the authors rotate only 60 % of the samples
            rotation = float(np.clip(np.random.randn() * rf, -2 * rf, 2 * rf))
        # random.random() can return exactly 0.0, and 0.0 <= 0 would flip with flip_prob = 0.
        flip = random.random() <= self.flip_prob and self.flip_prob > 0
        return scale_mult, rotation, flip

    def __getitem__(self, index: int):
        image = self.read_image(index)
        height, width = image.shape[:2]
        center, scale = box_to_center_scale(width, height, self.aspect_ratio)
        rotation = 0.0
        label = None
        flip = False

        if self.is_train:
            label = self.read_label(index)
            self._check_label(label, image, index)
            scale_mult, rotation, flip = self._draw_augmentation()
            scale = (scale * scale_mult).astype(np.float32)
            if flip:
                image = cv2.flip(image, 1)
                # One table lookup mirrors the ids too: each left/right pair of the set trades places.
                label = self._flip_lut[label[:, ::-1]]
                center[0] = width - center[0] - 1

        matrix = get_affine_transform(center, scale, rotation, self.crop_size)
        crop = warp_to_crop(image, matrix, self.crop_size, nearest=False, border_value=0)
        meta = {
            "name": self.ids[index],
            "center": center.astype(np.float32),
            "scale": scale.astype(np.float32),
            "height": int(height),
            "width": int(width),
            "rotation": float(rotation),
            "flip": bool(flip),
        }
        if not self.is_train:
            if self.transform is not None:
                crop, _, _ = self.transform(crop)
            return crop, meta

        crop_label = warp_to_crop(label, matrix, self.crop_size, nearest=True, border_value=self.ignore_label)
        edge = label_edges(crop_label, self.ignore_label)
        crop_label = crop_label.astype(np.int64)
        if self.transform is not None:
            crop, crop_label, edge = self.transform(crop, crop_label, edge)
        return crop, crop_label, edge, meta

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(root={self.root!r}, dataset={self.dataset!r}, n={len(self)}, "
            f"crop_size={self.crop_size}, train={self.is_train})"
        )


def _unreadable(path: str, what: str) -> Exception:
    if not os.path.exists(path):
        return FileNotFoundError(f"{what} file not found: {path}")
    if os.path.getsize(path) == 0:
        return ValueError(f"{what} file is empty (0 bytes): {path}")
    return ValueError(f"cannot decode {what} file (corrupt or not an image): {path}")
