"""Class names from an annotation source to a label set: background, ignore, left/right pairs.

A source names its classes (COCO categories, LabelMe and Label Studio labels, CVAT's and VOC's
``labelmap.txt``). :func:`build_label_set` turns them into the label set the converted data uses:
the background first (``background``, ``_background_``, ``__background__`` in any case are
recognised as id 0; else ``background`` is added), then the others in the source's order, its
colours where it has them, and the left/right pairs :func:`propose_pairs` reads from the names.
Given a label set (``--labels``), the source's names are matched to it instead.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from utils.labels import DEFAULT_PALETTE, IGNORE_LABEL, LabelSet, LabelSetError

BACKGROUND_NAMES = ("background", "_background_", "__background__")
IGNORE_NAMES = ("__ignore__", "_ignore_")  # labelme2voc's convention for "not scored"

Colour = tuple[int, int, int]


class ConvertError(Exception):
    """A source that cannot be converted: one line naming the file and the entry; ``code`` is the exit
    status (1: the data; 2: the command line)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def is_background(name: str) -> bool:
    return name.strip().lower() in BACKGROUND_NAMES


def is_ignore(name: str) -> bool:
    return name.strip().lower() in IGNORE_NAMES


# A side word before or after the rest of a name: left_arm, Left-leg, leftArm, arm_left, ArmRight; the
# one-letter sides only set off by "_", "-", "." or a space: l_arm, R-leg, arm_l, hand.R.
_SIDE_PATTERNS = (
    re.compile(r"^(left|right)[ _\-.]?(.+)$", re.IGNORECASE),
    re.compile(r"^([lr])[ _\-.](.+)$", re.IGNORECASE),
    re.compile(r"^(.+?)[ _\-.]?(left|right)$", re.IGNORECASE),
    re.compile(r"^(.+?)[ _\-.]([lr])$", re.IGNORECASE),
)


def _side_and_rest(name: str) -> tuple[str, str] | None:
    """``("l", "0:arm")`` for ``left_arm``: the side and what the name is without it (which pattern
    matched, then the rest in lower case); None for a name without a side word."""
    for k, pattern in enumerate(_SIDE_PATTERNS):
        match = pattern.match(name)
        if match:
            side, rest = (match.group(1), match.group(2)) if k < 2 else (match.group(2), match.group(1))
            return side[0].lower(), f"{k % 2 + 2 * (k >= 2)}:{rest.lower()}"
    return None


def propose_pairs(names: Sequence[str]) -> list[tuple[int, int]]:
    """Left/right pairs read from the names: the ids of two names that differ only in a side word
    (``left``/``right``, or ``l``/``r``, before or after the rest). Each class is in one pair at most;
    ids in the order of the left one."""
    sides: dict[str, dict[str, int]] = {}
    for i, name in enumerate(names):
        found = _side_and_rest(name) if i else None
        if found:
            side, rest = found
            sides.setdefault(rest, {}).setdefault(side, i)
    pairs = [(by_side["l"], by_side["r"]) for by_side in sides.values() if "l" in by_side and "r" in by_side]
    return sorted(pairs)


def sorted_names(names: list[str]) -> list[str]:
    """The distinct class names of a source that has no order of its own (LabelMe, Label Studio):
    background names first, then alphabetically."""
    return sorted(set(names), key=lambda n: (not is_background(n), n))


def build_label_set(
    names: Sequence[str],
    colours: dict[str, Colour] | None,
    source: str,
    *,
    given: LabelSet | None = None,
    flip_pairs: bool = True,
    background: str | None = None,
) -> tuple[LabelSet, dict[str, int], list[str]]:
    """The label set for a source's class ``names`` (in the source's order; background and ignore
    names may be among them), the id of each source name (ignore names map to 255), and the lines
    to print (each proposed pair, where the set came from). ``background``: the name that is id 0
    (default: the first background name, else a new ``background``). ``given`` (``--labels``): the
    source's names matched to it, exactly or else ignoring case; a name it lacks is a ConvertError."""
    ids: dict[str, int] = {}
    lines: list[str] = []
    if given is not None:
        lower: dict[str, list[int]] = {}
        for i, name in enumerate(given.names):
            lower.setdefault(name.lower(), []).append(i)
        for name in names:
            if is_ignore(name):
                ids[name] = IGNORE_LABEL
            elif name in given.names:
                ids[name] = given.names.index(name)
            elif len(lower.get(name.lower(), [])) == 1:
                ids[name] = lower[name.lower()][0]
            elif is_background(name) or name == background:
                ids[name] = 0
            else:
                raise ConvertError(
                    f"{source}: class {name!r} is not in the label set ({given.describe()}: "
                    f"{given.names_text(12)})",
                    code=1,
                )
        lines.append(f"label set: {given.summary()}")
        return given, ids, lines

    backgrounds = [background] if background else [n for n in names if is_background(n)]
    ordered = [backgrounds[0] if backgrounds else "background"]
    for name in names:
        if is_ignore(name) or is_background(name) or name == ordered[0]:
            continue
        if name not in ordered:
            ordered.append(name)
    colours = colours or {}
    palette = []
    for i, name in enumerate(ordered):
        colour = colours.get(name)
        if colour is None and i == 0:
            colour = next((colours[b] for b in backgrounds if b in colours), None)
        palette.append(list(colour) if colour is not None else [int(v) for v in DEFAULT_PALETTE[i]])
    pairs = propose_pairs(ordered) if flip_pairs else []
    data = {"names": ordered, "flip_pairs": [[ordered[a], ordered[b]] for a, b in pairs], "palette": palette}
    try:
        label_set = LabelSet.from_dict(data, f"the classes of {source}")
    except LabelSetError as exc:
        raise ConvertError(str(exc), code=1) from None
    for name in names:
        ids[name] = IGNORE_LABEL if is_ignore(name) else (0 if is_background(name) else ordered.index(name))
    ids[ordered[0]] = 0
    for a, b in pairs:
        lines.append(
            f"left/right pair: {ordered[a]} <-> {ordered[b]} (from the names; --no-flip-pairs to drop)"
        )
    if not pairs:
        lines.append(
            "left/right pairs: none found in the class names"
            if flip_pairs
            else "left/right pairs: none (--no-flip-pairs)"
        )
    lines.append(f"label set: {label_set.summary()}")
    return label_set, ids, lines


def read_labelmap(path: str) -> list[tuple[str, Colour | None]]:
    """CVAT's and VOC's ``labelmap.txt``: ``name:r,g,b:parts:actions`` per line, ``#`` comments;
    the colour may be empty. ConvertError names the line."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConvertError(
            f"{path}: cannot read the label map: {getattr(exc, 'strerror', None) or exc}"
        ) from None
    entries: list[tuple[str, Colour | None]] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, _, rest = line.partition(":")
        colour_text = rest.split(":", 1)[0].strip()
        if not name.strip():
            raise ConvertError(f"{path}: line {number}: no class name before ':'")
        colour = None
        if colour_text:
            parts = colour_text.split(",")
            try:
                values = tuple(int(v) for v in parts)
            except ValueError:
                values = ()
            if len(values) != 3 or not all(0 <= v <= 255 for v in values):
                raise ConvertError(f"{path}: line {number}: colour {colour_text!r} is not r,g,b with 0..255")
            colour = values  # type: ignore[assignment]
        entries.append((name.strip(), colour))
    if not entries:
        raise ConvertError(f"{path}: the label map names no class")
    return entries
