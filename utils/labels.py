"""The label set: class names (id = position, 0 = background), left/right mirror pairs and colours.

A label set is data, not code. It comes from a preset (``dog``, the authors'; ``lip``,
``cihp``, ``atr``, ``pascal-person-part``) or a ``labels.json`` file (docs/labels.md)::

    {"names": ["background", "body", "left_wing", "right_wing"],
     "flip_pairs": [["left_wing", "right_wing"]],
     "palette": [[0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25]]}

and every script finds it the same way (:func:`resolve_label_set`): ``--labels NAME|PATH``,
else ``labels.json`` in the data folder, else the set stored with the checkpoint or ONNX
model, else the Dog set. This module loads and validates sets and derives what the rest of
the code needs from one: the flip table of the loader, the channel permutation of flip
testing, colours. It imports only numpy: the torch-free deployment reads it too.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from utils.files import read_json

IGNORE_LABEL = 255
MAX_CLASSES = 255  # ids 0..254 fit an 8-bit PNG beside the ignore label 255
LABELS_FILE = "labels.json"  # looked for in the data folder
FILE_KEYS = ("names", "flip_pairs", "palette")


class LabelSetError(ValueError):
    """A label set that cannot be used; the message is one line naming its file and the entry."""


def voc_palette(n: int = 256) -> np.ndarray:
    """The VOC bit-pattern palette (``get_palette`` of the CE2P family) as an ``n x 3`` uint8 RGB array."""
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


DEFAULT_PALETTE = voc_palette()
IGNORE_COLOUR = (255, 255, 255)  # how the ignore label is drawn


@dataclass(frozen=True, eq=False)
class LabelSet:
    """Class names, left/right pairs (ids) and RGB colours, already validated.

    Build one with :func:`load_label_set`, :func:`preset`, :meth:`from_dict`; ``source`` says
    where it came from, for messages ("the preset 'dog' (the default)", "data/labels.json").
    """

    names: tuple[str, ...]
    flip_pairs: tuple[tuple[int, int], ...]
    palette: tuple[tuple[int, int, int], ...]
    source: str = "<built in>"

    @property
    def num_classes(self) -> int:
        return len(self.names)

    @classmethod
    def from_dict(cls, data: Any, source: str) -> LabelSet:
        """Validate the content of a ``labels.json``; a :class:`LabelSetError` names ``source``, the entry."""
        return _parse(data, source)

    def to_dict(self) -> dict[str, Any]:
        """The ``labels.json`` form (pairs by name): what checkpoints and ONNX metadata store."""
        return {
            "names": list(self.names),
            "flip_pairs": [[self.names[a], self.names[b]] for a, b in self.flip_pairs],
            "palette": [list(c) for c in self.palette],
        }

    def same_classes(self, other: LabelSet) -> bool:
        """The same ids meaning the same classes (names, in order); pairs and colours may differ."""
        return self.names == other.names

    # ---- what the loader, flip testing and pictures need
    def flip_permutation(self) -> list[int]:
        """Channel ``c`` of a mirrored prediction holds the class ``perm[c]`` of the original."""
        perm = list(range(self.num_classes))
        for a, b in self.flip_pairs:
            perm[a], perm[b] = b, a
        return perm

    def flip_lut(self) -> np.ndarray:
        """A 256-entry uint8 table for label maps: swaps each pair, keeps every other id and 255."""
        lut = np.arange(256, dtype=np.uint8)
        lut[: self.num_classes] = self.flip_permutation()
        return lut

    def colours(self) -> np.ndarray:
        """``num_classes x 3`` uint8 RGB, one row per class."""
        return np.array(self.palette, dtype=np.uint8).reshape(-1, 3)

    def colour_table(self) -> np.ndarray:
        """256 x 3 uint8 RGB for any label map: the set's colours, the ignore label white, ids beyond
        the set in the default palette."""
        table = DEFAULT_PALETTE.copy()
        table[: self.num_classes] = self.colours()
        table[IGNORE_LABEL] = IGNORE_COLOUR
        return table

    def colorize(self, label: np.ndarray) -> np.ndarray:
        """H x W ids -> H x W x 3 uint8 RGB."""
        return self.colour_table()[np.asarray(label, dtype=np.uint8)]

    # ---- for people
    def describe(self) -> str:
        """``"8 classes from the preset 'dog' (the default)"``."""
        return f"{self.num_classes} classes from {self.source}"

    def pairs_text(self) -> str:
        if not self.flip_pairs:
            return "no left/right pairs"
        return ", ".join(f"{self.names[a]}<->{self.names[b]}" for a, b in self.flip_pairs)

    def summary(self) -> str:
        """Where the set comes from, every name, the pairs: the line scripts print and log."""
        return f"{self.describe()}: {', '.join(self.names)}; mirror pairs: {self.pairs_text()}"

    def names_text(self, limit: int = 6) -> str:
        shown = ", ".join(self.names[:limit])
        return shown + (f", ... ({self.num_classes - limit} more)" if self.num_classes > limit else "")

    def __repr__(self) -> str:
        return (
            f"LabelSet({self.num_classes} classes: {self.names_text()}; {self.pairs_text()}; {self.source})"
        )


# ------------------------------------------------------------------------------------------
# Validation: one line per problem, the file and the entry first
# ------------------------------------------------------------------------------------------


def _fail(source: str, entry: str, problem: str) -> LabelSetError:
    return LabelSetError(f"{source}: {entry}: {problem}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _parse(data: Any, source: str) -> LabelSet:
    if not isinstance(data, Mapping):
        raise LabelSetError(
            f"{source}: expected a JSON object with 'names' (and optionally 'flip_pairs', "
            f"'palette'), got {type(data).__name__}"
        )
    unknown = [k for k in data if k not in FILE_KEYS]
    if unknown:
        raise _fail(source, repr(unknown[0]), f"unknown entry (expected {', '.join(FILE_KEYS)})")
    names = _parse_names(data.get("names"), source)
    pairs = _parse_pairs(data.get("flip_pairs"), names, source)
    palette = _parse_palette(data.get("palette"), len(names), source)
    return LabelSet(names, pairs, palette, source)


def _parse_names(names: Any, source: str) -> tuple[str, ...]:
    if names is None:
        raise _fail(source, "names", "missing: list the class names, background first (id = position)")
    if not isinstance(names, list):
        raise _fail(source, "names", f"expected a list of strings, got {type(names).__name__}")
    for i, name in enumerate(names):
        if not isinstance(name, str) or not name.strip():
            raise _fail(source, f"names[{i}]", f"expected a non-empty string, got {name!r}")
        if name != name.strip():
            raise _fail(source, f"names[{i}]", f"{name!r} starts or ends with white space")
    if len(names) < 2:
        raise _fail(
            source,
            "names",
            f"{len(names)} class(es): a label set needs at least 2 (background and one class)",
        )
    if len(names) > MAX_CLASSES:
        raise _fail(
            source,
            "names",
            f"{len(names)} classes: at most {MAX_CLASSES} fit 8-bit label PNGs "
            f"beside the ignore label {IGNORE_LABEL}",
        )
    first: dict[str, int] = {}
    for i, name in enumerate(names):
        if name in first:
            raise _fail(source, f"names[{i}]", f"{name!r} is also names[{first[name]}]: names must be unique")
        first[name] = i
    return tuple(names)


def _parse_pairs(pairs: Any, names: tuple[str, ...], source: str) -> tuple[tuple[int, int], ...]:
    if pairs is None:
        return ()
    if not isinstance(pairs, list):
        raise _fail(
            source, "flip_pairs", f"expected a list of [left, right] pairs, got {type(pairs).__name__}"
        )
    ids = {name: i for i, name in enumerate(names)}
    used: dict[int, int] = {}
    out = []
    for k, pair in enumerate(pairs):
        entry = f"flip_pairs[{k}]"
        if not isinstance(pair, list) or len(pair) != 2:
            raise _fail(source, entry, f"expected a pair [left, right] of two ids or names, got {pair!r}")
        both = []
        for item in pair:
            if _is_int(item):
                if not 0 <= item < len(names):
                    raise _fail(
                        source, entry, f"id {item} is out of range: the set has ids 0..{len(names) - 1}"
                    )
                both.append(item)
            elif isinstance(item, str):
                if item not in ids:
                    raise _fail(source, entry, f"unknown class name {item!r} (not in names)")
                both.append(ids[item])
            else:
                raise _fail(source, entry, f"expected an id or a class name, got {item!r}")
        a, b = both
        if a == b:
            raise _fail(source, entry, f"{names[a]!r} (id {a}) is paired with itself")
        for c in (a, b):
            if c == 0:
                raise _fail(source, entry, f"id 0 ({names[0]!r}) is the background and has no mirror class")
            if c in used:
                raise _fail(
                    source,
                    entry,
                    f"{names[c]!r} (id {c}) is already in flip_pairs[{used[c]}]: "
                    f"a class has one mirror class",
                )
            used[c] = k
        out.append((a, b))
    return tuple(out)


def _parse_palette(palette: Any, n: int, source: str) -> tuple[tuple[int, int, int], ...]:
    if palette is None:
        return tuple(tuple(int(v) for v in DEFAULT_PALETTE[i]) for i in range(n))  # type: ignore[misc]
    if not isinstance(palette, list) or len(palette) != n:
        got = f"{len(palette)} entries" if isinstance(palette, list) else type(palette).__name__
        raise _fail(source, "palette", f"expected {n} colours (one [R, G, B] per class), got {got}")
    out = []
    for i, colour in enumerate(palette):
        if (
            not isinstance(colour, list)
            or len(colour) != 3
            or not all(_is_int(v) and 0 <= v <= 255 for v in colour)
        ):
            raise _fail(source, f"palette[{i}]", f"expected [R, G, B] with integers 0..255, got {colour!r}")
        out.append((colour[0], colour[1], colour[2]))
    return tuple(out)


# ------------------------------------------------------------------------------------------
# Presets: the sets the datasets publish (their sources: docs/labels.md)
# ------------------------------------------------------------------------------------------

_HUMAN_LIMBS = ["Left-arm", "Right-arm", "Left-leg", "Right-leg", "Left-shoe", "Right-shoe"]
_LEFT_RIGHT = [["Left-arm", "Right-arm"], ["Left-leg", "Right-leg"], ["Left-shoe", "Right-shoe"]]

# fmt: off
PRESETS: dict[str, dict[str, Any]] = {
    # The authors' names exactly as they log them (TensorBoard tags, the evaluation table); "left"
    # and "right" are the dog's own sides, so a horizontal mirror exchanges them.
    "dog": {"names": ["Background", "head", "body", "left_arm", "right_arm", "left_leg", "right_leg", "tail"],
            "flip_pairs": [["left_arm", "right_arm"], ["left_leg", "right_leg"]]},
    "lip": {"names": ["Background", "Hat", "Hair", "Glove", "Sunglasses", "Upper-clothes", "Dress", "Coat",
                      "Socks", "Pants", "Jumpsuits", "Scarf", "Skirt", "Face", *_HUMAN_LIMBS],
            "flip_pairs": _LEFT_RIGHT},
    # CIHP follows LIP but for id 10, Torso-skin in place of Jumpsuits.
    "cihp": {"names": ["Background", "Hat", "Hair", "Glove", "Sunglasses", "Upper-clothes", "Dress", "Coat",
                       "Socks", "Pants", "Torso-skin", "Scarf", "Skirt", "Face", *_HUMAN_LIMBS],
             "flip_pairs": _LEFT_RIGHT},
    "atr": {"names": ["Background", "Hat", "Hair", "Sunglasses", "Upper-clothes", "Skirt", "Pants", "Dress",
                      "Belt", "Left-shoe", "Right-shoe", "Face", "Left-leg", "Right-leg", "Left-arm",
                      "Right-arm", "Bag", "Scarf"],
            "flip_pairs": [["Left-shoe", "Right-shoe"], ["Left-leg", "Right-leg"],
                           ["Left-arm", "Right-arm"]]},
    # Upper/lower arms and legs without sides: a mirror swaps nothing.
    "pascal-person-part": {"names": ["Background", "Head", "Torso", "Upper Arms", "Lower Arms", "Upper Legs",
                                     "Lower Legs"],
                           "flip_pairs": []},
}
# fmt: on
DEFAULT_PRESET = "dog"


def preset(name: str, how: str = "") -> LabelSet:
    """A preset label set; ``how`` ("the default", "--labels lip") goes into its source."""
    if name not in PRESETS:
        raise LabelSetError(f"unknown label-set preset {name!r} (presets: {', '.join(PRESETS)})")
    return LabelSet.from_dict(PRESETS[name], f"the preset '{name}'" + (f" ({how})" if how else ""))


DOG = preset(DEFAULT_PRESET, "the default")


# ------------------------------------------------------------------------------------------
# Reading and resolving
# ------------------------------------------------------------------------------------------


def load_label_file(path: str) -> LabelSet:
    """A ``labels.json`` file, validated; :class:`LabelSetError` names the file."""
    try:
        data = read_json(path, "label-set file")
    except ValueError as exc:
        raise LabelSetError(str(exc)) from None
    return LabelSet.from_dict(data, path)


def load_label_set(spec: str) -> LabelSet:
    """``--labels``: a preset name, a ``labels.json`` path, or a folder holding ``labels.json``."""
    if spec in PRESETS and not os.path.exists(spec):
        return preset(spec, f"--labels {spec}")
    if os.path.isdir(spec):
        return load_label_file(os.path.join(spec, LABELS_FILE))
    if os.path.isfile(spec) or spec.endswith(".json") or os.sep in spec:
        return load_label_file(spec)
    raise LabelSetError(f"--labels {spec}: neither a preset ({', '.join(PRESETS)}) nor a labels.json file")


def data_label_file(data_dir: str | None) -> str | None:
    """``<data_dir>/labels.json`` if it exists."""
    if not data_dir:
        return None
    path = os.path.join(data_dir, LABELS_FILE)
    return path if os.path.isfile(path) else None


def given_label_set(labels: str | None = None, data_dir: str | None = None) -> LabelSet | None:
    """The set a user gives: ``--labels``, else ``labels.json`` in ``data_dir``; None when neither."""
    if labels:
        return load_label_set(labels)
    in_data = data_label_file(data_dir)
    return load_label_file(in_data) if in_data is not None else None


def resolve_label_set(
    labels: str | None = None, data_dir: str | None = None, stored: LabelSet | None = None
) -> LabelSet:
    """The label set a script works with: ``--labels``, else ``labels.json`` in ``data_dir``, else the
    set ``stored`` with the checkpoint or ONNX model, else the Dog set."""
    return given_label_set(labels, data_dir) or stored or DOG


def check_flags(label_set: LabelSet, num_classes: int | None = None, ignore_label: int | None = None) -> None:
    """The flags that depend on the set: ``--num-classes`` (derived from it; given, it must agree) and
    ``--ignore-label`` (not one of its ids)."""
    if num_classes is not None and num_classes != label_set.num_classes:
        raise LabelSetError(
            f"--num-classes {num_classes} disagrees with the label set: "
            f"{label_set.describe()} ({label_set.names_text()}); drop --num-classes, or give "
            f"the set of your data with --labels or a {LABELS_FILE} in the data folder"
        )
    if ignore_label is not None and ignore_label < label_set.num_classes:
        raise LabelSetError(
            f"--ignore-label {ignore_label} is a class id of the label set "
            f"({label_set.describe()}: ids 0..{label_set.num_classes - 1})"
        )


def check_same_classes(
    label_set: LabelSet, other: LabelSet | None, num_classes: int | None, what: str
) -> None:
    """``what`` (a checkpoint or a model, trained with ``other`` when it records its set, with
    ``num_classes`` outputs) must predict the classes of ``label_set``."""
    if other is not None and not label_set.same_classes(other):
        raise LabelSetError(
            f"{what} was trained with {other.num_classes} classes ({other.names_text()}), "
            f"but the label set is {label_set.describe()} ({label_set.names_text()})"
        )
    if num_classes is not None and num_classes != label_set.num_classes:
        raise LabelSetError(
            f"{what} predicts {num_classes} classes, but the label set is "
            f"{label_set.describe()} ({label_set.names_text()}); give its label set "
            f"with --labels"
        )


def stored_form(label_set: LabelSet) -> str:
    """The set as one JSON string, for ONNX metadata (whose values are strings)."""
    return json.dumps(label_set.to_dict(), separators=(",", ":"))


def from_stored_form(text: str, where: str) -> LabelSet:
    """The inverse of :func:`stored_form`; ``where`` names the file it came from."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise LabelSetError(f"{where}: its stored label set is not valid JSON: {exc.msg}") from None
    return LabelSet.from_dict(data, where)
