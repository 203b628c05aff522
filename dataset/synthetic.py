"""Procedural cartoon dogs with exact part labels, in the authors' dataset layout.

The authors' Dog dataset is not in this repository (see dataset/README.md). This generator
makes a stand-in that exercises every code path — loader, checker, training, evaluation —
with the same layout, label ids and left/right convention:

* each dog is drawn with flat colours and a dark outline from OpenCV polygons, part by part,
  and the label map is drawn from the very same polygons in the same order (no
  anti-aliasing), so labels are exact; the outline belongs to the part it outlines;
* "left" and "right" are the dog's own sides. A dog facing right shows its left side: its
  near legs, drawn over the body, are ``left_arm`` (3, front) and ``left_leg`` (5, hind); the
  far legs, behind the body and a little darker, are ``right_arm`` (4) and ``right_leg`` (6).
  A dog facing left is the mirror image with 3<->4 and 5<->6 swapped, so mirroring any
  sample and swapping the ids gives another valid sample, as for the real data;
* the random numbers of image ``k`` come from ``numpy.random.default_rng([seed, k])``:
  the same seed writes the same bytes.

CLI::

    python -m dataset.synthetic --out dataset/Cartoon_sketches/Synthetic \
        --train 120 --val 30 --trainTest 20 --seed 0
    python -m dataset.synthetic --contact-sheet dataset/synthetic_samples.png
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from dataset.layout import split_paths
from utils.cli import DefaultsHelpFormatter
from utils.labels import DOG

# The Dog set's ids (utils/labels.py), by name: the generator draws dogs.
HEAD, BODY, LEFT_ARM, RIGHT_ARM, LEFT_LEG, RIGHT_LEG, TAIL = (
    DOG.names.index(n) for n in ("head", "body", "left_arm", "right_arm", "left_leg", "right_leg", "tail")
)

# Fur colours (BGR): tan, brown, dark brown, black, white, grey, golden, cream, red-brown.
FUR_COLOURS = np.array(
    [
        (110, 160, 205),
        (45, 85, 140),
        (30, 45, 75),
        (45, 42, 40),
        (235, 238, 240),
        (150, 150, 155),
        (60, 165, 225),
        (190, 225, 240),
        (40, 70, 170),
    ],
    dtype=np.float64,
)

SPLITS = ("train", "val", "trainTest")
DEFAULT_MIN_SIZE = 96
DEFAULT_MAX_SIZE = 256
DEFAULT_JPEG_QUALITY = 90
# Polygons are rasterised with 4 fractional bits, so sub-pixel geometry survives rounding.
_SHIFT = 4


@dataclass
class Sample:
    """One generated picture: BGR uint8 image, uint8 label map, and which way the dog faces."""

    image: np.ndarray
    label: np.ndarray
    facing: str


# --------------------------------------------------------------------------- shapes
def _ellipse(center, rx: float, ry: float, angle_deg: float = 0.0, n: int = 28) -> np.ndarray:
    t = np.linspace(0.0, 2.0 * np.pi, n, endpoint=False)
    pts = np.stack([rx * np.cos(t), ry * np.sin(t)], axis=1)
    return _rotate(pts, angle_deg) + np.asarray(center, dtype=np.float64)


def _rotate(pts: np.ndarray, angle_deg: float) -> np.ndarray:
    a = np.deg2rad(angle_deg)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    return np.asarray(pts, dtype=np.float64) @ rot.T


def _segment(p0, p1, w0: float, w1: float) -> np.ndarray:
    """A quadrilateral along p0 -> p1, ``w0`` wide at p0 and ``w1`` at p1."""
    p0, p1 = np.asarray(p0, dtype=np.float64), np.asarray(p1, dtype=np.float64)
    d = p1 - p0
    n = np.array([-d[1], d[0]]) / max(np.hypot(*d), 1e-9)
    return np.array([p0 + n * w0 / 2, p1 + n * w1 / 2, p1 - n * w1 / 2, p0 - n * w0 / 2])


def _limb(points: list, widths: list) -> list[np.ndarray]:
    """A bendy tube (leg, tail): segments between the points plus round joints and end."""
    shapes = []
    for i in range(len(points) - 1):
        shapes.append(_segment(points[i], points[i + 1], widths[i], widths[i + 1]))
    for p, w in zip(points[1:], widths[1:], strict=True):
        shapes.append(_ellipse(p, w / 2, w / 2, n=16))
    return shapes


def _direction(angle_deg: float) -> np.ndarray:
    """Unit vector ``angle_deg`` from straight down, positive towards the front (+x)."""
    a = np.deg2rad(angle_deg)
    return np.array([np.sin(a), np.cos(a)])


@dataclass
class _Part:
    label: int  # class id drawn into the label map (-1: picture detail only)
    colour: tuple  # BGR fill
    shapes: list  # polygons, float (x, y)
    outline: bool = True  # dark outline around the union of the shapes
    mask_label: int = -1  # detail drawn only over pixels of this class (spots on the body)


# --------------------------------------------------------------------------- the dog
Shade = Callable[[float], tuple]


def _leg_drawer(
    rng: np.random.Generator,
) -> tuple[Callable[[np.ndarray, float, bool], list[np.ndarray]], dict[str, float], np.ndarray]:
    """The pose: a function drawing one leg from its hip, each leg's swing angle, and the far legs' offset."""
    pose = rng.choice(["stand", "walk", "run"])
    if pose == "stand":
        swing = {k: rng.uniform(-8, 8) for k in ("nf", "ff", "nh", "fh")}
    elif pose == "walk":
        a, b = rng.uniform(10, 25), rng.uniform(10, 25)
        swing = {"nf": a, "ff": -a * rng.uniform(0.3, 0.8), "nh": -b, "fh": b * rng.uniform(0.3, 0.8)}
    else:
        a, b = rng.uniform(25, 45), rng.uniform(25, 45)
        swing = {"nf": a, "ff": a - rng.uniform(10, 25), "nh": -b, "fh": -b + rng.uniform(10, 25)}
    leg_len = rng.uniform(0.36, 0.55)
    leg_w = rng.uniform(0.09, 0.13)
    far_shift = rng.choice([-1.0, 1.0]) * rng.uniform(0.6, 1.0) * leg_w
    far_lift = rng.uniform(0.03, 0.07)

    def leg(hip: np.ndarray, angle: float, hind: bool) -> list[np.ndarray]:
        # Front legs bend back at the wrist; hind legs have a forward thigh and a backward hock.
        if hind:
            a1, a2, w0 = angle + rng.uniform(10, 25), angle - rng.uniform(10, 25), leg_w * 1.35
        else:
            a1, a2, w0 = angle, angle - rng.uniform(0, 12), leg_w * 1.1
        knee = hip + _direction(a1) * leg_len * 0.5
        paw = knee + _direction(a2) * leg_len * 0.5
        shapes = _limb([hip, knee, paw], [w0, leg_w, leg_w * 0.85])
        toe = paw + np.array([leg_w * 0.3, -leg_w * 0.05])
        shapes.append(_ellipse(toe, leg_w * 0.75, leg_w * 0.42, n=16))
        return shapes

    return leg, swing, np.array([far_shift, -far_lift])


def _tail(rng: np.random.Generator, base: np.ndarray, shade: Shade) -> _Part:
    """Behind the body, leaving from the rump backwards, up or down, a little curled."""
    tail_len = rng.uniform(0.3, 0.55)
    tail_w = rng.uniform(0.06, 0.1)
    heading = rng.uniform(-30, 75)  # 0: straight back, 90: straight up
    curl = rng.uniform(-40, 40)
    pts, widths = [base], [tail_w]
    for i in range(1, 5):
        a = np.deg2rad(heading + curl * i / 4)
        pts.append(pts[-1] + np.array([-np.cos(a), -np.sin(a)]) * tail_len / 4)
        widths.append(tail_w * (1.0 - 0.15 * i))
    return _Part(TAIL, shade(rng.uniform(0.9, 1.1)), _limb(pts, widths))


def _head(
    rng: np.random.Generator, head_c: np.ndarray, head_r: float, shade: Shade, far: float
) -> list[_Part]:
    """Skull, snout, nose and eye; the ears are head too: the far one behind the skull, the near one
    over it."""
    head_tilt = rng.uniform(-20, 20)

    def at_head(x: float, y: float) -> np.ndarray:
        return head_c + _rotate(np.array([[x * head_r, y * head_r]]), head_tilt)[0]

    pointy = rng.random() < 0.5
    ear_len = rng.uniform(1.0, 1.5)

    def ear(dx: float) -> list[np.ndarray]:
        if pointy:
            tip = at_head(-0.35 + dx, -1.0 - ear_len * 0.6)
            return [np.array([at_head(-0.75 + dx, -0.45), tip, at_head(0.05 + dx, -0.75)])]
        return [
            _ellipse(
                at_head(-0.45 + dx, 0.15),
                head_r * 0.32,
                head_r * 0.4 * ear_len + head_r * 0.2,
                head_tilt + rng.uniform(5, 30),
                n=20,
            )
        ]

    parts = [_Part(HEAD, shade(far * 0.95), ear(0.35))]
    snout_c = at_head(rng.uniform(0.8, 1.0), rng.uniform(0.2, 0.4))
    snout_rx, snout_ry = head_r * rng.uniform(0.5, 0.75), head_r * rng.uniform(0.32, 0.45)
    skull = _ellipse(head_c, head_r * rng.uniform(1.0, 1.15), head_r, head_tilt)
    parts.append(_Part(HEAD, shade(1.0), [skull, _ellipse(snout_c, snout_rx, snout_ry, head_tilt)]))
    parts.append(_Part(HEAD, shade(rng.uniform(0.75, 1.05)), ear(0.0)))

    nose_c = snout_c + _rotate(np.array([[snout_rx * 0.85, -snout_ry * 0.35]]), head_tilt)[0]
    nose = _ellipse(nose_c, head_r * 0.16, head_r * 0.12, head_tilt, 16)
    parts.append(_Part(HEAD, (30.0, 25.0, 25.0), [nose], outline=False))
    eye_c = at_head(0.4, -0.25)
    parts.append(
        _Part(
            -1, (250.0, 250.0, 250.0), [_ellipse(eye_c, head_r * 0.15, head_r * 0.17, 0, 16)], mask_label=HEAD
        )
    )
    parts.append(
        _Part(
            -1,
            (20.0, 20.0, 20.0),
            [_ellipse(eye_c + np.array([head_r * 0.04, 0]), head_r * 0.08, head_r * 0.1, 0, 12)],
            outline=False,
            mask_label=HEAD,
        )
    )
    return parts


def _dog_parts(rng: np.random.Generator, fur: np.ndarray) -> list[_Part]:
    """Parts of a right-facing dog, body length 1, back to front (the drawing order).

    The random numbers are drawn in a fixed order (pose, tail, body, head), so a seed always gives
    the same dog."""

    def shade(factor: float) -> tuple:
        return tuple(float(c) for c in np.clip(fur * factor, 0, 255))

    far = 0.72  # far-side legs and ear are in shadow
    rx, ry = 0.5, rng.uniform(0.19, 0.3)
    tilt = rng.uniform(-8, 8)

    def on_body(u: float, v: float) -> np.ndarray:
        return _rotate(np.array([[u * rx, v * ry]]), tilt)[0]

    # Legs: hips inside the body so the near legs visibly start on it and the far ones hide there.
    leg, swing, far_offset = _leg_drawer(rng)
    front_hip, hind_hip = on_body(0.58, 0.35), on_body(-0.56, 0.35)
    parts = [
        _Part(RIGHT_LEG, shade(far), leg(hind_hip + far_offset, swing["fh"], True)),
        _Part(RIGHT_ARM, shade(far), leg(front_hip + far_offset, swing["ff"], False)),
        _tail(rng, on_body(-0.9, -0.45), shade),
    ]

    # Body (torso and neck share the "body" id).
    head_r = rng.uniform(0.19, 0.27)
    head_c = on_body(0.8, -0.55) + np.array([rng.uniform(0.08, 0.22), -rng.uniform(0.22, 0.4)])
    neck = _segment(on_body(0.62, -0.25), head_c + np.array([-0.02, head_r * 0.3]), ry * 1.2, head_r * 1.1)
    parts.append(_Part(BODY, shade(1.0), [_ellipse((0, 0), rx, ry, tilt, n=40), neck]))
    if rng.random() < 0.45:
        spot = tuple(float(c) for c in FUR_COLOURS[rng.integers(len(FUR_COLOURS))])
        spots = [
            _ellipse(
                on_body(rng.uniform(-0.7, 0.5), rng.uniform(-0.8, 0.3)),
                rng.uniform(0.06, 0.16),
                rng.uniform(0.05, 0.12),
                rng.uniform(0, 180),
                n=20,
            )
            for _ in range(rng.integers(1, 4))
        ]
        parts.append(_Part(-1, spot, spots, outline=False, mask_label=BODY))

    parts.append(_Part(LEFT_LEG, shade(1.0), leg(hind_hip, swing["nh"], True)))
    parts.append(_Part(LEFT_ARM, shade(1.0), leg(front_hip, swing["nf"], False)))
    return parts + _head(rng, head_c, head_r, shade, far)


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A flat colour, a gradient, stripes, a checkerboard, dots, or sky over ground."""

    def colour() -> np.ndarray:
        hsv = np.uint8([[[rng.integers(0, 180), rng.integers(20, 160), rng.integers(120, 250)]]])
        return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0].astype(np.float64)

    c1, c2 = colour(), colour()
    kind = rng.integers(0, 6)
    if kind == 1:
        # Vertical gradient: blend one column, then repeat it across the width.
        t = np.linspace(0.0, 1.0, height)[:, None]
        column = (c1 * (1 - t) + c2 * t).astype(np.uint8)
        return np.ascontiguousarray(np.broadcast_to(column[:, None, :], (height, width, 3)))
    image = np.empty((height, width, 3), dtype=np.uint8)
    image[:] = c1.astype(np.uint8)
    # The other patterns are two-colour masks; open grids keep their arithmetic small.
    yy, xx = np.ogrid[0:height, 0:width]
    if kind == 2:
        period = rng.integers(8, 32)
        angle = rng.uniform(0, np.pi)
        mask = (xx * np.cos(angle) + yy * np.sin(angle)) // period % 2 == 1
    elif kind == 3:
        period = rng.integers(10, 40)
        mask = (xx // period + yy // period) % 2 == 1
    elif kind == 4:
        period = int(rng.integers(12, 30))
        radius = period * rng.uniform(0.15, 0.35)
        dx, dy = xx % period - period / 2, yy % period - period / 2
        mask = dx * dx + dy * dy < radius * radius
    elif kind == 5:
        mask = np.broadcast_to(yy > height * rng.uniform(0.45, 0.8), (height, width))
    else:
        return image
    image[mask] = c2.astype(np.uint8)
    return image


def _to_fixed(shape: np.ndarray) -> np.ndarray:
    return np.round(shape * (1 << _SHIFT)).astype(np.int32)


def render_sample(
    seed: int,
    index: int,
    min_size: int = DEFAULT_MIN_SIZE,
    max_size: int = DEFAULT_MAX_SIZE,
    facing: str | None = None,
) -> Sample:
    """Draw picture ``index`` of the set made with ``seed``.

    ``facing`` ("left"/"right") overrides the random direction without changing any other
    draw, so ``render_sample(s, k, facing="left")`` is the exact mirror (ids swapped) of
    ``render_sample(s, k, facing="right")``.
    """
    if seed < 0 or index < 0:
        raise ValueError(f"seed and index must be >= 0, got seed={seed}, index={index}")
    if not 16 <= min_size <= max_size:
        raise ValueError(f"need 16 <= min_size <= max_size, got {min_size} and {max_size}")
    rng = np.random.default_rng([seed, index])
    drawn_facing = "right" if rng.random() < 0.5 else "left"
    facing = facing or drawn_facing
    if facing not in ("left", "right"):
        raise ValueError(f"facing must be 'left' or 'right', got {facing!r}")
    width, height = (int(v) for v in rng.integers(min_size, max_size + 1, size=2))

    fur = FUR_COLOURS[rng.integers(len(FUR_COLOURS))] * rng.uniform(0.85, 1.15, size=3)
    parts = _dog_parts(rng, fur)
    outline_colour = tuple(float(c) for c in rng.uniform(10, 45, size=3))

    # Fit the dog into a random share of the picture at a random place.
    all_pts = np.concatenate([s for p in parts for s in p.shapes])
    lo, hi = all_pts.min(axis=0), all_pts.max(axis=0)
    margin = 3.0
    fit = rng.uniform(0.7, 0.95) * min(
        (width - 2 * margin) / (hi[0] - lo[0]), (height - 2 * margin) / (hi[1] - lo[1])
    )
    free = np.array([width, height]) - 2 * margin - (hi - lo) * fit
    offset = margin + rng.uniform(0, 1, size=2) * np.maximum(free, 0) - lo * fit
    thickness = max(1, int(round(fit * rng.uniform(0.012, 0.02))))

    image = _background(rng, height, width)
    label = np.zeros((height, width), dtype=np.uint8)
    # The label map without outlines: where details may go without covering an outline.
    fill = np.zeros((height, width), dtype=np.uint8)
    for part in parts:
        shapes = [_to_fixed(s * fit + offset) for s in part.shapes]
        if part.mask_label >= 0:
            # A picture detail (spot, eye) limited to the part's own fill: the labels stay exact.
            # Only the details' bounding box is copied: whole-image copies would dominate big images.
            corners = np.concatenate(shapes) >> _SHIFT
            x0, y0 = np.maximum(corners.min(axis=0) - 2, 0)
            x1, y1 = np.minimum(corners.max(axis=0) + 3, (width, height))
            if x1 <= x0 or y1 <= y0:
                continue
            layer = image[y0:y1, x0:x1].copy()
            origin = np.array([x0, y0], dtype=np.int32) << _SHIFT
            for s in shapes:
                cv2.fillPoly(layer, [s - origin], part.colour, cv2.LINE_AA, _SHIFT)
                if part.outline:
                    cv2.polylines(layer, [s - origin], True, outline_colour, 1, cv2.LINE_AA, _SHIFT)
            inside = fill[y0:y1, x0:x1] == part.mask_label
            image[y0:y1, x0:x1][inside] = layer[inside]
            continue
        if part.outline:
            # Outline = the shapes widened by `thickness`, drawn first in dark, so the fills
            # cover the seams between a part's own shapes and only the silhouette stays dark.
            for s in shapes:
                cv2.fillPoly(image, [s], outline_colour, cv2.LINE_AA, _SHIFT)
                cv2.polylines(image, [s], True, outline_colour, 2 * thickness, cv2.LINE_AA, _SHIFT)
                cv2.fillPoly(label, [s], part.label, cv2.LINE_8, _SHIFT)
                cv2.polylines(label, [s], True, part.label, 2 * thickness, cv2.LINE_8, _SHIFT)
                cv2.fillPoly(fill, [s], 0, cv2.LINE_8, _SHIFT)
                cv2.polylines(fill, [s], True, 0, 2 * thickness, cv2.LINE_8, _SHIFT)
        for s in shapes:
            cv2.fillPoly(image, [s], part.colour, cv2.LINE_AA, _SHIFT)
            cv2.fillPoly(label, [s], part.label, cv2.LINE_8, _SHIFT)
            cv2.fillPoly(fill, [s], part.label, cv2.LINE_8, _SHIFT)

    if facing == "left":
        # The mirror of a right-facing dog, seen from its right side: near legs become right legs.
        image = np.ascontiguousarray(image[:, ::-1])
        label = DOG.flip_lut()[label[:, ::-1]]
    return Sample(image=image, label=label, facing=facing)


# --------------------------------------------------------------------------- writing
def generate_dataset(
    out_dir: str,
    n_train: int,
    n_val: int,
    n_traintest: int,
    seed: int = 0,
    min_size: int = DEFAULT_MIN_SIZE,
    max_size: int = DEFAULT_MAX_SIZE,
    jpeg_quality: int = DEFAULT_JPEG_QUALITY,
) -> dict[str, list[str]]:
    """Write ``train``/``val``/``trainTest`` splits in the authors' layout; returns the ids per split.

    Images are JPEG (fixed ``jpeg_quality``), labels single-channel PNG. Picture ``k`` (counted
    across the splits in that order, id ``syn_<k>``) is ``render_sample(seed, k, ...)``. A split
    with 0 images is not written at all.
    """
    counts = {"train": n_train, "val": n_val, "trainTest": n_traintest}
    if any(n < 0 for n in counts.values()):
        raise ValueError(f"image counts must be >= 0, got {counts}")
    os.makedirs(out_dir, exist_ok=True)
    ids_per_split: dict[str, list[str]] = {}
    k = 0
    for split in SPLITS:
        if counts[split] == 0:
            continue
        paths = split_paths(out_dir, split)
        os.makedirs(paths.image_dir, exist_ok=True)
        os.makedirs(paths.label_dir, exist_ok=True)
        ids = []
        for _ in range(counts[split]):
            sample = render_sample(seed, k, min_size, max_size)
            name = f"syn_{k:05d}"
            _write(paths.image(name), sample.image, [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)])
            _write(paths.label(name), sample.label, [cv2.IMWRITE_PNG_COMPRESSION, 3])
            ids.append(name)
            k += 1
        with open(paths.id_list, "w", encoding="utf-8") as f:
            f.write("".join(i + "\n" for i in ids))
        ids_per_split[split] = ids
    return ids_per_split


