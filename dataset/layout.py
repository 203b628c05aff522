"""Where a split's files are (docs/reference.md section 2): the one source of the paths and extensions.

    <root>/<split>_id.txt                  one image id per line
    <root>/<split>_images/<id>.jpg         the picture
    <root>/<split>_segmentations/<id>.png  single-channel label ids

Torch-free, so the checker and the synthetic generator start fast.
"""

from __future__ import annotations

import os
from typing import NamedTuple

IMAGE_EXT = ".jpg"
LABEL_EXT = ".png"


class SplitPaths(NamedTuple):
    id_list: str
    image_dir: str
    label_dir: str

    def image(self, name: str) -> str:
        return os.path.join(self.image_dir, name + IMAGE_EXT)

    def label(self, name: str) -> str:
        return os.path.join(self.label_dir, name + LABEL_EXT)


def split_paths(root: str, split: str) -> SplitPaths:
    """The id list, image folder and label folder of ``split`` under ``root`` (nothing is checked)."""
    return SplitPaths(
        os.path.join(root, f"{split}_id.txt"),
        os.path.join(root, f"{split}_images"),
        os.path.join(root, f"{split}_segmentations"),
    )


def read_id_list(path: str) -> list[str]:
    """Ids of an ``<split>_id.txt``: one per line, surrounding blanks stripped, empty lines skipped."""
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]
