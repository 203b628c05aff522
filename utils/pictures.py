"""How a label map looks: the label set's colours over an image, and a legend naming each colour;
and the one way pictures are written (:func:`write_image`).

numpy and OpenCV only (no torch): ``dataset.browse``, ``inference.pipeline`` (the pictures of
parse_images.py and evaluate.py) and the torch-free deployment draw with the same code.
"""

from __future__ import annotations

import os

import cv2
import numpy as np

from utils.files import write_bytes_atomic
from utils.labels import IGNORE_COLOUR, IGNORE_LABEL, LabelSet


def overlay(image_bgr: np.ndarray, label: np.ndarray, label_set: LabelSet, alpha: float = 0.5) -> np.ndarray:
    """Blend the label set's colours over a BGR uint8 image where the label is a foreground class.

    Background (0) and ignored (255) pixels keep the image, so the subject stands out.
    """
    image_bgr = np.asarray(image_bgr)
    label = np.asarray(label)
    if image_bgr.ndim == 2:
        image_bgr = np.repeat(image_bgr[:, :, None], 3, axis=2)
    if image_bgr.shape[:2] != label.shape:
        raise ValueError(f"image {image_bgr.shape[:2]} and label {label.shape} differ in size")
    color_bgr = label_set.colorize(label)[:, :, ::-1].astype(np.float32)
    blended = (1.0 - alpha) * image_bgr.astype(np.float32) + alpha * color_bgr
    foreground = (label != 0) & (label != IGNORE_LABEL)
    out = image_bgr.copy()
    out[foreground] = np.clip(np.rint(blended[foreground]), 0, 255).astype(np.uint8)
    return out


_ROW, _SWATCH, _FONT, _SCALE = 18, 12, cv2.FONT_HERSHEY_SIMPLEX, 0.4


def legend_picture(label_set: LabelSet, *, ignore: bool = False, rows_per_column: int = 20) -> np.ndarray:
    """A BGR picture naming each class's colour (``<id> <name>``, with its mirror class if it has one),
    and the ignore label's white with ``ignore``."""
    mirror = {a: b for a, b in label_set.flip_pairs} | {b: a for a, b in label_set.flip_pairs}
    entries = [
        (
            tuple(int(v) for v in colour[::-1]),
            f"{i} {name}" + (f"  (mirror: {label_set.names[mirror[i]]})" if i in mirror else ""),
        )
        for i, (name, colour) in enumerate(zip(label_set.names, label_set.colours()))
    ]
    if ignore:
        entries.append((IGNORE_COLOUR, f"{IGNORE_LABEL} ignored"))
    columns = [entries[k : k + rows_per_column] for k in range(0, len(entries), rows_per_column)]
    widths = [
        max(cv2.getTextSize(text, _FONT, _SCALE, 1)[0][0] for _, text in column) + _SWATCH + 18
        for column in columns
    ]
    picture = np.full((6 + _ROW * len(columns[0]), sum(widths) + 6, 3), 255, np.uint8)
    x = 6
    for column, width in zip(columns, widths):
        for row, (colour, text) in enumerate(column):
            y = 4 + row * _ROW
            cv2.rectangle(picture, (x, y), (x + _SWATCH, y + _SWATCH), colour, -1)
            cv2.rectangle(picture, (x, y), (x + _SWATCH, y + _SWATCH), (120, 120, 120), 1)
            cv2.putText(
                picture, text, (x + _SWATCH + 6, y + _SWATCH - 1), _FONT, _SCALE, (30, 30, 30), 1, cv2.LINE_AA
            )
        x += width
    return picture


def write_image(path: str, picture: np.ndarray) -> None:
    """``picture`` (BGR or one channel) as the format of ``path``'s extension, written through a
    temporary file: a failed write raises OSError with its errno and ``path`` and leaves the previous
    file, if any, as it was (``cv2.imwrite`` only returns False)."""
    ok, encoded = cv2.imencode(os.path.splitext(path)[1] or ".png", np.ascontiguousarray(picture))
    if not ok:
        raise ValueError(f"{path}: OpenCV cannot encode a picture of this type")
    write_bytes_atomic(encoded.tobytes(), path)
