"""LabelMe: one JSON file per picture (``shapes``, ``imagePath``, ``imageData``, ``imageHeight``,
``imageWidth``), as LabelMe saves it.

Reading: polygons, rectangles, circles, lines and line strips (``--line-width`` pixels wide) are
drawn in file order, later shapes over earlier ones, with PIL as LabelMe's own export draws them;
points are counted and skipped; a shape labelled ``_background_`` paints background, ``__ignore__`` paints
255. The picture is ``imagePath`` relative to the JSON file (or by its name in ``--images``), else
the picture embedded in ``imageData``. Writing: the label map traced into polygons, one file per
picture, ``imageData`` left empty.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Sequence

import cv2
import numpy as np

from dataset.formats import shapes
from dataset.formats.common import Entry, PaintContext, PictureFinder, Source, load_json, stem
from dataset.formats.names import ConvertError, sorted_names
from utils.labels import IGNORE_LABEL, LABELS_FILE, LabelSet

VERSION = "5.5.0"  # the LabelMe file version written (the format has not changed since 4.x)
DRAWN = ("polygon", "rectangle", "circle", "line", "linestrip")
SKIPPED = ("point", "points")
OFFSET = 0.0  # LabelMe's points are pixel centres


def json_files(folder: str) -> list[str]:
    """The folder's LabelMe files: its .json files but a labels.json (the label set beside them)."""
    return sorted(
        os.path.join(folder, f)
        for f in os.listdir(folder)
        if f.lower().endswith(".json") and f != LABELS_FILE
    )


def looks_like(data: object) -> bool:
    return isinstance(data, dict) and isinstance(data.get("shapes"), list)


def _points(shape: dict, where: str, kind: str) -> np.ndarray:
    points = shape.get("points")
    try:
        array = np.asarray(points, dtype=np.float64)
    except (TypeError, ValueError):
        array = np.zeros((0,))
    if array.ndim != 2 or array.shape[1] != 2 or not np.isfinite(array).all():
        raise ConvertError(f"{where}: 'points' of a {kind} must be a list of [x, y] numbers")
    need = {"polygon": 3, "rectangle": 2, "circle": 2, "line": 2, "linestrip": 2}[kind]
    if len(array) < need:
        raise ConvertError(f"{where}: a {kind} needs at least {need} points, it has {len(array)}")
    return array


def _painter(
    shapes_list: list[tuple[str, str, np.ndarray]], size: tuple[int, int] | None, where: str, line_width: int
):
    def paint(height: int, width: int, context: PaintContext) -> np.ndarray:
        # PIL draws exactly as LabelMe's own export (labelme.utils.shape_to_mask): polygons, rectangles
        # and circles filled with their outline, lines line_width wide, on pixel centres.
        from PIL import Image, ImageDraw  # Pillow: reading LabelMe only; the deployment writes without it

        if size is not None and size != (height, width):
            raise ConvertError(
                f"{where}: imageHeight x imageWidth is {size[0]}x{size[1]}, the picture is {height}x{width}"
            )
        canvas = Image.new("L", (width, height), context.unlabelled)
        draw = ImageDraw.Draw(canvas)
        for label_name, kind, points in shapes_list:
            value = context.ids[label_name]
            xy = [(float(x), float(y)) for x, y in points]
            if kind == "circle":
                (cx, cy), (px, py) = xy[:2]
                r = float(np.hypot(cx - px, cy - py))
                draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=value, fill=value)
                continue
            if kind in ("line", "linestrip"):
                draw.line(xy, fill=value, width=line_width)
                continue
            box = (
                points
                if kind == "polygon"
                else np.array([points[0], [points[1][0], points[0][1]], points[1]])
            )
            beyond, entirely = shapes.outside(box, width, height, OFFSET)
            if entirely:
                raise ConvertError(
                    f"{where}: a {kind} labelled {label_name!r} lies entirely outside the picture"
                )
            if beyond:
                context.tally.add("shape clipped to its picture", where)
            if kind == "rectangle":
                (x0, y0), (x1, y1) = xy[:2]
                draw.rectangle(
                    [min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)], outline=value, fill=value
                )
            else:
                draw.polygon(xy, outline=value, fill=value)
        return np.asarray(canvas, dtype=np.uint8).copy()

    return paint


def read(src: str, *, images: str | None, line_width: int, workdir: str) -> Source:
    """A folder of LabelMe files (or one file). Embedded pictures are written under ``workdir``."""
    files = json_files(src) if os.path.isdir(src) else [src]
    folder = src if os.path.isdir(src) else os.path.dirname(src) or "."
    if not files:
        raise ConvertError(f"{src}: no LabelMe .json files in the folder")
    entries, names = [], []
    skipped_points = 0
    for path in files:
        data = load_json(path)
        if not looks_like(data):
            raise ConvertError(f"{path}: not a LabelMe file (no 'shapes' list)")
        found = []
        for k, shape in enumerate(data["shapes"]):
            where = f"{path}: shapes[{k}]"
            if not isinstance(shape, dict):
                raise ConvertError(f"{where}: expected an object")
            kind = shape.get("shape_type") or "polygon"
            label_name = shape.get("label")
            if not isinstance(label_name, str) or not label_name.strip():
                raise ConvertError(f"{where}: 'label' must be a non-empty string, got {label_name!r}")
            if kind in SKIPPED:
                skipped_points += 1
                continue
            if kind not in DRAWN:
                raise ConvertError(f"{where}: shape_type {kind!r} is not one of {', '.join(DRAWN + SKIPPED)}")
            found.append((label_name.strip(), kind, _points(shape, where, kind)))
            names.append(label_name.strip())
        picture = _picture(path, data, images, workdir)
        size = None
        if isinstance(data.get("imageHeight"), int) and isinstance(data.get("imageWidth"), int):
            size = (data["imageHeight"], data["imageWidth"])
        name = stem(data.get("imagePath") or path)
        entries.append(Entry(name, None, picture, path, _painter(found, size, path, line_width)))
    notes = [f"note: {skipped_points} point shape(s) skipped (a point has no area)"] if skipped_points else []
    return Source(
        "labelme",
        f"{len(files)} LabelMe file(s) in {folder}",
        sorted_names(names),
        {},
        entries,
        notes,
    )


