"""Predictions written as annotation files that the tools import, for a person to correct:
``parse_images.py --annotations coco,labelme,cvat-mask,labelstudio``.

Into the output folder: ``coco.json`` (one compressed-RLE annotation per class and picture),
``labelme/<name>.json`` (polygons traced from the label map, ``imagePath`` pointing at the
picture), ``cvat-mask/`` and ``cvat-mask.zip`` (CVAT's "Segmentation mask 1.1": colour masks and
``labelmap.txt``), ``labelstudio.json`` (tasks with brush predictions); beside them ``labels.json``
(the model's label set, which ``dataset.convert`` picks up when converting them back). Pixels
labelled 255 (``--min-confidence``) are in no annotation (background in CVAT's masks, which cannot
say "unlabelled"). No torch: the deployment bundle writes them too.
"""

from __future__ import annotations

import os
import shutil

import numpy as np

from dataset.formats import coco, labelme, labelstudio, masks
from utils.files import atomic_file, write_json_atomic
from utils.labels import LABELS_FILE, LabelSet

FORMATS = ("coco", "labelme", "cvat-mask", "labelstudio")
DEFAULT_TOLERANCE = 0.5  # pixels; labelme polygons: per-class IoU >= 0.99 on the synthetic set


def parse_formats(text: str) -> tuple[str, ...]:
    """``"coco,labelme"`` -> the formats, each one of FORMATS (ValueError naming the unknown one)."""
    chosen = tuple(dict.fromkeys(p.strip() for p in text.split(",") if p.strip()))
    unknown = [f for f in chosen if f not in FORMATS]
    if not chosen or unknown:
        raise ValueError(f"expected one or more of {', '.join(FORMATS)} separated by commas, got {text!r}")
    return chosen


class AnnotationWriter:
    """Takes each picture's label map (:meth:`add`) and writes the files of ``formats`` under ``out_dir``;
    :meth:`close` writes what holds every picture. OSError names the file that could not be written."""

    def __init__(
        self,
        out_dir: str,
        formats: tuple[str, ...],
        label_set: LabelSet,
        *,
        tolerance: float = DEFAULT_TOLERANCE,
        image_url: str = "",
    ) -> None:
        self.out_dir, self.formats, self.label_set = out_dir, formats, label_set
        self.tolerance, self.image_url = tolerance, image_url
        self.coco = coco.Writer(label_set)
        self.tasks: list[dict] = []
        self.cvat_names: list[str] = []
        if "labelme" in formats:
            os.makedirs(os.path.join(out_dir, "labelme"), exist_ok=True)
        if "cvat-mask" in formats:
            os.makedirs(os.path.join(out_dir, "cvat-mask", masks.MASK_FOLDER), exist_ok=True)

    def add(self, image_path: str, name: str, label: np.ndarray) -> None:
        label = np.asarray(label, dtype=np.uint8)
        file_name = os.path.basename(image_path)
        if "coco" in self.formats:
            self.coco.add(file_name, label)
        if "labelme" in self.formats:
            path = os.path.join(self.out_dir, "labelme", name + ".json")
            write_json_atomic(labelme.document(label, image_path, path, self.label_set, self.tolerance), path)
        if "cvat-mask" in self.formats:
            masks.write_mask(
                os.path.join(self.out_dir, "cvat-mask", masks.MASK_FOLDER, name + ".png"),
                label,
                self.label_set,
            )
            self.cvat_names.append(name)
        if "labelstudio" in self.formats:
            url = self.image_url + file_name if self.image_url else image_path
            self.tasks.append(labelstudio.task(url, label, self.label_set))

    def close(self) -> list[str]:
        """Write the files that hold every picture; returns what was written, for the summary line."""
        written = []
        write_json_atomic(self.label_set.to_dict(), os.path.join(self.out_dir, LABELS_FILE))
        if "coco" in self.formats:
            write_json_atomic(self.coco.document(), os.path.join(self.out_dir, "coco.json"))
            written.append("coco.json")
        if "labelme" in self.formats:
            write_json_atomic(self.label_set.to_dict(), os.path.join(self.out_dir, "labelme", LABELS_FILE))
            written.append("labelme/")
        if "cvat-mask" in self.formats:
            folder = os.path.join(self.out_dir, "cvat-mask")
            with (
                atomic_file(os.path.join(folder, masks.LABELMAP)) as tmp,
                open(tmp, "w", encoding="utf-8") as f,
            ):
                f.write(masks.labelmap_text(self.label_set))
            lists = os.path.join(folder, masks.LIST_FOLDER)
            os.makedirs(lists, exist_ok=True)
            with (
                atomic_file(os.path.join(lists, "default.txt")) as tmp,
                open(tmp, "w", encoding="utf-8") as f,
            ):
                f.write("".join(n + "\n" for n in self.cvat_names))
            with atomic_file(folder + ".zip") as tmp:
                try:
                    shutil.make_archive(tmp, "zip", folder)
                    os.replace(tmp + ".zip", tmp)
                finally:
                    if os.path.exists(tmp + ".zip"):  # a full disk stopped the archive
                        os.unlink(tmp + ".zip")
            written += ["cvat-mask/", "cvat-mask.zip"]
        if "labelstudio" in self.formats:
            write_json_atomic(self.tasks, os.path.join(self.out_dir, "labelstudio.json"))
            written.append("labelstudio.json")
        return written
