"""COCO: a JSON file with ``images``, ``annotations`` and ``categories`` (CVAT's "COCO 1.0" export,
and most tools'), one file per split or one for all.

Reading: categories in the order of their ids become ids 1, 2, ... after the background (a
category named ``background`` becomes id 0 instead); a segmentation is polygons (COCO coordinates:
pixel ``(i, j)`` covers ``[j, j+1) x [i, i+1)``) or RLE, compressed or not, whatever ``iscrowd``
says, and a crowd region is its category like any other. Where annotations overlap, the smaller
one is drawn over the larger one (a head over the body), equal areas in file order; pixels no
annotation covers are background, or 255 with ``--unlabelled ignore``. Writing: one compressed-RLE
annotation per class and picture (``iscrowd`` 0), every class of the label set a category.
"""

from __future__ import annotations

import os

import numpy as np

from dataset.formats import rle
from dataset.formats.common import Entry, PaintContext, PictureFinder, Source, fill_inside, load_json, stem
from dataset.formats.names import ConvertError, is_background
from utils.labels import IGNORE_LABEL, LabelSet

OFFSET = 0.5  # COCO coordinates: a pixel's centre is at +0.5
SPLIT_PREFIXES = ("instances_", "person_keypoints_", "panoptic_", "stuff_")


def looks_like(data: object) -> bool:
    return isinstance(data, dict) and all(
        isinstance(data.get(k), list) for k in ("images", "annotations", "categories")
    )


def split_of(path: str) -> str | None:
    """The split a COCO file's name gives (``instances_val.json`` -> val); None for ``default`` or none."""
    name = stem(path)
    for prefix in SPLIT_PREFIXES:
        if name.startswith(prefix):
            name = name[len(prefix) :]
            break
    else:
        return None
    return None if name in ("", "default") else name


def _segments(ann: dict, where: str, height: int, width: int) -> list:
    seg = ann.get("segmentation")
    if isinstance(seg, list):
        polygons = []
        for k, poly in enumerate(seg):
            if (
                not isinstance(poly, list)
                or len(poly) % 2
                or not all(isinstance(v, (int, float)) for v in poly)
            ):
                raise ConvertError(f"{where}: segmentation[{k}] must be a flat list [x1, y1, x2, y2, ...]")
            if len(poly) < 6:
                raise ConvertError(
                    f"{where}: segmentation[{k}] has {len(poly) // 2} point(s); a polygon needs 3"
                )
            polygons.append(np.asarray(poly, dtype=np.float64).reshape(-1, 2))
        return polygons
    if isinstance(seg, dict):
        size = seg.get("size")
        if size != [height, width]:
            raise ConvertError(
                f"{where}: the RLE's size {size} is not the image's [height, width] [{height}, {width}]"
            )
        return [seg]
    raise ConvertError(f"{where}: 'segmentation' must be a list of polygons or an RLE object")


def read_file(
    path: str, images: str | None, split: str | None
) -> tuple[list[Entry], dict[int, str], list[str]]:
    data = load_json(path)
    if not looks_like(data):
        raise ConvertError(f"{path}: not a COCO file (needs 'images', 'annotations' and 'categories' lists)")
    categories: dict[int, str] = {}
    for k, cat in enumerate(data["categories"]):
        if (
            not isinstance(cat, dict)
            or not isinstance(cat.get("id"), int)
            or not isinstance(cat.get("name"), str)
        ):
            raise ConvertError(
                f"{path}: categories[{k}]: expected an object with an integer 'id' and a 'name'"
            )
        if cat["id"] in categories:
            raise ConvertError(f"{path}: categories[{k}]: id {cat['id']} is also {categories[cat['id']]!r}")
        categories[cat["id"]] = cat["name"].strip()
    folder = os.path.dirname(os.path.abspath(path))
    look_in = (
        [images]
        if images
        else [os.path.join(folder, "images"), os.path.join(os.path.dirname(folder), "images"), folder]
    )
    finder = PictureFinder([*look_in, *([os.path.join(f, split) for f in look_in] if split else [])])
    pictures: dict[int, dict] = {}
    for k, image in enumerate(data["images"]):
        where = f"{path}: images[{k}]"
        if (
            not isinstance(image, dict)
            or not isinstance(image.get("id"), int)
            or not isinstance(image.get("file_name"), str)
        ):
            raise ConvertError(f"{where}: expected an object with an integer 'id' and a 'file_name'")
        if not all(isinstance(image.get(key), int) and image[key] > 0 for key in ("height", "width")):
            raise ConvertError(f"{where}: 'height' and 'width' must be positive integers")
        pictures[image["id"]] = {**image, "index": k, "annotations": []}
    for k, ann in enumerate(data["annotations"]):
        where = f"{path}: annotations[{k}]"
        if not isinstance(ann, dict):
            raise ConvertError(f"{where}: expected an object")
        if ann.get("image_id") not in pictures:
            raise ConvertError(f"{where}: image_id {ann.get('image_id')!r} is not in 'images'")
        if ann.get("category_id") not in categories:
            raise ConvertError(f"{where}: category_id {ann.get('category_id')!r} is not in 'categories'")
        image = pictures[ann["image_id"]]
        segments = _segments(ann, where + f" (id {ann.get('id')})", image["height"], image["width"])
        image["annotations"].append((categories[ann["category_id"]], segments, where))
    entries, empty = [], 0
    for image in pictures.values():
        where = f"{path}: images[{image['index']}] ({image['file_name']})"
        found = finder.find(image["file_name"])
        if found is None:
            raise ConvertError(f"{where}: picture not found in {finder.describe()} (--images DIR)")
        empty += not image["annotations"]
        entries.append(Entry(stem(image["file_name"]), split, found, where, _painter(image, where)))
    notes = (
        [f"note: {empty} picture(s) of {path} have no annotation: all background (or --unlabelled)"]
        if empty
        else []
    )
    return entries, categories, notes


