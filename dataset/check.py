"""Check a data directory before training on it: every problem, each naming its file.

    python -m dataset.check dataset/Cartoon_sketches/Dog
    python -m dataset.check DATA_DIR --splits train val --labels lip

Looks for: missing folders or id lists, empty or duplicated ids, ids without an image or a
label, empty (0-byte) or undecodable files, images that are not 3-channel colour (grayscale,
alpha), labels that are not single-channel 8-bit ids (colour or palette PNGs: OpenCV reads a
palette PNG as its colours, not its indices), image/label size mismatches and label ids the
label set does not have (not ``0..num_classes-1`` nor 255). Prints the problems one per line,
one warning naming the classes of the set that no label uses, and a summary line (images per split,
label pixels per class, by name) and exits 0 only when the data is usable.

The label set is ``--labels``, else ``labels.json`` in the data folder, else the Dog set
(docs/labels.md); a bad one is one line and exit status 2.

Every file is decoded in full (that is the only way to know it decodes), in a thread pool:
OpenCV releases the GIL while decoding, so the threads use all cores.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import cv2
import numpy as np

from dataset.layout import EVALUATION_SPLITS, TRAINING_SPLIT, split_paths, split_present
from utils.cli import DefaultsHelpFormatter, add_label_arguments, die
from utils.labels import IGNORE_LABEL, LabelSet, LabelSetError, check_flags, resolve_label_set

PROG = "python -m dataset.check"
DEFAULT_SPLITS = (TRAINING_SPLIT, *EVALUATION_SPLITS)
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_PALETTE = 3  # IHDR colour type of an indexed-colour PNG


@dataclass
class CheckReport:
    """What :func:`check_dataset` found.

    ``ok`` is True when there is no problem at all; ``problems`` holds at most
    ``max_problems`` one-line messages (``total_problems`` counts all of them); ``warnings``
    (not problems) names the classes of the label set that no checked label uses; ``summary``
    is one line; ``counts`` holds ``images`` (split -> number of ids), ``pixels`` (class
    name -> label pixels over all checked splits) and ``ignored`` (pixels labelled 255).
    """

    ok: bool
    problems: list[str]
    summary: str
    counts: dict = field(default_factory=dict)
    total_problems: int = 0
    warnings: list[str] = field(default_factory=list)

    def failure_lines(self, prog: str, data_dir: str, splits: list[str]) -> list[str]:
        """What a script prints on stderr when the folder fails the check (train.py and evaluate.py):
        the error, the problems kept, how many more there are and how to list them, the summary."""
        lines = [f"{prog}: error: {data_dir} failed the dataset check (splits {', '.join(splits)}):"]
        lines += [f"  {problem}" for problem in self.problems]
        hidden = self.total_problems - len(self.problems)
        if hidden > 0:
            listed = f"python -m dataset.check {data_dir} --splits {' '.join(splits)}"
            lines.append(f"  ... and {hidden} more ({listed})")
        return lines + ([self.summary] if self.summary else [])


@dataclass
class _Item:
    split: str
    name: str
    image_path: str | None  # None when the split has no image folder (reported once)
    label_path: str | None


class _Problems:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.lines: list[str] = []
        self.total = 0

    def add(self, line: str) -> None:
        self.total += 1
        if len(self.lines) < self.limit:
            self.lines.append(line)


def _read_picture(path: str, what: str, problems: list[str]) -> tuple[bytes, np.ndarray] | None:
    """The file's bytes and its decoded picture, or None with the problem noted."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        problems.append(f"{what} missing: {path}")
        return None
    except OSError as e:
        problems.append(f"{what} unreadable ({e.strerror}): {path}")
        return None
    if not data:
        problems.append(f"{what} is an empty file (0 bytes): {path}")
        return None
    picture = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if picture is None:
        problems.append(f"{what} cannot be decoded (corrupt or not an image): {path}")
        return None
    return data, picture


