"""Mask pictures: VOC-style palette PNGs (``palette``) and CVAT's colour masks (``cvat-mask``).

Both come in the Pascal VOC layout, or as plain folders::

    SRC/labelmap.txt                    name:r,g,b:parts:actions, one class a line (CVAT; optional for VOC)
    SRC/ImageSets/Segmentation/*.txt    one id a line: the splits (default.txt: none)
    SRC/SegmentationClass/<id>.png      the masks (else the PNGs in SRC itself)
    SRC/JPEGImages/<id>.jpg             the pictures (else --images DIR)

``palette``: a P-mode PNG's palette indices are the ids (an 8-bit grayscale PNG's values too); 255
stays "ignored" (VOC's border); the names are the label map's lines in order, or ``--labels``.
``cvat-mask``: every colour is a class of the label map (CVAT's "Segmentation mask 1.1" export;
background black), or of ``--labels``'s palette; a colour in neither stops the conversion with one
line naming it, its pixel count and its first files. Writing (``cvat-mask``): the label map in the
label set's colours, importable into CVAT as "Segmentation mask 1.1" (zipped).
"""

from __future__ import annotations

import os

import numpy as np

from dataset.formats.common import Entry, PaintContext, PictureFinder, Source, stem
from dataset.formats.names import ConvertError, read_labelmap
from utils.labels import IGNORE_LABEL, LabelSet
from utils.pictures import write_image

LABELMAP = "labelmap.txt"
MASK_FOLDER = "SegmentationClass"
PICTURE_FOLDER = "JPEGImages"
LIST_FOLDER = os.path.join("ImageSets", "Segmentation")


def mask_folder(src: str) -> str:
    inner = os.path.join(src, MASK_FOLDER)
    return inner if os.path.isdir(inner) else src


def mask_files(src: str) -> list[str]:
    folder = mask_folder(src)
    return sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.lower().endswith(".png"))


def png_mode(path: str) -> str | None:
    from PIL import Image, UnidentifiedImageError  # Pillow: reading only; the deployment writes with OpenCV

    try:
        with Image.open(path) as image:
            return image.mode
    except (OSError, UnidentifiedImageError):
        return None


def _open(path: str):
    from PIL import Image, UnidentifiedImageError  # Pillow: reading only; the deployment writes with OpenCV

    try:
        image = Image.open(path)
        image.load()
        return image
    except FileNotFoundError:
        raise ConvertError(f"{path}: mask not found") from None
    except (OSError, UnidentifiedImageError) as exc:
        raise ConvertError(f"{path}: cannot read the mask: {exc}") from None


def _splits(src: str) -> dict[str, list[str]] | None:
    folder = os.path.join(src, LIST_FOLDER)
    if not os.path.isdir(folder):
        return None
    lists: dict[str, list[str]] = {}
    for f in sorted(os.listdir(folder)):
        if f.endswith(".txt"):
            with open(os.path.join(folder, f), encoding="utf-8") as handle:
                lists[f[:-4]] = [line.strip() for line in handle if line.strip()]
    if "train" in lists and "val" in lists:
        lists.pop("trainval", None)  # VOC's union of the two
    return lists or None


def _entries(src: str, images: str | None, painter) -> tuple[list[Entry], list[str]]:
    folder = mask_folder(src)
    finder = PictureFinder([images] if images else [os.path.join(src, PICTURE_FOLDER)])
    if not finder.folders:
        raise ConvertError(f"{src}: no {PICTURE_FOLDER}/ folder with the pictures: give --images DIR", code=2)
    lists = _splits(src)
    notes = []
    if lists is None:
        named = [(stem(p), None) for p in mask_files(src)]
    else:
        named = [
            (name, None if split == "default" else split) for split, ids in lists.items() for name in ids
        ]
        listed = {name for name, _ in named}
        extra = [p for p in mask_files(src) if stem(p) not in listed]
        if extra:
            notes.append(
                f"note: {len(extra)} mask(s) not in any list of {os.path.join(src, LIST_FOLDER)} skipped"
            )
    if not named:
        raise ConvertError(f"{src}: no masks (.png) in {folder}")
    entries = []
    for name, split in named:
        mask = os.path.join(folder, name + ".png")
        if not os.path.isfile(mask):
            raise ConvertError(f"{mask}: mask missing for the listed id {name!r}")
        picture = finder.find(name, by_stem=True)
        if picture is None:
            raise ConvertError(f"{mask}: no picture {name}.* in {finder.describe()}")
        entries.append(Entry(name, split, picture, mask, painter(mask)))
    return entries, notes


def _check_size(array: np.ndarray, height: int, width: int, path: str) -> None:
    if array.shape[:2] != (height, width):
        raise ConvertError(
            f"{path}: the mask is {array.shape[0]}x{array.shape[1]}, its picture {height}x{width} "
            f"(height x width)"
        )


