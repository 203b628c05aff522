"""Command-line pieces every script shares: argparse number and list types, the label-set flags,
the prediction flags, and the one-line error exit.

No torch here: ``parse_images.py --onnx`` parses its arguments with this module where torch is
not installed.
"""

from __future__ import annotations

import argparse
import errno
import math
import os
import re
import sys
from collections.abc import Callable
from typing import NoReturn

from utils import recipe
from utils.labels import PRESETS, LabelSet, LabelSetError, given_label_set

# What runs an ONNX model (--runtime; inference/onnx_infer.py): auto chooses by its precision.
RUNTIMES = ("auto", "onnxruntime", "openvino")

AMP_MODES = ("off", "bf16", "fp16")
# What the scripts call to end with one line: ``fail(message, exit_code)``.
Fail = Callable[..., NoReturn]


def show_default(value: object) -> str:
    """A flag's default as a person would type it: ``384,384`` for a size, ``on``/``off`` for a switch."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (tuple, list)):
        return ("," if all(isinstance(v, (int, float)) for v in value) else " ").join(
            map(str, value)
        ) or "none"
    return str(value)


# How a help text states a default in words (one that depends on the machine, the checkpoint or other
# flags): "default: <what>" or "(default <what>)"; "default to" or "defaults" in a sentence is not one.
_STATED_DEFAULT = re.compile(r"(?:default:\s*|\(default\s+)(.+?)(?:\)|;| \(|$)")


def stated_default(text: str) -> str | None:
    """The default a help text states in words, or None if it states none."""
    said = _STATED_DEFAULT.search(" ".join(text.split()))
    return said.group(1).strip().rstrip(".") if said else None


class DefaultsHelpFormatter(argparse.RawDescriptionHelpFormatter):
    """``--help`` states every flag's default: appended as ``(default: X)`` unless the help text already
    states it in words (:func:`stated_default`: flags whose default depends on the machine or on other
    flags). The description is printed as written."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if stated_default(text) or action.default is argparse.SUPPRESS or not action.option_strings:
            return text
        return f"{text} (default: {show_default(action.default).replace('%', '%%')})"


# --------------------------------------------------------------------------------------------
# Errors for people: one line, the file first
# --------------------------------------------------------------------------------------------


def first_line(exc: BaseException, default: str | None = None) -> str:
    """The first line of an exception's message (``default``, else its type name, when it has none)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else (default or type(exc).__name__)


def error_line(exc: BaseException) -> str:
    """The message a person needs: a DataLoader worker's exception arrives as "Caught <type> in
    DataLoader worker process N." followed by its traceback, whose last line is the original message."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    last = lines[-1]
    prefix = f"{type(exc).__name__}: "
    return last[len(prefix) :] if last.startswith(prefix) else last


def die(prog: str, message: str, code: int = 1) -> NoReturn:
    """``<prog>: error: <message>`` on stderr, then exit ``code``; the scripts' ``fail``."""
    print(f"{prog}: error: {message}", file=sys.stderr)
    sys.exit(code)


def output_folder_problem(folder: str) -> str | None:
    """Creates ``folder`` if needed; why outputs cannot be written there, or None if they can.

    Checked before the work, so a run does not end in an error after all of it.
    """
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        name = errno.errorcode.get(exc.errno or 0, "an OS error")
        return f"{folder}: cannot create the output folder: {exc.strerror or exc} ({name})"
    if not os.access(folder, os.W_OK):
        return f"{folder}: output folder is not writable"
    return None


def parse_size(text: str) -> tuple[int, int]:
    """``"H,W"`` -> ``(H, W)``, both positive integers (argparse type)."""
    parts = [p.strip() for p in str(text).split(",")]
    try:
        size = tuple(int(p) for p in parts)
    except ValueError:
        size = ()
    if len(size) != 2 or min(size) < 1:
        raise argparse.ArgumentTypeError(f"expected H,W (two positive integers), got {text!r}")
    return size  # type: ignore[return-value]


def parse_scales(text: str) -> tuple[float, ...]:
    """``"0.75,1.0,1.25"`` -> a tuple of positive finite floats, at least one (argparse type)."""
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    try:
        scales = tuple(float(p) for p in parts)
    except ValueError:
        scales = ()
    if not scales or any(not math.isfinite(s) or s <= 0 for s in scales):
        raise argparse.ArgumentTypeError(f"expected positive numbers separated by commas, got {text!r}")
    return scales


def _number(text: str, cast: Callable[[str], float], minimum: float, strict: bool, expected: str):
    """argparse type: ``text`` as ``cast`` (int or float), finite and > (strict) or >= ``minimum``."""
    try:
        value = cast(text)
    except ValueError:
        value = None
    ok = value is not None and math.isfinite(value) and (value > minimum if strict else value >= minimum)
    if not ok:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    return _number(text, int, 0, True, "a positive integer")


def non_negative_int(text: str) -> int:
    return _number(text, int, 0, False, "an integer >= 0")


def positive_float(text: str) -> float:
    return _number(text, float, 0.0, True, "a positive number")


def non_negative_float(text: str) -> float:
    return _number(text, float, 0.0, False, "a number >= 0")