def _write(path: str, array: np.ndarray, params: list[int]) -> None:
    ok, buf = cv2.imencode(os.path.splitext(path)[1], array, params)
    if not ok:
        raise OSError(f"could not encode {path}")
    with open(path, "wb") as f:
        f.write(buf.tobytes())


def contact_sheet(
    samples: list[Sample], cell: int = 128, columns: int = 3, legend: bool = False
) -> np.ndarray:
    """A BGR picture of the samples, each image beside its coloured label map.

    ``legend`` adds a strip naming the colours of the Dog set's classes.
    """
    gap = 6
    rows = (len(samples) + columns - 1) // columns
    width = columns * (2 * cell + 3 * gap) + gap
    height = rows * (cell + gap) + gap
    sheet = np.full((height + (22 if legend else 0), width, 3), 255, np.uint8)
    for i, sample in enumerate(samples):
        h, w = sample.label.shape
        f = cell / max(h, w)
        size = (max(1, round(w * f)), max(1, round(h * f)))
        pictures = (
            cv2.resize(sample.image, size, interpolation=cv2.INTER_AREA),
            cv2.resize(DOG.colorize(sample.label)[:, :, ::-1], size, interpolation=cv2.INTER_NEAREST),
        )
        y = gap + (i // columns) * (cell + gap)
        x = gap + (i % columns) * (2 * cell + 3 * gap)
        for j, pic in enumerate(pictures):
            x0 = x + j * (cell + gap)
            sheet[y : y + size[1], x0 : x0 + size[0]] = pic
    if legend:
        step = (width - gap) // DOG.num_classes
        for c, name in enumerate(DOG.names):
            x = gap + c * step
            colour = tuple(int(v) for v in DOG.colours()[c, ::-1])
            cv2.rectangle(sheet, (x, height + 4), (x + 14, height + 16), colour, -1)
            cv2.rectangle(sheet, (x, height + 4), (x + 14, height + 16), (120, 120, 120), 1)
            cv2.putText(
                sheet,
                f"{c} {name}",
                (x + 18, height + 15),
                cv2.FONT_HERSHEY_SIMPLEX,
                0.32,
                (40, 40, 40),
                1,
                cv2.LINE_AA,
            )
    return sheet


def write_contact_sheet(
    path: str, n: int = 6, seed: int = 0, min_size: int = DEFAULT_MIN_SIZE, max_size: int = DEFAULT_MAX_SIZE
) -> None:
    """Render the first ``n`` pictures of ``seed`` and save their contact sheet as PNG."""
    samples = [render_sample(seed, k, min_size, max_size) for k in range(n)]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    _write(path, contact_sheet(samples, legend=True), [cv2.IMWRITE_PNG_COMPRESSION, 9])


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        formatter_class=DefaultsHelpFormatter,
        description="Write a synthetic cartoon dog dataset in the authors' layout.",
        add_help=add_help,
    )
    parser.add_argument("--out", default=None, help="output data directory (created if missing)")
    parser.add_argument("--train", type=int, default=120, help="number of train images")
    parser.add_argument("--val", type=int, default=30, help="number of val images")
    parser.add_argument(
        "--trainTest",
        "--train-test",
        dest="train_test",
        type=int,
        default=20,
        help="number of trainTest images (held-out training images)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="random seed; the same seed writes the same bytes"
    )
    parser.add_argument(
        "--min-size", type=int, default=DEFAULT_MIN_SIZE, help="smallest image side in pixels"
    )
    parser.add_argument("--max-size", type=int, default=DEFAULT_MAX_SIZE, help="largest image side in pixels")
    parser.add_argument(
        "--contact-sheet",
        default=None,
        metavar="PNG",
        help="also (or only) write a picture of 6 samples beside their coloured labels",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    if args.out is None and args.contact_sheet is None:
        print("error: nothing to do: give --out DIR and/or --contact-sheet PNG", file=sys.stderr)
        return 2
    if args.out is not None:
        start = time.perf_counter()
        ids = generate_dataset(
            args.out,
            args.train,
            args.val,
            args.train_test,
            seed=args.seed,
            min_size=args.min_size,
            max_size=args.max_size,
        )
        n = sum(len(v) for v in ids.values())
        seconds = time.perf_counter() - start
        print(
            f"wrote {n} images to {args.out} ("
            + ", ".join(f"{k} {len(v)}" for k, v in ids.items())
            + f") in {seconds:.2f} s, {n / max(seconds, 1e-9):.0f} images/s"
        )
    if args.contact_sheet is not None:
        write_contact_sheet(
            args.contact_sheet, seed=args.seed, min_size=args.min_size, max_size=args.max_size
        )
        print(f"wrote {args.contact_sheet}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