def read_palette(src: str, *, images: str | None, given: LabelSet | None) -> Source:
    labelmap = os.path.join(src, LABELMAP)
    if os.path.isfile(labelmap):
        entries_map = read_labelmap(labelmap)
        index_names = [name for name, _ in entries_map]
        colours = {name: colour for name, colour in entries_map if colour is not None}
    elif given is not None:
        index_names, colours = list(given.names), {}
    else:
        raise ConvertError(
            f"{src}: palette masks carry no class names: put a {LABELMAP} (name:r,g,b:: a line, "
            f"id 0 first) beside them, or give --labels NAME|PATH",
            code=2,
        )

    def painter(path: str):
        def paint(height: int, width: int, context: PaintContext) -> np.ndarray:
            image = _open(path)
            if image.mode not in ("P", "L"):
                raise ConvertError(
                    f"{path}: a {image.mode} PNG, not a palette or grayscale one: "
                    f"colour masks convert with --from cvat-mask"
                )
            index = np.asarray(image, dtype=np.uint8)
            _check_size(index, height, width, path)
            lut = np.full(256, IGNORE_LABEL, np.uint8)
            for i, name in enumerate(index_names):
                lut[i] = context.ids[name]
            unknown = sorted(set(np.unique(index).tolist()) - set(range(len(index_names))) - {IGNORE_LABEL})
            if unknown:
                raise ConvertError(
                    f"{path}: palette indices {unknown} have no class (the label map names "
                    f"{len(index_names)}: 0..{len(index_names) - 1}; 255 is ignored)"
                )
            return lut[index]

        return paint

    entries, notes = _entries(src, images, painter)
    if not colours:  # the first mask's own palette colours the classes
        first = _open(entries[0].where)
        palette = first.getpalette() if first.mode == "P" else None
        if palette:
            colours = {name: tuple(palette[3 * i : 3 * i + 3]) for i, name in enumerate(index_names)}
    return Source(
        "palette", f"{len(entries)} palette masks in {mask_folder(src)}", index_names, colours, entries, notes
    )


def read_cvat(src: str, *, images: str | None, given: LabelSet | None) -> Source:
    labelmap = os.path.join(src, LABELMAP)
    if os.path.isfile(labelmap):
        table = read_labelmap(labelmap)
        missing = [name for name, colour in table if colour is None]
        if missing:
            raise ConvertError(f"{labelmap}: class {missing[0]!r} has no colour (name:r,g,b::)")
    elif given is not None:
        table = list(zip(given.names, given.palette))
    else:
        raise ConvertError(
            f"{src}: no {LABELMAP} to say which colour is which class: put CVAT's beside the "
            f"masks, or give --labels NAME|PATH whose palette colours them",
            code=2,
        )
    by_colour: dict[tuple, str] = {}
    for name, colour in table:
        if tuple(colour) in by_colour:
            raise ConvertError(
                f"{labelmap if os.path.isfile(labelmap) else '--labels'}: colour {tuple(colour)} "
                f"is both {by_colour[tuple(colour)]!r} and {name!r}"
            )
        by_colour[tuple(colour)] = name
    colours = {name: tuple(colour) for name, colour in table}
    keys = np.array([(r << 16) | (g << 8) | b for r, g, b in by_colour], dtype=np.int64)
    order = np.argsort(keys)
    keys, key_names = keys[order], [list(by_colour.values())[i] for i in order]

    def painter(path: str):
        def paint(height: int, width: int, context: PaintContext) -> np.ndarray:
            rgb = np.asarray(_open(path).convert("RGB"), dtype=np.int64)
            _check_size(rgb, height, width, path)
            packed = (rgb[:, :, 0] << 16) | (rgb[:, :, 1] << 8) | rgb[:, :, 2]
            values, inverse, counts = np.unique(packed, return_inverse=True, return_counts=True)
            pos = np.clip(np.searchsorted(keys, values), 0, len(keys) - 1)
            known = keys[pos] == values
            for value, n in zip(values[~known], counts[~known]):
                context.tally.unknown_colour(
                    ((value >> 16) & 255, (value >> 8) & 255, value & 255), int(n), path
                )
            lut = np.array(
                [context.ids[key_names[p]] if k else IGNORE_LABEL for p, k in zip(pos, known)], np.uint8
            )
            return lut[inverse.reshape(height, width)]

        return paint

    entries, notes = _entries(src, images, painter)
    black = [name for name, colour in table if tuple(colour) == (0, 0, 0)]
    return Source(
        "cvat-mask",
        f"{len(entries)} colour masks in {mask_folder(src)}",
        [n for n, _ in table],
        colours,
        entries,
        notes,
        background=black[0] if black else table[0][0],  # CVAT: black, else the first line, whatever its name
    )


# --------------------------------------------------------------------------------------------
# Writing predictions
# --------------------------------------------------------------------------------------------


def labelmap_text(label_set: LabelSet) -> str:
    lines = ["# label:color_rgb:parts:actions"]
    lines += [f"{name}:{r},{g},{b}::" for name, (r, g, b) in zip(label_set.names, label_set.palette)]
    return "\n".join(lines) + "\n"


def colour_mask(label: np.ndarray, label_set: LabelSet) -> np.ndarray:
    """The BGR picture CVAT imports: each class in its colour; unlabelled (255) as background."""
    table = label_set.colour_table().copy()
    table[IGNORE_LABEL] = table[0]
    return np.ascontiguousarray(table[label][:, :, ::-1])


def write_mask(path: str, label: np.ndarray, label_set: LabelSet) -> None:
    write_image(path, colour_mask(label, label_set))