def _painter(image: dict, where: str):
    def paint(height: int, width: int, context: PaintContext) -> np.ndarray:
        if (height, width) != (image["height"], image["width"]):
            raise ConvertError(
                f"{where}: the file says {image['height']}x{image['width']}, the picture is "
                f"{height}x{width} (height x width)"
            )
        masks = []
        for order, (name, segments, ann_where) in enumerate(image["annotations"]):
            mask = np.zeros((height, width), np.uint8)
            for seg in segments:
                if isinstance(seg, dict):
                    try:
                        mask |= rle.decode_coco(seg)
                    except rle.RleError as exc:
                        raise ConvertError(f"{ann_where}: {exc}") from None
                else:
                    fill_inside(mask, seg, OFFSET, 1, ann_where, context)
            masks.append((-int(mask.sum()), order, context.ids[name], mask))
        label = np.full((height, width), context.unlabelled, np.uint8)
        for _, _, value, mask in sorted(masks, key=lambda m: (m[0], m[1])):
            label[mask != 0] = value  # largest first: smaller annotations end on top
        return label

    return paint


def coco_files(src: str) -> list[str]:
    """The COCO files of a source: the file itself, or the ``*.json`` COCO files in the folder or its
    ``annotations/`` folder."""
    if os.path.isfile(src):
        return [src]
    found = []
    for folder in (src, os.path.join(src, "annotations")):
        if os.path.isdir(folder):
            for f in sorted(os.listdir(folder)):
                if f.lower().endswith(".json"):
                    found.append(os.path.join(folder, f))
    return found


def read(src: str, *, images: str | None) -> Source:
    files = coco_files(src)
    if not files:
        raise ConvertError(f"{src}: no COCO .json file here or in its annotations/ folder")
    entries: list[Entry] = []
    names: list[str] = []
    notes: list[str] = []
    splits = [split_of(f) for f in files] if len(files) > 1 else [split_of(files[0])]
    if len(files) > 1 and None in splits:
        raise ConvertError(
            f"{src}: several COCO files, but {files[splits.index(None)]} does not name its split "
            f"(instances_<split>.json); give one file"
        )
    for path, split in zip(files, splits):
        file_entries, categories, file_notes = read_file(path, images, split)
        entries += file_entries
        notes += file_notes
        for _, name in sorted(categories.items()):
            if name not in names:
                names.append(name)
    names.sort(key=lambda n: not is_background(n))
    return Source("coco", f"{len(files)} COCO file(s): {', '.join(files)}", names, {}, entries, notes)


# --------------------------------------------------------------------------------------------
# Writing predictions
# --------------------------------------------------------------------------------------------


class Writer:
    """Collects one picture's prediction at a time; :meth:`document` is the whole COCO file."""

    def __init__(self, label_set: LabelSet) -> None:
        self.label_set = label_set
        self.images: list[dict] = []
        self.annotations: list[dict] = []

    def add(self, file_name: str, label: np.ndarray) -> None:
        image_id = len(self.images) + 1
        height, width = label.shape
        self.images.append(
            {"id": image_id, "file_name": file_name, "height": int(height), "width": int(width)}
        )
        for c in np.unique(label):
            if c in (0, IGNORE_LABEL):
                continue
            mask = label == c
            ys, xs = np.nonzero(mask)
            self.annotations.append(
                {
                    "id": len(self.annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(c),
                    "segmentation": rle.encode_coco(mask),
                    "area": int(mask.sum()),
                    "bbox": [
                        int(xs.min()),
                        int(ys.min()),
                        int(xs.max() - xs.min() + 1),
                        int(ys.max() - ys.min() + 1),
                    ],
                    "iscrowd": 0,
                }
            )

    def document(self) -> dict:
        names = self.label_set.names
        return {
            "info": {"description": "DFPnet predictions (parse_images.py --annotations coco)"},
            "licenses": [],
            "categories": [{"id": i, "name": names[i], "supercategory": ""} for i in range(1, len(names))],
            "images": self.images,
            "annotations": self.annotations,
        }
