"""Shapes to pixels and pixels to polygons.

Tools disagree on where a pixel is. COCO, CVAT and Label Studio give coordinates on the picture's
continuous plane, pixel ``(i, j)`` covering ``[j, j+1) x [i, i+1)`` (its centre at ``j + 0.5``);
LabelMe rasterises its points as pixel centres (PIL's ``ImageDraw.polygon``, pixel ``(i, j)`` at
``(j, i)``) and its reader draws with PIL itself; :func:`fill_polygon` fills as pycocotools does
for the others.

Tracing goes the other way: the outline through the centres of a region's border pixels (OpenCV's
``findContours``), simplified to ``tolerance`` pixels (``approxPolyDP``). Filling it again gives
the region back exactly at tolerance 0 (its holes are traced as regions of their own).
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

_SHIFT = 4  # fractional bits of the coordinates handed to OpenCV
MIN_IOU = 0.99  # a simplified outline must fill this closely what the exact one fills
_ONE = 1 << _SHIFT


def _fixed(points: np.ndarray, offset: float) -> np.ndarray:
    return np.round((np.asarray(points, dtype=np.float64) - offset) * _ONE).astype(np.int32)


def fill_polygon(mask: np.ndarray, points: Sequence, offset: float, value: int = 1) -> None:
    """Fill the polygon ``points`` (N x 2, x then y, at least 3) into ``mask`` with ``value``.

    ``offset`` 0.5 (COCO, CVAT, Label Studio): the pixels whose centre is inside (even-odd rule), as
    pycocotools rasterises; ``offset`` 0 (points on pixel centres): those inside or on the outline,
    OpenCV's near match of LabelMe's rule (the LabelMe reader draws with PIL, as LabelMe does; this
    serves the tracer's check, which must run where Pillow is not installed).
    """
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2) - offset
    if offset:
        _fill_centres(mask, pts, value)
        return
    fixed = np.round(pts * _ONE).astype(np.int32)
    cv2.fillPoly(mask, [fixed], int(value), lineType=cv2.LINE_8, shift=_SHIFT)
    cv2.polylines(mask, [fixed], True, int(value), 1, lineType=cv2.LINE_8, shift=_SHIFT)


def _fill_centres(mask: np.ndarray, pts: np.ndarray, value: int) -> None:
    """Scanline even-odd fill of the pixels ``(i, j)`` with ``(j, i)`` inside the polygon ``pts``."""
    height, width = mask.shape[:2]
    x0, y0 = pts[:, 0], pts[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    lo, hi = np.minimum(y0, y1), np.maximum(y0, y1)
    first = np.clip(np.ceil(lo), 0, height).astype(np.int64)  # rows i with lo <= i < hi
    last = np.clip(np.ceil(hi), 0, height).astype(np.int64)
    counts = np.maximum(last - first, 0)
    counts[y0 == y1] = 0
    if not counts.any():
        return
    edge = np.repeat(np.arange(len(pts)), counts)
    rows = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts) + first[edge]
    xs = x0[edge] + (rows - y0[edge]) * (x1[edge] - x0[edge]) / (y1[edge] - y0[edge])
    cols = np.clip(np.ceil(xs), 0, width).astype(np.int64)  # pixels j >= x are right of the crossing
    top, left = int(rows.min()), int(cols.min())
    box = np.zeros(
        (int(rows.max()) - top + 1, int(cols.max()) - left + 1), np.int16
    )  # the polygon's box only
    np.add.at(box, (rows - top, cols - left), 1)
    inside = (np.cumsum(box, axis=1, dtype=np.int16) & 1).astype(bool)
    region = mask[top : top + box.shape[0], left : min(left + box.shape[1], width)]
    region[inside[:, : region.shape[1]]] = value


def outside(points: Sequence, width: int, height: int, offset: float) -> tuple[bool, bool]:
    """Whether the polygon reaches outside a ``width x height`` picture, and whether it lies entirely
    outside (both measured on pixel centres)."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2) - offset
    lo, hi = -0.5, np.array([width - 0.5, height - 0.5])
    beyond = (pts < lo).any() or (pts > hi).any()
    entirely = bool(
        (pts[:, 0].max() < lo)
        or (pts[:, 1].max() < lo)
        or (pts[:, 0].min() > hi[0])
        or (pts[:, 1].min() > hi[1])
    )
    return bool(beyond), entirely


def trace(mask: np.ndarray, tolerance: float, min_iou: float = MIN_IOU) -> list[np.ndarray]:
    """The outer outlines of a binary mask's regions (8-connected), each an N x 2 float array of pixel
    centres (x, y) simplified to ``tolerance`` pixels; a region whose simplified outline would fill
    pixels with an IoU under ``min_iou`` against its exact one (a small or thin part) keeps the exact
    one. A region's holes are not traced (see :func:`holes`). An outline of fewer than 3 points (a
    one-pixel-wide sliver) gets its last point repeated."""
    contours, _ = cv2.findContours(
        np.ascontiguousarray(mask, dtype=np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
    )
    out = []
    for contour in contours:
        points = _simplify(contour, tolerance)
        if tolerance > 0 and len(points) < len(contour) and _fill_iou(contour, points) < min_iou:
            points = _simplify(contour, 0.0)
        out.append(points)
    return out


def _fill_iou(contour: np.ndarray, points: np.ndarray) -> float:
    """IoU of the pixels two outlines of one region fill (LabelMe's rule), on the region's box."""
    exact = contour.reshape(-1, 2)
    (x0, y0), (x1, y1) = np.floor(exact.min(0) - 1).astype(int), np.ceil(exact.max(0) + 1).astype(int)
    a = np.zeros((y1 - y0 + 1, x1 - x0 + 1), np.uint8)
    b = np.zeros_like(a)
    fill_polygon(a, exact - (x0, y0), 0.0)
    fill_polygon(b, points - (x0, y0), 0.0)
    return float((a & b).sum() / max(1, (a | b).sum()))


def holes(mask: np.ndarray) -> np.ndarray:
    """The pixels inside a mask's outer outlines that are not in it: its holes."""
    binary = np.ascontiguousarray(mask, dtype=np.uint8)
    contours, _ = cv2.findContours(binary, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    filled = np.zeros_like(binary)
    cv2.drawContours(filled, contours, -1, 1, thickness=-1)
    return (filled != 0) & (binary == 0)


def _simplify(contour: np.ndarray, tolerance: float) -> np.ndarray:
    points = cv2.approxPolyDP(contour, tolerance, True) if tolerance > 0 else contour
    points = points.reshape(-1, 2).astype(np.float64)
    if len(points) >= 3:
        return points
    # A one-pixel-wide sliver (a pixel, or a straight line of them): its ends repeated to make the
    # three points a polygon needs; filling it draws the line between them.
    ends = contour.reshape(-1, 2).astype(np.float64)[[0, -1]] if len(points) < 2 else points
    return np.concatenate([ends, ends[-1:]])
