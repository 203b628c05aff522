"""What every annotation reader produces, and the helpers they share.

A reader turns a source (a COCO file, a LabelMe folder, ...) into a :class:`Source`: the class
names it uses, their colours where it has them, and one :class:`Entry` per picture, whose
``paint`` draws the label map once the ids of the names are known. Reading checks everything it
can without decoding pictures (JSON, names, that each picture exists), so that most bad input is
refused before anything is written; ``paint`` checks the rest (sizes, colours, RLE).
"""

from __future__ import annotations

import os
import re
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import cv2
import numpy as np

from dataset.formats import shapes
from dataset.formats.names import Colour, ConvertError
from utils.files import read_json

_PNG = b"\x89PNG\r\n\x1a\n"
_JPEG = b"\xff\xd8\xff"
# Picture files a source may name; matched case-insensitively.
PICTURE_EXTENSIONS = (".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")


@dataclass
class PaintContext:
    """What ``Entry.paint`` needs besides the picture's size: the id of each source name, the id of
    pixels no annotation covers (0 or 255), and a tally of what was skipped or clipped."""

    ids: dict[str, int]
    unlabelled: int
    tally: Tally


class Tally:
    """Counts of things worth one line at the end (``"polygon clipped to its picture"``: 3), with the
    first file each was seen in; safe to use from the writer threads."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.first: dict[str, str] = {}
        self.colours: dict[tuple[int, int, int], list] = {}
        self._lock = threading.Lock()

    def add(self, what: str, where: str, n: int = 1) -> None:
        if n <= 0:
            return
        with self._lock:
            self.counts[what] += n
            self.first.setdefault(what, where)

    def unknown_colour(self, colour: tuple[int, int, int], pixels: int, where: str) -> None:
        """A mask colour no class has: its pixels and files, reported together at the end."""
        with self._lock:
            seen = self.colours.setdefault(colour, [0, []])
            seen[0] += pixels
            seen[1].append(where)

    def lines(self) -> list[str]:
        return [f"note: {n} x {what} (first in {self.first[what]})" for what, n in self.counts.items()]

    def colour_lines(self) -> list[str]:
        out = []
        for (r, g, b), (pixels, files) in sorted(self.colours.items(), key=lambda t: -t[1][0]):
            shown = ", ".join(sorted(files)[:3]) + (f" and {len(files) - 3} more" if len(files) > 3 else "")
            out.append(
                f"colour ({r},{g},{b}) is no class of the label map: {pixels} pixels in {len(files)} "
                f"mask(s): {shown}"
            )
        return out


Painter = Callable[[int, int, PaintContext], np.ndarray]


def fill_inside(
    label: np.ndarray, points: np.ndarray, offset: float, value: int, where: str, context: PaintContext
) -> None:
    """:func:`shapes.fill_polygon` of a source's polygon: clipped to the picture and counted when it
    reaches outside, refused (ConvertError naming ``where``) when it lies entirely outside."""
    height, width = label.shape[:2]
    beyond, entirely = shapes.outside(points, width, height, offset)
    if entirely:
        raise ConvertError(f"{where}: a polygon lies entirely outside the {width}x{height} picture")
    if beyond:
        context.tally.add("polygon clipped to its picture", where)
    shapes.fill_polygon(label, points, offset, value)


@dataclass
class Entry:
    """One annotated picture: its id in the Dog layout (``name``), the source's split (None where it
    has none), the picture's path, where its annotation is (for messages) and how to draw it
    (``paint(height, width, context)`` -> H x W uint8 ids)."""

    name: str
    split: str | None
    picture: str
    where: str
    paint: Painter


@dataclass
class Source:
    """What a reader found: the format, a description for the summary line, the class names in the
    source's order, their colours (RGB) where it has them, the entries, lines to print, and the name
    the source itself gives id 0 (None: a background name, else a new ``background``)."""

    format: str
    description: str
    names: list[str]
    colours: dict[str, Colour]
    entries: list[Entry]
    notes: list[str] = field(default_factory=list)
    background: str | None = None  # the name that is id 0 whatever it is called (a label map's first line)


_last_json: dict[tuple | None, object] = {}


def load_json(path: str) -> object:
    """A JSON file; ConvertError naming the file, the line and the column when it is not valid. The last
    file read is kept, so that detecting a format and reading it parse a large file once."""
    try:
        info = os.stat(path)
        key = (path, info.st_mtime_ns, info.st_size)
    except OSError:
        key = None
    if key is not None and key in _last_json:
        return _last_json[key]
    try:
        data = read_json(path)
    except ValueError as exc:
        raise ConvertError(str(exc)) from None
    _last_json.clear()
    _last_json[key] = data
    return data


def stem(path: str) -> str:
    """The id a picture gets: its file name without folder and extension."""
    return os.path.splitext(os.path.basename(path.replace("\\", "/")))[0]


def check_name(name: str, where: str) -> str:
    """An id must be a file name on every system and one line of an id list."""
    if not name or name != name.strip() or re.search(r'[\x00-\x1f/\\:*?"<>|]', name) or name in (".", ".."):
        raise ConvertError(
            f'{where}: {name!r} cannot be a picture id (a file name without / \\ : * ? " < > |, '
            f"control characters or surrounding spaces)"
        )
    return name


def unique_names(entries: Iterable[Entry]) -> list[Entry]:
    """The entries, refusing two pictures that would get the same id."""
    seen: dict[str, Entry] = {}
    out = []
    for entry in entries:
        check_name(entry.name, entry.where)
        if entry.name in seen:
            first = seen[entry.name]
            raise ConvertError(
                f"{entry.where}: picture {entry.picture} has the id {entry.name!r} of {first.picture} "
                f"({first.where}): ids are file names without their folder, and must differ"
            )
        seen[entry.name] = entry
        out.append(entry)
    return out


class PictureFinder:
    """Finds the file of a picture a source names, under ``folders`` (in order): the name as it is
    (relative to each folder, or absolute), then its file name alone, then the same name with any
    picture extension. Lists each folder once."""

    def __init__(self, folders: Iterable[str]) -> None:
        self.folders = [f for f in dict.fromkeys(folders) if f and os.path.isdir(f)]
        self._listing: dict[str, dict[str, str]] = {}

    def _by_stem(self, folder: str) -> dict[str, str]:
        if folder not in self._listing:
            found: dict[str, str] = {}
            for f in sorted(os.listdir(folder)):
                root, ext = os.path.splitext(f)
                if ext.lower() in PICTURE_EXTENSIONS and os.path.isfile(os.path.join(folder, f)):
                    found.setdefault(root, os.path.join(folder, f))
            self._listing[folder] = found
        return self._listing[folder]

    def find(self, name: str, *, by_stem: bool = False) -> str | None:
        name = name.replace("\\", "/")
        if os.path.isabs(name) and os.path.isfile(name):
            return name
        base = os.path.basename(name)
        for folder in self.folders:
            for candidate in (os.path.join(folder, name), os.path.join(folder, base)):
                if os.path.isfile(candidate):
                    return candidate
            if by_stem:
                hit = self._by_stem(folder).get(os.path.splitext(base)[0] if "." in base else base)
                if hit:
                    return hit
        return None

    def describe(self) -> str:
        return ", ".join(self.folders) or "(no picture folder found)"


def picture_bytes(path: str, tally: Tally) -> tuple[bytes, str, int, int]:
    """What to write for a picture: its own bytes and extension when it is a 3-channel 8-bit JPEG or PNG,
    else a lossless 3-channel PNG of it (grayscale repeated, transparency over white, 16 bits cut to 8);
    and its height and width."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ConvertError(f"{path}: cannot read the picture: {exc.strerror or exc}") from None
    if not data:
        raise ConvertError(f"{path}: the picture is an empty file (0 bytes)")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ConvertError(f"{path}: the picture cannot be decoded (corrupt or not an image)")
    height, width = image.shape[:2]
    kind = ".jpg" if data.startswith(_JPEG) else ".png" if data.startswith(_PNG) else None
    if kind and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3:
        return data, kind, height, width
    tally.add("picture written as a 3-channel PNG (grayscale, transparent, 16-bit or not JPEG/PNG)", path)
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise ConvertError(f"{path}: {image.dtype} pictures are not supported (8- or 16-bit only)")
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    elif image.shape[2] == 4:
        alpha = image[:, :, 3:].astype(np.float32) / 255.0
        image = np.rint(image[:, :, :3] * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)
    ok, encoded = cv2.imencode(".png", np.ascontiguousarray(image))
    if not ok:
        raise ConvertError(f"{path}: could not encode the picture as PNG")
    return encoded.tobytes(), ".png", height, width
