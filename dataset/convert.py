"""Convert annotations from the tools people label with into the Dog layout, then check the result.

    python -m dataset.convert export/ --from cvat-mask --out data/robots
    python -m dataset.convert annotations.json --from coco --images pictures/ --out data/robots
    python -m dataset.convert labelme_folder/ --out data/robots          # --from auto: says what it found

Writes ``DATA_DIR/{split}_images/<id>.jpg|.png`` (the pictures' own bytes: a JPEG stays that JPEG,
a PNG that PNG; other files become lossless PNGs), ``{split}_segmentations/<id>.png`` (8-bit ids),
``{split}_id.txt`` and ``labels.json`` (names, left/right pairs and colours from the source, or
``--labels``), runs ``dataset.check`` on it and prints its summary. Everything is built in a
temporary folder beside DATA_DIR and renamed at the end: on any error nothing is left behind.
Formats, what the converter decides and the labelling loop: docs/annotations.md.

Exit status: 0 converted and usable; 1 a problem in the source or in writing (one line naming the
file and the entry); 2 a bad command line (an unknown or undetectable format, a DATA_DIR that is
not empty, a bad --split or label set); 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed

import cv2
from tqdm import tqdm

from dataset.check import check_dataset
from dataset.formats import coco, labelme, labelstudio, masks
from dataset.formats.common import Entry, PaintContext, Source, Tally, load_json, picture_bytes, unique_names
from dataset.formats.names import ConvertError, build_label_set
from dataset.layout import LABEL_EXT, split_paths
from utils.cli import DefaultsHelpFormatter, positive_int
from utils.files import write_error, write_json_atomic
from utils.labels import IGNORE_LABEL, LABELS_FILE, LabelSet, LabelSetError, load_label_set

PROG = "python -m dataset.convert"
FORMATS = ("auto", "palette", "cvat-mask", "coco", "labelme", "labelstudio")
DEFAULT_SPLIT = "train=0.8,val=0.2"
# Subset names tools use for the layout's splits, by their lower case (CVAT: "Train", "Validation").
_SPLIT_NAMES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "validation": "val",
    "valid": "val",
    "test": "test",
    "testing": "test",
}


# --------------------------------------------------------------------------------------------
# Which format
# --------------------------------------------------------------------------------------------


def detect(src: str) -> tuple[str, str]:
    """The format of ``src`` and what gave it away; ConvertError (exit 2) when none or several fit."""
    if os.path.isfile(src):
        data = load_json(src) if src.lower().endswith(".json") else None
        for name, module in (("coco", coco), ("labelstudio", labelstudio), ("labelme", labelme)):
            if data is not None and module.looks_like(data):
                return name, {
                    "coco": "a JSON object with images, annotations and categories",
                    "labelstudio": "a JSON list of tasks with data",
                    "labelme": "a JSON object with shapes",
                }[name]
        raise ConvertError(f"{src}: neither a COCO, Label Studio nor LabelMe JSON file: give --from", 2)
    if not os.path.isdir(src):
        raise ConvertError(f"{src}: no such file or folder", 2)
    found: list[tuple[str, str]] = []
    jsons = labelme.json_files(src)
    if any(labelme.looks_like(load_json(p)) for p in jsons[:3]):
        found.append(("labelme", f"{len(jsons)} .json files with shapes"))
    cocos = coco.coco_files(src)
    if any(coco.looks_like(load_json(p)) for p in cocos[:3]):
        found.append(("coco", f"COCO files {', '.join(cocos[:3])}"))
    pngs = masks.mask_files(src)
    if pngs and (
        os.path.isdir(os.path.join(src, masks.MASK_FOLDER))
        or os.path.isfile(os.path.join(src, masks.LABELMAP))
    ):
        mode = masks.png_mode(pngs[0])
        if mode in ("P", "L"):
            found.append(("palette", f"{mode}-mode masks such as {pngs[0]}"))
        elif mode in ("RGB", "RGBA"):
            found.append(("cvat-mask", f"colour masks such as {pngs[0]}"))
    if len(found) == 1:
        return found[0]
    if not found:
        raise ConvertError(
            f"{src}: found no annotations of a known format ({', '.join(FORMATS[1:])}): give --from", 2
        )
    raise ConvertError(f"{src}: could be {' or '.join(f'{f} ({why})' for f, why in found)}: give --from", 2)


def read_source(fmt: str, src: str, args: argparse.Namespace, given: LabelSet | None, workdir: str) -> Source:
    if fmt in ("palette", "cvat-mask"):
        if not os.path.isdir(src):
            raise ConvertError(f"{src}: --from {fmt} reads a folder", 2)
        read = masks.read_palette if fmt == "palette" else masks.read_cvat
        return read(src, images=args.images, given=given)
    if fmt == "coco":
        return coco.read(src, images=args.images)
    if fmt == "labelme":
        return labelme.read(src, images=args.images, line_width=args.line_width, workdir=workdir)
    if not os.path.isfile(src):
        raise ConvertError(f"{src}: --from labelstudio reads the export's JSON file", 2)
    return labelstudio.read(src, images=args.images)


def label_file_beside(src: str) -> str | None:
    """A labels.json that came with the source: in the source folder, or beside the source file."""
    folder = src if os.path.isdir(src) else os.path.dirname(os.path.abspath(src))
    path = os.path.join(folder, LABELS_FILE)
    return path if os.path.isfile(path) else None


# --------------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------------


def parse_split(text: str) -> list[tuple[str, float]]:
    """``train=0.8,val=0.2`` -> ``[("train", 0.8), ("val", 0.2)]``; fractions add up to 1 (argparse)."""
    parts = []
    for item in str(text).split(","):
        name, _, value = item.partition("=")
        try:
            fraction = float(value)
        except ValueError:
            fraction = -1.0
        if not name.strip() or not 0 <= fraction <= 1 or "/" in name:
            raise argparse.ArgumentTypeError(
                f"expected name=fraction,... such as {DEFAULT_SPLIT}, got {text!r}"
            )
        parts.append((name.strip(), fraction))
    if abs(sum(f for _, f in parts) - 1.0) > 1e-6 or len({n for n, _ in parts}) != len(parts):
        raise argparse.ArgumentTypeError(f"the fractions of distinct splits must add up to 1, got {text!r}")
    return parts


def hashed_split(name: str, fractions: list[tuple[str, float]], seed: int) -> str:
    """The split of picture ``name``: where its hash falls among the cumulative fractions. A picture keeps
    its split when others are added, and the same seed gives the same splits on any machine."""
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    total = 0.0
    for split, fraction in fractions:
        total += fraction
        if u < total:
            return split
    return fractions[-1][0]


def assign_splits(
    entries: list[Entry], split: list[tuple[str, float]] | None, seed: int
) -> tuple[dict[str, list[Entry]], str]:
    """Entries by split, and how the splits were made: the source's when it has them for every picture and
    ``--split`` is not given, else by hash."""
    by_split: dict[str, list[Entry]] = {}
    if split is None and all(e.split for e in entries):
        for e in entries:
            by_split.setdefault(_SPLIT_NAMES.get(e.split.lower(), e.split), []).append(e)
        return by_split, "the source's splits"
    fractions = split or parse_split(DEFAULT_SPLIT)
    for e in entries:
        by_split.setdefault(hashed_split(e.name, fractions, seed), []).append(e)
    text = ",".join(f"{n}={f:g}" for n, f in fractions)
    return by_split, f"{'--split' if split else 'the default split'} {text}, by a hash of each id"


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def _write(path: str, data: bytes) -> None:
    try:
        with open(path, "wb") as f:
            f.write(data)
    except OSError as exc:  # a failed write() names no file
        raise OSError(exc.errno, exc.strerror, exc.filename or path) from None


def write_entry(entry: Entry, root: str, split: str, context: PaintContext) -> None:
    data, ext, height, width = picture_bytes(entry.picture, context.tally)
    label = entry.paint(height, width, context)
    paths = split_paths(root, split)
    ok, png = cv2.imencode(LABEL_EXT, label)
    if not ok:
        raise ConvertError(f"{entry.where}: could not encode the label map")
    _write(os.path.join(paths.image_dir, entry.name + ext), data)
    _write(paths.label(entry.name), png.tobytes())


def convert(args: argparse.Namespace) -> int:
    out = os.path.abspath(args.out)
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        raise ConvertError(f"{args.out}: exists and is not an empty folder: convert into a new one", 2)
    if not os.path.exists(args.src):
        raise ConvertError(f"{args.src}: no such file or folder", 2)
    if args.images and not os.path.isdir(args.images):
        raise ConvertError(f"--images {args.images}: no such folder", 2)
    given_path = args.labels or label_file_beside(args.src)
    try:
        given = load_label_set(given_path) if given_path else None
    except LabelSetError as exc:
        raise ConvertError(str(exc), 2) from None
    fmt, why = (args.from_, "--from") if args.from_ != "auto" else detect(args.src)
    if args.from_ == "auto":
        print(f"format: {fmt} ({why})")
    start = time.perf_counter()
    parent = os.path.dirname(out)
    try:
        os.makedirs(parent, exist_ok=True)
        work = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.converting-", dir=parent)
    except OSError as exc:
        raise ConvertError(str(write_error(out, exc, "nothing was written"))) from None
    try:
        scratch = os.path.join(work, ".source")
        os.mkdir(scratch)
        source = read_source(fmt, args.src, args, given, scratch)
        entries = unique_names(source.entries)
        if not entries:
            raise ConvertError(f"{args.src}: no annotated pictures")
        label_set, ids, lines = build_label_set(
            source.names,
            source.colours,
            args.src,
            given=given,
            flip_pairs=not args.no_flip_pairs,
            background=source.background,
        )
        if given_path and not args.labels:
            lines.insert(0, f"labels: {given_path} (beside the source; --labels to use another)")
        for line in [*lines, *source.notes]:
            print(line)
        by_split, how = assign_splits(entries, args.split, args.split_seed)
        print(f"splits: {', '.join(f'{s} {len(e)}' for s, e in by_split.items())} ({how})")
        tally = Tally()
        context = PaintContext(ids, IGNORE_LABEL if args.unlabelled == "ignore" else 0, tally)
        for split, split_entries in by_split.items():
            paths = split_paths(work, split)
            os.makedirs(paths.image_dir)
            os.makedirs(paths.label_dir)
            _write(paths.id_list, "".join(e.name + "\n" for e in split_entries).encode("utf-8"))
        write_json_atomic(label_set.to_dict(), os.path.join(work, LABELS_FILE))
        jobs = [(e, s) for s, es in by_split.items() for e in es]
        pool = ThreadPoolExecutor(max_workers=args.workers or min(8, 2 * (os.cpu_count() or 1)))
        try:
            futures = [pool.submit(write_entry, e, work, s, context) for e, s in jobs]
            bar = tqdm(
                total=len(jobs), desc="converting", unit="img", disable=args.no_progress, dynamic_ncols=True
            )
            with bar:
                for future in as_completed(futures):
                    future.result()
                    bar.update()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)  # on an error, stop at once: the rest is removed
        if tally.colours:
            lines = tally.colour_lines()
            for line in lines[:5]:
                print(f"{PROG}: error: {line}", file=sys.stderr)
            raise ConvertError(
                f"{len(lines)} colour(s) of the masks are no class: add them to the label map"
                f"{' (and ' + str(len(lines) - 5) + ' more)' if len(lines) > 5 else ''}; nothing written"
            )
        for line in tally.lines():
            print(line)
        shutil.rmtree(scratch)
        report = check_dataset(work, list(by_split), label_set=label_set)
        shown = [line.replace(work, out) for line in (*report.problems, *report.warnings)]
        for line in shown:
            print(line)
        if not report.ok:
            raise ConvertError(
                f"the converted data did not pass the check ({report.total_problems} problem(s) "
                f"above); nothing written"
            )
        if os.path.isdir(out):
            os.rmdir(out)
        os.rename(work, out)
    except OSError as exc:  # a full or read-only disk: the file named as it would have been
        shutil.rmtree(work, ignore_errors=True)
        target = str(exc.filename or args.out).replace(work, out)
        raise ConvertError(str(write_error(target, exc, "nothing was written"))) from None
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    print(report.summary.replace(work, out))
    print(
        f"OK: {sum(len(e) for e in by_split.values())} pictures converted into {out} in "
        f"{time.perf_counter() - start:.1f} s; train with: python train.py --data-dir {args.out}"
    )
    return 0


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        formatter_class=DefaultsHelpFormatter,
        description="Convert annotations (VOC palette PNGs, CVAT colour masks, COCO, LabelMe, Label Studio) "
        "into the Dog layout with a labels.json, and check the result (docs/annotations.md).",
    )
    parser.add_argument("src", metavar="SRC", help="the export: a folder, or a COCO / Label Studio JSON file")
    parser.add_argument(
        "--from",
        dest="from_",
        choices=FORMATS,
        default="auto",
        help="the source's format; auto detects it where that is unambiguous, and says what it found",
    )
    parser.add_argument(
        "--out", required=True, metavar="DATA_DIR", help="the new data folder (must not exist, or be empty)"
    )
    parser.add_argument(
        "--images",
        metavar="DIR",
        default=None,
        help="the pictures' folder; default: the format's own place (JPEGImages/, images/ beside "
        "a COCO or Label Studio file, LabelMe's imagePath)",
    )
    parser.add_argument(
        "--labels",
        default=None,
        metavar="NAME|PATH",
        help="use this label set (a preset or a labels.json) and match the source's class names to "
        "it; default: a labels.json in or beside SRC, else the source's own classes",
    )
    parser.add_argument(
        "--no-flip-pairs",
        action="store_true",
        help="do not pair left/right classes by their names (a mirror then swaps nothing)",
    )
    parser.add_argument(
        "--split",
        type=parse_split,
        default=None,
        metavar="NAME=FRACTION,...",
        help=f"split the pictures by a hash of their ids; default: the source's splits where it "
        f"has them, else {DEFAULT_SPLIT}",
    )
    parser.add_argument("--split-seed", type=int, default=0, help="seed of the hash that --split uses")
    parser.add_argument(
        "--unlabelled",
        choices=("background", "ignore"),
        default="background",
        help="pixels no shape covers (coco, labelme, labelstudio): background (0), or ignore (255: "
        "no loss, not scored)",
    )
    parser.add_argument(
        "--line-width",
        type=positive_int,
        default=10,
        help="width in pixels of LabelMe's line and linestrip shapes (LabelMe's own export: 10)",
    )
    parser.add_argument(
        "--workers",
        type=positive_int,
        default=None,
        help="threads decoding, drawing and writing (default: 2 per core, at most 8)",
    )
    parser.add_argument("--no-progress", action="store_true", help="do not show the progress bar")
    return parser


def get_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    return get_args_parser().parse_args(argv)


def main(args: argparse.Namespace) -> int:
    try:
        return convert(args)
    except ConvertError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return exc.code
    except OSError as exc:  # a folder or file the converter makes, on a full or read-only disk
        print(
            f"{PROG}: error: {write_error(exc.filename or args.out, exc, 'nothing was written')}",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; nothing written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main(get_arguments()))
