"""Run-length encodings of binary masks: COCO's and Label Studio's brush.

COCO (the ``segmentation`` of an annotation when it is a dict): ``{"size": [h, w], "counts": ...}``,
the mask read column by column (Fortran order), run lengths alternating 0s and 1s and starting with
0s. ``counts`` is either the list of lengths ("uncompressed", what ``iscrowd`` annotations often
hold) or a string: each length, minus the one two places before it from the third on, written as
little-endian groups of 5 bits, one character (``48 + bits``, bit 0x20 = more groups follow) each.

Label Studio's brush (``value.rle`` of a ``brushlabels`` result): the picture's RGBA pixels, row by
row, as one byte stream, packed bit by bit: a 32-bit element count, a 5-bit word size minus one,
four 4-bit run-size widths minus one, then records of ``1 | size index (2 bits) | length - 1 |
one word`` (a run of equal words) or ``0 | size index | length - 1 | length words`` (literals), the
whole padded with 0 bits to a byte. The painted pixels are those whose alpha is at least 128.

numpy only: the converter and the torch-free parse_images.py both use it. tests/test_formats.py
checks both against the tools' own libraries where they are installed.
"""

from __future__ import annotations

import numpy as np


class RleError(ValueError):
    """An encoding that cannot be decoded; the message says what is wrong (the caller adds the file)."""


# --------------------------------------------------------------------------------------------
# COCO
# --------------------------------------------------------------------------------------------


def mask_to_counts(mask: np.ndarray) -> list[int]:
    """The COCO run lengths of an H x W mask (nonzero = 1), column-major, starting with 0s."""
    flat = np.asarray(mask).ravel(order="F") != 0
    if flat.size == 0:
        return [0]
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    counts = np.diff(np.concatenate([[0], change, [flat.size]])).tolist()
    return [0, *counts] if flat[0] else counts


def counts_to_mask(counts: list[int], height: int, width: int) -> np.ndarray:
    """The H x W uint8 mask (0/1) of COCO run lengths; RleError unless they cover it exactly."""
    lengths = np.asarray(counts, dtype=np.int64)
    if lengths.ndim != 1 or (lengths < 0).any():
        raise RleError("run lengths must be a list of non-negative integers")
    if int(lengths.sum()) != height * width:
        raise RleError(
            f"run lengths add up to {int(lengths.sum())} pixels, the size {height}x{width} holds "
            f"{height * width}"
        )
    values = (np.arange(lengths.size) % 2).astype(np.uint8)
    return np.repeat(values, lengths).reshape(width, height).T.copy()


def compress_counts(counts: list[int]) -> str:
    """COCO's compressed string form of run lengths (pycocotools' ``rleToString``)."""
    out = []
    for i, count in enumerate(counts):
        x = int(count) - (int(counts[i - 2]) if i > 2 else 0)
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = x != -1 if c & 0x10 else x != 0
            if more:
                c |= 0x20
            out.append(chr(c + 48))
    return "".join(out)


def decompress_counts(text: str) -> list[int]:
    """The run lengths of COCO's compressed string (pycocotools' ``rleFrString``)."""
    counts: list[int] = []
    data = text.encode("ascii", errors="strict") if isinstance(text, str) else bytes(text)
    p = 0
    while p < len(data):
        x, k, more = 0, 0, True
        while more:
            if p >= len(data):
                raise RleError("the compressed counts end in the middle of a number")
            c = data[p] - 48
            if not 0 <= c < 64:
                raise RleError(f"character {chr(data[p])!r} cannot occur in compressed counts")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def encode_coco(mask: np.ndarray) -> dict:
    """``{"size": [h, w], "counts": "<compressed>"}`` of an H x W mask."""
    height, width = mask.shape[:2]
    return {"size": [int(height), int(width)], "counts": compress_counts(mask_to_counts(mask))}


