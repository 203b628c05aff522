"""Where a split's files are (docs/reference.md section 2): the one source of the paths and extensions.

    <root>/<split>_id.txt                  one image id per line
    <root>/<split>_images/<id>.jpg         the picture (or <id>.png: lossless pictures, kept so by
                                           dataset.convert; .jpg first when both exist)
    <root>/<split>_segmentations/<id>.png  single-channel label ids

Torch-free, so the checker and the synthetic generator start fast.
"""

from __future__ import annotations

import os
from typing import NamedTuple

IMAGE_EXT = ".jpg"  # the authors' pictures
IMAGE_EXTS = (IMAGE_EXT, ".png")  # looked for in this order
LABEL_EXT = ".png"


def image_file(image_dir: str, name: str, present: set[str] | frozenset[str] | None = None) -> str:
    """The picture of ``name``: ``<name>.jpg``, else ``<name>.png`` if that exists, else the ``.jpg`` path
    (for the message that it is missing). ``present``: the folder's file names, when already listed."""
    for ext in IMAGE_EXTS:
        file = name + ext
        if (file in present) if present is not None else os.path.isfile(os.path.join(image_dir, file)):
            return os.path.join(image_dir, file)
    return os.path.join(image_dir, name + IMAGE_EXT)


class SplitPaths(NamedTuple):
    id_list: str
    image_dir: str
    label_dir: str

    def image(self, name: str) -> str:
        return image_file(self.image_dir, name)

    def label(self, name: str) -> str:
        return os.path.join(self.label_dir, name + LABEL_EXT)


def split_paths(root: str, split: str) -> SplitPaths:
    """The id list, image folder and label folder of ``split`` under ``root`` (nothing is checked)."""
    return SplitPaths(
        os.path.join(root, f"{split}_id.txt"),
        os.path.join(root, f"{split}_images"),
        os.path.join(root, f"{split}_segmentations"),
    )


# What a data folder must hold, the one rule training and dataset.check share: the training split in
# full; the evaluation splits (val, trainTest) are read where their id list exists, and skipped, with
# a warning, where it does not (LIP has no trainTest).
TRAINING_SPLIT = "train"
EVALUATION_SPLITS = ("val", "trainTest")


def split_present(root: str, split: str) -> bool:
    """Whether ``split`` of ``root`` has its id list (an evaluation split without one is skipped)."""
    return os.path.isfile(split_paths(root, split).id_list)


def read_id_list(path: str) -> list[str]:
    """Ids of an ``<split>_id.txt``: one per line, surrounding blanks stripped, empty lines skipped."""
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]