def _check_item(item: _Item, label_set: LabelSet, ignore_label: int) -> tuple[list[str], np.ndarray | None]:
    """Problems of one id, and the histogram of its label values (None when unusable)."""
    problems: list[str] = []
    image_shape = None
    if item.image_path is not None:
        read = _read_picture(item.image_path, "image", problems)
        if read is not None:
            image = read[1]
            image_shape = image.shape[:2]
            channels = 1 if image.ndim == 2 else image.shape[2]
            if channels != 3:
                kind = {1: "grayscale", 2: "grayscale with alpha", 4: "colour with alpha"}.get(
                    channels, "other"
                )
                problems.append(
                    f"image has {channels} channel(s) ({kind}), expected 3-channel colour: {item.image_path}"
                )
            if image.dtype != np.uint8:
                problems.append(f"image is {image.dtype}, expected 8-bit: {item.image_path}")

    histogram = None
    if item.label_path is not None:
        read = _read_picture(item.label_path, "label", problems)
        if read is not None:
            data, label = read
            if data[:8] == _PNG_SIGNATURE and len(data) > 25 and data[25] == _PNG_PALETTE:
                problems.append(
                    f"label is a palette PNG (OpenCV reads its colours, not its ids); convert the masks with "
                    f"`python -m dataset.convert SRC --from palette --out NEW_DIR` (docs/annotations.md): "
                    f"{item.label_path}"
                )
            elif label.ndim != 2 or label.dtype != np.uint8:
                channels = 1 if label.ndim == 2 else label.shape[2]
                fix = (
                    "; colour masks convert with "
                    "`python -m dataset.convert SRC --from cvat-mask --out NEW_DIR` (docs/annotations.md)"
                    if channels in (3, 4)
                    else ""
                )
                problems.append(
                    f"label is {channels}-channel {label.dtype}, expected single-channel "
                    f"8-bit ids{fix}: {item.label_path}"
                )
            else:
                if image_shape is not None and label.shape != image_shape:
                    problems.append(
                        f"size mismatch: label {label.shape[1]}x{label.shape[0]} but image "
                        f"{image_shape[1]}x{image_shape[0]} (W x H): {item.label_path}"
                    )
                histogram = np.bincount(label.ravel(), minlength=256)
                n = label_set.num_classes
                bad = [int(v) for v in np.flatnonzero(histogram) if v >= n and v != ignore_label]
                if bad:
                    problems.append(
                        f"label ids {bad} are not in the label set ({label_set.describe()}: ids "
                        f"0..{n - 1}, {ignore_label} ignored): {item.label_path}"
                    )
    return problems, histogram


def _read_split(root: str, split: str, problems: _Problems) -> list[_Item]:
    paths = split_paths(root, split)
    list_path, image_dir, label_dir = paths
    have_images, have_labels = os.path.isdir(image_dir), os.path.isdir(label_dir)
    if not have_images:
        problems.add(f"image folder missing: {image_dir}")
    if not have_labels:
        problems.add(f"label folder missing: {label_dir}")
    if not os.path.isfile(list_path):
        problems.add(f"id list missing: {list_path}")
        return []

    first_line: dict[str, int] = {}
    with open(list_path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, start=1):
            name = line.strip()
            if not name:
                continue
            if name in first_line:
                problems.add(f"duplicate id '{name}' (lines {first_line[name]} and {number}): {list_path}")
            else:
                first_line[name] = number
    if not first_line:
        problems.add(f"id list holds no ids: {list_path}")
    return [
        _Item(
            split,
            name,
            paths.image(name) if have_images else None,
            paths.label(name) if have_labels else None,
        )
        for name in first_line
    ]


def _human(n: int) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