def decode_coco(rle: object) -> np.ndarray:
    """The H x W uint8 mask of a COCO RLE dict, compressed or not; RleError for anything else."""
    if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
        raise RleError("expected an RLE object with 'size' and 'counts'")
    size = rle["size"]
    if not (isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) and v >= 0 for v in size)):
        raise RleError(f"'size' must be [height, width], got {size!r}")
    counts = rle["counts"]
    if isinstance(counts, str):
        counts = decompress_counts(counts)
    elif not (isinstance(counts, list) and all(isinstance(v, int) for v in counts)):
        raise RleError("'counts' must be a string or a list of integers")
    return counts_to_mask(counts, size[0], size[1])


# --------------------------------------------------------------------------------------------
# Label Studio's brush
# --------------------------------------------------------------------------------------------

_WORD_BITS = 8
_RUN_WIDTHS = (3, 4, 8, 16)  # the widths Label Studio's own encoder uses


def _runs(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lengths and values of the runs of equal elements of a 1-D array."""
    change = np.flatnonzero(values[1:] != values[:-1]) + 1
    starts = np.concatenate([[0], change])
    lengths = np.diff(np.concatenate([starts, [values.size]]))
    return lengths, values[starts]


def encode_brush(mask: np.ndarray) -> list[int]:
    """Label Studio's ``rle`` list (bytes as integers) of an H x W mask: painted pixels opaque white."""
    alpha = np.where(np.asarray(mask) != 0, 255, 0).astype(np.uint8)
    rgba = np.repeat(alpha.ravel(), 4)  # R, G, B and alpha all 255 where painted, as the editor paints
    bits = [f"{rgba.size:032b}", f"{_WORD_BITS - 1:05b}", *(f"{w - 1:04b}" for w in _RUN_WIDTHS)]
    longest = 1 << _RUN_WIDTHS[-1]
    if rgba.size:
        lengths, values = _runs(rgba)
        for length, value in zip(lengths.tolist(), values.tolist()):
            word = f"{value:08b}"
            while length > 0:
                part = min(length, longest)
                index = next(i for i, w in enumerate(_RUN_WIDTHS) if part - 1 < (1 << w))
                bits.append(f"1{index:02b}{part - 1:0{_RUN_WIDTHS[index]}b}{word}")
                length -= part
    text = "".join(bits)
    text += "0" * (-len(text) % 8)
    return [int(text[i : i + 8], 2) for i in range(0, len(text), 8)]


class _Bits:
    def __init__(self, data: list) -> None:
        if not all(isinstance(b, int) and 0 <= b <= 255 for b in data):
            raise RleError("'rle' must be a list of integers 0..255")
        self.text = "".join(f"{b:08b}" for b in data)
        self.pos = 0

    def read(self, n: int) -> int:
        if self.pos + n > len(self.text):
            raise RleError("the brush RLE ends before its last run")
        value = int(self.text[self.pos : self.pos + n], 2) if n else 0
        self.pos += n
        return value


def decode_brush(rle: object, height: int, width: int) -> np.ndarray:
    """The H x W uint8 mask (0/1) of Label Studio's brush ``rle`` for a ``height x width`` picture."""
    if not isinstance(rle, list):
        raise RleError("'rle' must be a list of integers 0..255")
    bits = _Bits(rle)
    total = bits.read(32)
    word = bits.read(5) + 1
    widths = [bits.read(4) + 1 for _ in range(4)]
    if total != height * width * 4:
        raise RleError(
            f"the brush RLE holds {total} values, a {height}x{width} RGBA picture {height * width * 4}"
        )
    out = np.zeros(total, dtype=np.uint8)
    i = 0
    while i < total:
        repeated = bits.read(1)
        end = i + 1 + bits.read(widths[bits.read(2)])
        if end > total:
            raise RleError("a run of the brush RLE goes past the picture's last pixel")
        if repeated:
            out[i:end] = bits.read(word)
        else:
            for k in range(i, end):
                out[k] = bits.read(word)
        i = end
    return (out.reshape(height, width, 4)[:, :, 3] >= 128).astype(np.uint8)
