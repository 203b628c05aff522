"""See the data as the network will: each picture beside its label map in the label set's colours.

    python -m dataset.browse DATA_DIR --split train --out browse/ [--num 16] [--augment] [--labels lip]

Writes ``<out>/<id>.png`` per sample: the picture and its coloured label map side by side, a
caption and a legend of the label set (names, colours, mirror classes; 255 white). Plain, it shows
the files as they are. With ``--augment`` it shows what training feeds the network: the loader's
crop after its random scale, rotation and mirror, the ignored border white; mirrored samples say
so in their caption and file name (``<id>_mirrored.png``), so a look at them tells whether the
left/right classes of the set trade places as they should, before hours of training.

The label set is ``--labels``, else ``labels.json`` in DATA_DIR, else the Dog set
(docs/labels.md). Exit status: 0 done; 1 a missing split, an unreadable file or an output folder
that cannot be written (one line naming it); 2 bad arguments or a bad label set.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import zlib

import cv2
import numpy as np

from dataset.datasets import CartoonDataSet
from utils import recipe
from utils.cli import (
    DefaultsHelpFormatter,
    add_label_arguments,
    die,
    output_folder_problem,
    parse_size,
    positive_int,
)
from utils.labels import LabelSet, LabelSetError, check_flags, resolve_label_set
from utils.pictures import legend_picture, write_image

PROG = "python -m dataset.browse"
_GAP, _CAPTION = 6, 22


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        formatter_class=DefaultsHelpFormatter,
        prog=PROG,
        description="Write each sample's picture beside its coloured "
        "label map (optionally after the training augmentation) with a legend.",
    )
    parser.add_argument(
        "data_dir",
        help="dataset root holding <split>_id.txt, <split>_images/, "
        "<split>_segmentations/ (and optionally labels.json)",
    )
    parser.add_argument("--split", default="train", help="split to browse")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for the pictures (created)")
    parser.add_argument("--num", type=positive_int, default=16, help="samples: the first N ids of the split")
    parser.add_argument(
        "--augment",
        action="store_true",
        help="show the training augmentation (random scale, rotation and mirror, as the "
        "loader draws them) in the training crop, mirrored samples marked",
    )
    parser.add_argument(
        "--input-size",
        type=parse_size,
        default=recipe.INPUT_SIZE,
        metavar="H,W",
        help="crop of --augment, height,width: the training crop",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the --augment draws")
    add_label_arguments(parser, stored=False)
    return parser


def _caption(width: int, text: str) -> np.ndarray:
    width = max(width, cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.45, 1)[0][0] + 8)
    strip = np.full((_CAPTION, width, 3), 255, np.uint8)
    cv2.putText(strip, text, (4, 15), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (30, 30, 30), 1, cv2.LINE_AA)
    return strip


def _stack(rows: list[np.ndarray]) -> np.ndarray:
    """Rows of BGR pictures, left-aligned on white."""
    width = max(r.shape[1] for r in rows)
    padded = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    return np.concatenate(padded, axis=0)


def sample_picture(image_bgr: np.ndarray, label: np.ndarray, label_set: LabelSet, caption: str) -> np.ndarray:
    """``[picture | coloured label]``, the caption under it, then the legend."""
    colour = label_set.colorize(label)[:, :, ::-1]
    gap = np.full((image_bgr.shape[0], _GAP, 3), 255, np.uint8)
    pair = np.concatenate([image_bgr, gap, colour], axis=1)
    return _stack([pair, _caption(pair.shape[1], caption), legend_picture(label_set, ignore=True)])


def seed_sample(seed: int, index: int) -> None:
    """The loader draws from the global Python and numpy generators: one stream per (seed, sample)."""
    key = f"{seed}:{index}"
    random.seed(key)
    np.random.seed(zlib.crc32(key.encode()))


def browse(
    data_dir: str,
    split: str,
    out: str,
    label_set: LabelSet,
    *,
    num: int = 16,
    augment: bool = False,
    input_size: tuple[int, int] = recipe.INPUT_SIZE,
    seed: int = 0,
) -> list[tuple[str, bool]]:
    """Write the pictures; returns ``(path, mirrored)`` per sample. Raises OSError / ValueError naming
    a file that is missing or cannot be read or written."""

    dataset = CartoonDataSet(data_dir, split, crop_size=input_size, label_set=label_set)
    dataset.is_train = augment  # the augmented path reads labels and draws, whatever the split
    written = []
    for index in range(min(num, len(dataset))):
        name = dataset.ids[index]
        if augment:
            seed_sample(seed, index)
            crop, crop_label, _, meta = dataset[index]
            mirrored = bool(meta["flip"])
            caption = (
                f"{name}  {'MIRRORED' if mirrored else 'not mirrored'}, rotation "
                f"{meta['rotation']:+.0f} deg, {crop.shape[1]}x{crop.shape[0]} crop"
            )
            picture = sample_picture(crop, crop_label.astype(np.uint8), label_set, caption)
        else:
            mirrored = False
            image, label = dataset.read_image(index), dataset.read_label(index)
            if label.shape != image.shape[:2]:
                raise ValueError(
                    f"{dataset.label_path(index)}: label is {label.shape[1]}x{label.shape[0]} "
                    f"but its picture {image.shape[1]}x{image.shape[0]} (W x H)"
                )
            foreign = sorted(set(np.unique(label).tolist()) - set(range(label_set.num_classes)) - {255})
            caption = f"{name}  {image.shape[1]}x{image.shape[0]}" + (
                f"  ids not in the label set: {foreign}" if foreign else ""
            )
            picture = sample_picture(image, label, label_set, caption)
        path = os.path.join(out, f"{name}{'_mirrored' if mirrored else ''}.png")
        write_image(path, picture)
        written.append((path, mirrored))
    return written


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    try:
        label_set = resolve_label_set(args.labels, args.data_dir)
        check_flags(label_set, args.num_classes)
    except LabelSetError as exc:
        die(PROG, str(exc), 2)
    problem = output_folder_problem(args.out)
    if problem:
        die(PROG, problem, 1)
    try:
        written = browse(
            args.data_dir,
            args.split,
            args.out,
            label_set,
            num=args.num,
            augment=args.augment,
            input_size=args.input_size,
            seed=args.seed,
        )
    except (OSError, ValueError) as exc:
        die(PROG, str(exc).splitlines()[0] if str(exc) else type(exc).__name__, 1)
    mirrored = sum(m for _, m in written)
    what = f", {mirrored} of them mirrored (file names end in _mirrored)" if args.augment else ""
    print(
        f"wrote {len(written)} pictures of {args.data_dir} split {args.split!r} to {args.out}{what}; "
        f"label set: {label_set.summary()}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