def probability(text: str) -> float:
    """A number in [0, 1] (argparse type)."""
    value = _number(text, float, 0.0, False, "a probability between 0 and 1")
    if value > 1:
        raise argparse.ArgumentTypeError(f"expected a probability between 0 and 1, got {text!r}")
    return value


def add_label_arguments(
    parser: argparse.ArgumentParser, *, data_dir: bool = True, stored: bool = True
) -> None:
    """``--labels`` and ``--num-classes``, with where the set comes from when ``--labels`` is not given:
    ``labels.json`` in the data folder (``data_dir``), the checkpoint's or model's own set (``stored``),
    the Dog set."""
    fallbacks = (
        (["labels.json in --data-dir"] if data_dir else [])
        + (["the set stored with the checkpoint or ONNX model"] if stored else [])
        + ["dog"]
    )
    parser.add_argument(
        "--labels",
        default=None,
        metavar="NAME|PATH",
        help=f"label set (class names, left/right flip pairs, colours; docs/labels.md): a "
        f"preset ({', '.join(PRESETS)}) or a labels.json (or a folder holding one); "
        f"default: {', else '.join(fallbacks)}",
    )
    parser.add_argument(
        "--num-classes",
        type=positive_int,
        default=None,
        help="number of classes, background included (default: the label set's count); given, "
        "it must agree with the label set (a check)",
    )


def add_inference_arguments(
    parser: argparse.ArgumentParser, *, onnx: bool = False, data_dir: bool = False, scores: bool = False
) -> None:
    """The prediction flags evaluate.py and parse_images.py share; ``onnx`` adds ``--onnx`` and ``--fuse``
    (and makes ``--input-size`` default to the crop the network records: ``inference.model``'s
    ``network_input_size``); ``scores`` (evaluate.py) makes float32 the default precision, so that
    scores are exact unless asked."""
    parser.add_argument(
        "--input-size",
        type=parse_size,
        default=None if onnx else recipe.INPUT_SIZE,
        metavar="H,W",
        help="crop the network sees, height,width; default: the crop the checkpoint or ONNX model records, "
        "else the authors' 384,384"
        if onnx
        else "crop the network sees, height,width (authors' run: 384,384)",
    )
    add_label_arguments(parser, data_dir=data_dir)
    parser.add_argument("--batch-size", type=positive_int, default=1, help="images per forward pass")
    parser.add_argument(
        "--workers",
        type=non_negative_int,
        default=recipe.WORKERS,
        help="DataLoader worker processes reading and warping images",
    )
    parser.add_argument(
        "--device", default="auto", help="auto (CUDA when available, else CPU), cpu, cuda, cuda:1, ..."
    )
    if scores:
        parser.add_argument(
            "--amp",
            choices=AMP_MODES,
            default="off",
            help="autocast precision for the network: off (float32: the scores the authors' code "
            "gives, to float rounding), bf16 or fp16 (faster where native; bf16 moved mean IU by "
            "under 0.1 point in bench/RESULTS.md sections 3 and 5)",
        )
    else:
        parser.add_argument(
            "--amp",
            choices=AMP_MODES,
            default=None,
            help="autocast precision for the network: off (float32), bf16 or fp16; default: bf16 "
            "where the device runs it natively, else off (the fastest; printed at the end)",
        )
    parser.add_argument(
        "--flip",
        action="store_true",
        help="flip testing: average with the mirrored image's prediction "
        "(the label set's left/right classes swapped)",
    )
    parser.add_argument(
        "--scales",
        type=parse_scales,
        default=(1.0,),
        metavar="S1,S2,...",
        help="multi-scale testing: average predictions at these input scales, e.g. 0.75,1.0,1.25",
    )
    parser.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run the network in channels-last memory format (faster on recent GPUs and CPUs; same numbers)",
    )
    if onnx:
        parser.add_argument(
            "--fuse",
            action=argparse.BooleanOptionalAction,
            default=True,
            help="fold each InPlace-ABN into the convolution before it (networks/fuse.py): "
            "faster on the CPU, same numbers within float rounding",
        )
        parser.add_argument(
            "--onnx",
            default=None,
            metavar="MODEL.onnx",
            help="run this export.py model on the CPU (onnxruntime or OpenVINO, --runtime) instead of a "
            "checkpoint through PyTorch (in place of --restore-from; --device, --amp, "
            "--channels-last and --fuse do not apply: the model's precision is its own)",
        )
        parser.add_argument(
            "--runtime",
            choices=RUNTIMES,
            default="auto",
            help="with --onnx: auto runs float32 models on onnxruntime and bf16 and int8 models on "
            "OpenVINO where it is installed (its int8 and bf16 kernels are the fast ones)",
        )


def given_labels(args: argparse.Namespace, fail: Fail, *, data_dir: str | None = None) -> LabelSet | None:
    """``--labels``, else ``labels.json`` in ``data_dir`` (None when neither), read before anything
    else, so that a bad set ends the program (``fail(one line, 2)``) before any work."""
    try:
        return given_label_set(args.labels, data_dir)
    except LabelSetError as exc:
        fail(str(exc), 2)