def check_dataset(
    root: str,
    splits: tuple[str, ...] | list[str] | None = None,
    label_set: LabelSet | None = None,
    ignore_label: int = IGNORE_LABEL,
    max_problems: int = 50,
    workers: int | None = None,
) -> CheckReport:
    """Check the splits of a data directory (layout: docs/reference.md section 2) against ``label_set``
    (default: ``<root>/labels.json`` if there is one, else the Dog set); report every problem.

    ``splits`` given are all required. None applies training's rule (``dataset.layout``): train in
    full, and val and trainTest where their id lists exist (one warning each where not)."""
    root = str(root)
    skipped: list[str] = []
    if splits is None:
        splits = [TRAINING_SPLIT] + [s for s in EVALUATION_SPLITS if split_present(root, s)]
        skipped = [s for s in EVALUATION_SPLITS if s not in splits and os.path.isdir(root)]
    label_set = label_set or resolve_label_set(data_dir=root)
    num_classes = label_set.num_classes
    problems = _Problems(max_problems)
    images: dict[str, int] = {}
    pixels = np.zeros(256, dtype=np.int64)
    if not os.path.isdir(root):
        problems.add(f"data directory missing: {root}")
        items: list[_Item] = []
    else:
        items = []
        for split in splits:
            split_items = _read_split(root, split, problems)
            images[split] = len(split_items)
            items.extend(split_items)

    workers = workers or min(8, 2 * (os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(lambda it: _check_item(it, label_set, ignore_label), items)
        for item_problems, histogram in results:
            for line in item_problems:
                problems.add(line)
            if histogram is not None:
                pixels += histogram

    names = label_set.names
    unused = [f"{names[c]} ({c})" for c in range(num_classes) if pixels[c] == 0]
    warnings = [
        f"warning: {split_paths(root, s).id_list} not found: split {s!r} is not checked "
        f"(training does not evaluate it either)"
        for s in skipped
    ] + (
        [
            f"warning: no label of {', '.join(images) or 'the splits'} uses class(es) "
            f"{', '.join(unused)} of the label set ({label_set.describe()}): a wrong label set, or "
            f"classes the network will never learn"
        ]
        if unused and pixels.sum()
        else []
    )
    counts = {
        "images": images,
        "pixels": {names[c]: int(pixels[c]) for c in range(num_classes)},
        "ignored": int(pixels[ignore_label]),
    }
    total = max(int(pixels.sum()), 1)
    per_split = ", ".join(f"{s} {n}" for s, n in images.items())
    per_class = ", ".join(
        f"{names[c]} {_human(int(pixels[c]))} ({100 * pixels[c] / total:.1f}%)" for c in range(num_classes)
    )
    summary = (
        f"{root}: {sum(images.values())} images ({per_split or 'no splits read'}); label pixels: "
        f"{per_class}, ignore {_human(int(pixels[ignore_label]))}; "
        f"{problems.total} problem{'s' if problems.total != 1 else ''}"
    )
    return CheckReport(
        ok=problems.total == 0,
        problems=problems.lines,
        summary=summary,
        counts=counts,
        total_problems=problems.total,
        warnings=warnings,
    )


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        formatter_class=DefaultsHelpFormatter,
        prog=PROG,
        add_help=add_help,
        description="Check a parsing data directory (the Dog dataset's layout) before training on it.",
    )
    parser.add_argument(
        "data_dir",
        help="data directory holding <split>_id.txt, <split>_images/, "
        "<split>_segmentations/ (and optionally labels.json)",
    )
    parser.add_argument(
        "--splits",
        nargs="+",
        default=None,
        help="splits to check, all required (default: train, and val and trainTest where their id "
        "lists exist, as training reads them)",
    )
    add_label_arguments(parser, stored=False)
    parser.add_argument("--ignore-label", type=int, default=IGNORE_LABEL, help="label id that is not scored")
    parser.add_argument("--max-problems", type=int, default=50, help="print at most this many problems")
    parser.add_argument(
        "--workers", type=int, default=None, help="reader threads (default: 2 per core, at most 8)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    if not 0 <= args.ignore_label <= 255:
        parser.error(
            f"argument --ignore-label: expected 0..255 (labels are 8-bit PNGs), got {args.ignore_label}"
        )
    try:
        label_set = resolve_label_set(args.labels, args.data_dir)
        check_flags(label_set, args.num_classes, args.ignore_label)
    except LabelSetError as exc:
        die(PROG, str(exc), 2)
    start = time.perf_counter()
    print(f"label set: {label_set.summary()}")
    report = check_dataset(
        args.data_dir,
        args.splits,
        label_set=label_set,
        ignore_label=args.ignore_label,
        max_problems=args.max_problems,
        workers=args.workers,
    )
    seconds = time.perf_counter() - start
    for line in report.problems:
        print(line)
    for line in report.warnings:
        print(line)
    if report.total_problems > len(report.problems):
        print(f"... and {report.total_problems - len(report.problems)} more problems (raise --max-problems)")
    print(report.summary)
    if report.ok:
        print(f"OK: the data is usable (checked in {seconds:.2f} s)")
        return 0
    print(f"NOT USABLE: fix the {report.total_problems} problem(s) above (checked in {seconds:.2f} s)")
    return 1


if __name__ == "__main__":
    sys.exit(main())
