"""Label Studio: the JSON export (a list of tasks, each with ``data`` naming its picture and
``annotations`` holding ``result`` lists), with brush (RLE) and polygon results.

Reading: each task's first annotation that was not cancelled (else its first prediction); results
drawn in order, later over earlier. Polygon points are percents of the picture's width and height
(COCO's convention for pixels). The picture is found by the name in ``data.image`` in ``--images``
(default: an ``images/`` folder beside the file, else its folder), with or without the 8-character
prefix Label Studio gives uploaded files (``1a2b3c4d-dog.jpg``). Tasks without any annotation are
skipped and counted. Writing: a task per picture whose ``predictions`` hold one brush result per
class, to import into a project whose labelling config has a ``BrushLabels`` tag.
"""

from __future__ import annotations

import os
import re
import urllib.parse

import numpy as np

from dataset.formats import rle
from dataset.formats.common import Entry, PaintContext, PictureFinder, Source, fill_inside, load_json, stem
from dataset.formats.names import ConvertError, sorted_names
from utils.labels import IGNORE_LABEL, LabelSet

OFFSET = 0.5
DRAWN = ("brushlabels", "polygonlabels")
_UPLOAD_PREFIX = re.compile(r"^[0-9a-f]{8}-")
# The tag names the import expects; --annotations labelstudio writes them and docs/annotations.md
# gives the labelling config that declares them.
FROM_NAME, TO_NAME = "tag", "image"


def looks_like(data: object) -> bool:
    return (
        isinstance(data, list) and bool(data) and all(isinstance(t, dict) and "data" in t for t in data[:5])
    )


def picture_name(task: dict) -> str | None:
    data = task.get("data")
    if not isinstance(data, dict):
        return None
    value = data.get("image") or next((v for v in data.values() if isinstance(v, str)), None)
    if not isinstance(value, str):
        return None
    parsed = urllib.parse.urlparse(value)
    query = urllib.parse.parse_qs(parsed.query)
    path = query["d"][0] if "d" in query else urllib.parse.unquote(parsed.path)
    return os.path.basename(path)


def _result_list(task: dict, where: str) -> tuple[list, str] | None:
    for key in ("annotations", "completions", "predictions"):
        items = task.get(key) or []
        if not isinstance(items, list):
            raise ConvertError(f"{where}: '{key}' must be a list")
        for k, item in enumerate(items):
            if (
                isinstance(item, dict)
                and not item.get("was_cancelled")
                and isinstance(item.get("result"), list)
            ):
                return item["result"], f"{where}.{key}[{k}]"
    return None


def _parse_result(result: dict, where: str) -> tuple[str, str, object, tuple[int, int]]:
    kind = result.get("type")
    value = result.get("value")
    if not isinstance(value, dict):
        raise ConvertError(f"{where}: 'value' must be an object")
    labels = value.get(kind)
    if not isinstance(labels, list) or len(labels) != 1 or not isinstance(labels[0], str):
        raise ConvertError(f"{where}: value.{kind} must name one label, got {labels!r}")
    size = (result.get("original_height"), result.get("original_width"))
    if not all(isinstance(v, int) and v > 0 for v in size):
        raise ConvertError(f"{where}: original_height and original_width must be positive integers")
    if kind == "brushlabels":
        if value.get("format", "rle") != "rle" or not isinstance(value.get("rle"), list):
            raise ConvertError(f"{where}: a brush result needs value.format 'rle' and a value.rle list")
        shape: object = value["rle"]
    else:
        try:
            shape = np.asarray(value.get("points"), dtype=np.float64)
        except (TypeError, ValueError):
            shape = np.zeros(0)
        if shape.ndim != 2 or shape.shape[1] != 2 or len(shape) < 3 or not np.isfinite(shape).all():
            raise ConvertError(f"{where}: value.points must be at least 3 [x%, y%] pairs")
    return labels[0].strip(), kind, shape, size  # type: ignore[return-value]


def _painter(results: list, where: str):
    def paint(height: int, width: int, context: PaintContext) -> np.ndarray:
        label = np.full((height, width), context.unlabelled, np.uint8)
        for name, kind, shape, size, result_where in results:
            if size != (height, width):
                raise ConvertError(
                    f"{result_where}: original size {size[0]}x{size[1]}, the picture is "
                    f"{height}x{width} (height x width)"
                )
            value = context.ids[name]
            if kind == "brushlabels":
                try:
                    mask = rle.decode_brush(shape, height, width)
                except rle.RleError as exc:
                    raise ConvertError(f"{result_where}: {exc}") from None
                label[mask != 0] = value
            else:
                points = shape * np.array([width, height]) / 100.0
                fill_inside(label, points, OFFSET, value, result_where, context)
        return label

    return paint


def read(src: str, *, images: str | None) -> Source:
    data = load_json(src)
    if not looks_like(data):
        raise ConvertError(f"{src}: not a Label Studio JSON export (a list of tasks with 'data')")
    folder = os.path.dirname(os.path.abspath(src))
    finder = PictureFinder([images] if images else [os.path.join(folder, "images"), folder])
    entries, names, unlabelled, other = [], [], 0, 0
    for t, task in enumerate(data):
        where = f"{src}: task {task.get('id', t)}"
        name = picture_name(task)
        if not name:
            raise ConvertError(f"{where}: data.image names no picture")
        found = _result_list(task, where)
        if found is None:
            unlabelled += 1
            continue
        results, results_where = found
        parsed = []
        for r, result in enumerate(results):
            result_where = f"{results_where}.result[{r}]"
            if not isinstance(result, dict):
                raise ConvertError(f"{result_where}: expected an object")
            if result.get("type") not in DRAWN:
                other += 1
                continue
            parsed.append((*_parse_result(result, result_where), result_where))
            names.append(parsed[-1][0])
        picture = finder.find(name) or (
            finder.find(_UPLOAD_PREFIX.sub("", name)) if _UPLOAD_PREFIX.match(name) else None
        )
        if picture is None:
            raise ConvertError(f"{where}: picture {name!r} not found in {finder.describe()} (--images DIR)")
        entries.append(
            Entry(stem(_UPLOAD_PREFIX.sub("", name)), None, picture, where, _painter(parsed, where))
        )
    notes = []
    if unlabelled:
        notes.append(f"note: {unlabelled} task(s) without an annotation or prediction skipped")
    if other:
        notes.append(f"note: {other} result(s) of other types than {', '.join(DRAWN)} skipped")
    return Source(
        "labelstudio",
        f"Label Studio export {src} ({len(data)} tasks)",
        sorted_names(names),
        {},
        entries,
        notes,
    )


# --------------------------------------------------------------------------------------------
# Writing predictions
# --------------------------------------------------------------------------------------------


def task(image_url: str, label: np.ndarray, label_set: LabelSet) -> dict:
    """One task whose prediction is the label map as brush results, one per class present."""
    height, width = label.shape
    results = []
    for c in np.unique(label):
        if c in (0, IGNORE_LABEL):
            continue
        results.append(
            {
                "id": f"c{int(c)}",
                "type": "brushlabels",
                "from_name": FROM_NAME,
                "to_name": TO_NAME,
                "original_width": int(width),
                "original_height": int(height),
                "image_rotation": 0,
                "value": {
                    "format": "rle",
                    "rle": rle.encode_brush(label == c),
                    "brushlabels": [label_set.names[c]],
                },
            }
        )
    prediction = {"model_version": "dfpnet", "result": results}
    return {"data": {TO_NAME: image_url}, "predictions": [prediction]}