def _picture(path: str, data: dict, images: str | None, workdir: str) -> str:
    folder = os.path.dirname(path)
    image_path = data.get("imagePath")
    if isinstance(image_path, str) and image_path:
        finder = PictureFinder([folder, *([images] if images else [])])
        found = finder.find(image_path)
        if found:
            return found
    embedded = data.get("imageData")
    if isinstance(embedded, str) and embedded:
        try:
            raw = base64.b64decode(embedded, validate=True)
        except (binascii.Error, ValueError):
            raise ConvertError(f"{path}: imageData is not valid base64") from None
        out = os.path.join(workdir, f"{len(os.listdir(workdir))}_{stem(image_path or path)}.embedded")
        with open(out, "wb") as f:
            f.write(raw)
        return out
    raise ConvertError(
        f"{path}: picture {image_path!r} not found (looked beside the file"
        f"{' and in ' + images if images else ''}) and no imageData embedded"
    )


# --------------------------------------------------------------------------------------------
# Writing predictions
# --------------------------------------------------------------------------------------------


def shapes_of(label: np.ndarray, label_set: LabelSet, tolerance: float) -> list[dict]:
    """The label map as LabelMe polygons: classes by decreasing area, so that later (smaller) ones are
    drawn over earlier ones. Each hole of a class's regions whose pixels are mostly background or a
    class drawn before follows as a polygon of that class; one of a later class is drawn by it.

    Each outline is simplified to ``tolerance`` where it still fills its region closely
    (``shapes.trace``); what the simplified outlines lose of every region adds up in the background,
    which no outline draws, so if any class (the background included) would come back with an IoU
    under ``shapes.MIN_IOU``, the picture keeps its exact outlines."""
    out = _shapes(label, label_set, tolerance)
    if tolerance > 0 and _min_class_iou(label, label_set, out) < shapes.MIN_IOU:
        out = _shapes(label, label_set, 0.0)
    return out


def _min_class_iou(label: np.ndarray, label_set: LabelSet, drawn: list[dict]) -> float:
    """The lowest per-class IoU of the map the shapes paint (in order, LabelMe's rule) against ``label``."""
    ids = {name: i for i, name in enumerate(label_set.names)}
    painted = np.zeros(label.shape, np.uint8)
    for shape in drawn:
        shapes.fill_polygon(painted, shape["points"], 0.0, ids[shape["label"]])
    scored = label != IGNORE_LABEL
    worst = 1.0
    for c in np.unique(label[scored]):
        want, got = (label == c) & scored, (painted == c) & scored
        worst = min(worst, float((want & got).sum() / max(1, (want | got).sum())))
    return worst


def _shapes(label: np.ndarray, label_set: LabelSet, tolerance: float) -> list[dict]:
    classes, counts = np.unique(label, return_counts=True)
    order = [
        int(c) for c, _ in sorted(zip(classes, counts), key=lambda t: -t[1]) if c not in (0, IGNORE_LABEL)
    ]
    drawn = {0}
    out: list[dict] = []
    for c in order:
        mask = label == c
        out += [_shape(label_set.names[c], outline) for outline in shapes.trace(mask, tolerance)]
        inside = shapes.holes(mask)
        if inside.any():
            count, regions = cv2.connectedComponents(inside.astype(np.uint8), connectivity=8)
            for k in range(1, count):
                region = regions == k
                values = np.bincount(label[region], minlength=256)
                majority = int(values.argmax())
                if majority in drawn:
                    out += [_shape(label_set.names[majority], o) for o in shapes.trace(region, tolerance)]
        drawn.add(c)
    return out


def _shape(name: str, points: Sequence) -> dict:
    return {
        "label": name,
        "points": [[round(float(x), 2), round(float(y), 2)] for x, y in points],
        "group_id": None,
        "description": "",
        "shape_type": "polygon",
        "flags": {},
    }


def document(
    label: np.ndarray, image_path: str, json_path: str, label_set: LabelSet, tolerance: float
) -> dict:
    """One LabelMe file for a predicted label map; ``imagePath`` relative to ``json_path``'s folder."""
    return {
        "version": VERSION,
        "flags": {},
        "shapes": shapes_of(label, label_set, tolerance),
        "imagePath": os.path.relpath(
            os.path.abspath(image_path), os.path.dirname(os.path.abspath(json_path))
        ),
        "imageData": None,
        "imageHeight": int(label.shape[0]),
        "imageWidth": int(label.shape[1]),
    }
