"""The one place for the label set: ids, names, palette and the left/right pairs.

Every script, the loader, the metrics and the pictures read these; nothing else hard-codes
a class id.
"""
from __future__ import annotations

import numpy as np

NUM_CLASSES = 8
IGNORE_LABEL = 255

# Names exactly as the authors log them (TensorBoard tags and the evaluation table).
CLASS_NAMES: tuple[str, ...] = (
    "Background", "head", "body", "left_arm", "right_arm", "left_leg", "right_leg", "tail",
)

# "Left" and "right" are the dog's own sides, so a horizontal mirror exchanges these ids.
FLIP_PAIRS: tuple[tuple[int, int], ...] = ((3, 4), (5, 6))


def class_names(num_classes: int = NUM_CLASSES) -> list[str]:
    """The authors' names for the first ``num_classes`` ids; ``class_<i>`` beyond them."""
    return [CLASS_NAMES[i] if i < len(CLASS_NAMES) else f"class_{i}" for i in range(num_classes)]


def flip_permutation(num_classes: int = NUM_CLASSES,
                     flip_pairs: tuple[tuple[int, int], ...] = FLIP_PAIRS) -> list[int]:
    """Index list that maps class channels of a prediction to those of its mirror image."""
    perm = list(range(num_classes))
    for a, b in flip_pairs:
        if a < num_classes and b < num_classes:
            perm[a], perm[b] = b, a
    return perm


def flip_lut(num_classes: int = NUM_CLASSES,
             flip_pairs: tuple[tuple[int, int], ...] = FLIP_PAIRS) -> np.ndarray:
    """A 256-entry uint8 table for label maps: swaps the pairs, keeps 255 and everything else."""
    lut = np.arange(256, dtype=np.uint8)
    lut[:num_classes] = flip_permutation(num_classes, flip_pairs)
    return lut


def palette(n: int = 256) -> np.ndarray:
    """The VOC bit-pattern palette (``get_palette`` style) as an ``n x 3`` uint8 RGB array."""
    pal = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for bit in range(8):
            r |= ((c >> 0) & 1) << (7 - bit)
            g |= ((c >> 1) & 1) << (7 - bit)
            b |= ((c >> 2) & 1) << (7 - bit)
            c >>= 3
        pal[i] = (r, g, b)
    return pal


PALETTE = palette()


def colorize(label: np.ndarray) -> np.ndarray:
    """H x W ids -> H x W x 3 uint8 RGB in the palette (255, ignored, is drawn white)."""
    lut = PALETTE.copy()
    lut[IGNORE_LABEL] = (255, 255, 255)
    return lut[np.asarray(label, dtype=np.uint8)]
