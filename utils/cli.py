"""Command-line pieces shared by evaluate.py, parse_images.py, train.py and bench/.

argparse number and list types, the prediction flags, and the set-up both prediction scripts do
before their loop (device, precision, network). torch is imported only inside the functions that
need a device or a PyTorch model: ``parse_images.py --onnx`` parses its arguments with this module
where torch is not installed.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, NoReturn

from utils import recipe
from utils.labels import (
    DOG,
    PRESETS,
    LabelSet,
    LabelSetError,
    check_flags,
    check_same_classes,
    given_label_set,
)

if TYPE_CHECKING:
    import torch
    from torch import nn

    from utils.checkpoint import Weights
    from utils.onnx_infer import OnnxModel

AMP_MODES = ("off", "bf16", "fp16")


# --------------------------------------------------------------------------------------------
# Errors for people: one line, the file first
# --------------------------------------------------------------------------------------------

def first_line(exc: BaseException, default: str | None = None) -> str:
    """The first line of an exception's message (``default``, else its type name, when it has none)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else (default or type(exc).__name__)


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
        return f"{folder}: cannot create the output folder: {exc.strerror or exc}"
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


def add_label_arguments(parser: argparse.ArgumentParser, *, data_dir: bool = True,
                        stored: bool = True) -> None:
    """``--labels`` and ``--num-classes``, with where the set comes from when ``--labels`` is not given:
    ``labels.json`` in the data folder (``data_dir``), the checkpoint's or model's own set (``stored``),
    the Dog set."""
    fallbacks = (["labels.json in --data-dir"] if data_dir else []) \
        + (["the set stored with the checkpoint or ONNX model"] if stored else []) + ["dog"]
    parser.add_argument("--labels", default=None, metavar="NAME|PATH",
                        help=f"label set (class names, left/right flip pairs, colours; docs/labels.md): a "
                             f"preset ({', '.join(PRESETS)}) or a labels.json (or a folder holding one); "
                             f"default: {', else '.join(fallbacks)}")
    parser.add_argument("--num-classes", type=positive_int, default=None,
                        help="number of classes, background included: derived from the label set; given, it "
                             "must agree with it (a check)")


def add_inference_arguments(parser: argparse.ArgumentParser, *, onnx: bool = False,
                            data_dir: bool = False) -> None:
    """The prediction flags evaluate.py and parse_images.py share; ``onnx`` adds ``--onnx`` and ``--fuse``."""
    parser.add_argument("--input-size", type=parse_size, default=recipe.INPUT_SIZE, metavar="H,W",
                        help="crop the network sees, height,width (authors' run: 384,384)")
    add_label_arguments(parser, data_dir=data_dir)
    parser.add_argument("--batch-size", type=positive_int, default=1, help="images per forward pass")
    parser.add_argument("--workers", type=non_negative_int, default=2,
                        help="DataLoader worker processes reading and warping images")
    parser.add_argument("--device", default="auto",
                        help="auto (CUDA when available, else CPU), cpu, cuda, cuda:1, ...")
    parser.add_argument("--amp", choices=AMP_MODES, default=None,
                        help="autocast precision for the network: off (float32), bf16 or fp16; default bf16 "
                             "where the device runs it natively, else off (bf16 moves mean IU by under "
                             "0.1 point, see bench/RESULTS.md; --amp off reproduces float32 exactly)")
    parser.add_argument("--flip", action="store_true",
                        help="flip testing: average with the mirrored image's prediction "
                             "(the label set's left/right classes swapped)")
    parser.add_argument("--scales", type=parse_scales, default=(1.0,), metavar="S1,S2,...",
                        help="multi-scale testing: average predictions at these input scales, "
                             "e.g. 0.75,1.0,1.25")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                        help="run the network in channels-last memory format (faster on recent GPUs "
                             "and CPUs; same numbers)")
    if onnx:
        parser.add_argument("--fuse", action=argparse.BooleanOptionalAction, default=True,
                            help="fold each InPlace-ABN into the convolution before it (networks/fuse.py): "
                                 "faster on the CPU, same numbers within float rounding")
        parser.add_argument("--onnx", default=None, metavar="MODEL.onnx",
                            help="run this export.py model through onnxruntime on the CPU instead of a "
                                 "checkpoint through PyTorch (in place of --restore-from; --device, --amp, "
                                 "--channels-last and --fuse do not apply)")


def default_amp(device: torch.device) -> str:
    """bf16 where it is native: GPUs with bf16 and CPUs with AVX512-BF16/AMX; float32 elsewhere."""
    import torch

    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "off"
    from utils.cpu_defaults import cpu_defaults

    return cpu_defaults().amp


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA if available, else CPU; anything else is checked so a typo fails clearly."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ValueError(f"--device {name!r} is not a device (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name}: CUDA is not available in this PyTorch/on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) visible")
    return device


def load_model(weights: Weights, num_classes: int, device: torch.device, *,
               channels_last: bool = False, fuse: bool = False) -> nn.Module:
    """DFPNet with ``num_classes`` outputs and the checkpoint's ``weights``, on ``device``, in eval mode.

    ``fuse`` returns ``networks.fuse.fuse_for_inference`` of it (InPlace-ABN folded into the
    convolutions; inference only). Raises ``utils.checkpoint.CheckpointError`` (one line naming
    the file and the keys) when the weights do not fit.
    """
    import torch

    from networks.dfpnet import DFPNet
    from utils.checkpoint import load_state_dict_strict

    model = DFPNet(num_classes=num_classes)
    load_state_dict_strict(model, weights.state, weights.path)
    model.eval()
    if fuse:
        from networks.fuse import fuse_for_inference

        model = fuse_for_inference(model)
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return model


# --------------------------------------------------------------------------------------------
# The set-up evaluate.py and parse_images.py share: a device first (cheap, fails early), the
# network later (after each script's own checks of its inputs).
# --------------------------------------------------------------------------------------------

Fail = Callable[..., NoReturn]


def setup_device(args: argparse.Namespace, fail: Fail) -> torch.device | None:
    """The device of ``--device`` and the precision of ``--amp`` (default: native bf16, else off).

    With ``--onnx`` onnxruntime runs on the CPU in float32: no torch device (None), amp "off".
    A bad ``--device`` ends the program through ``fail(message, 2)``.
    """
    if getattr(args, "onnx", None):
        args.amp = "off"
        return None
    try:
        device = resolve_device(args.device)
    except ValueError as exc:
        fail(str(exc), 2)
    if args.amp is None:
        args.amp = default_amp(device)
    return device


def read_network(args: argparse.Namespace, fail: Fail) -> Weights | OnnxModel:
    """The network ``args`` name, read but not built: ``--onnx`` as a ``utils.onnx_infer.OnnxModel``,
    else the checkpoint of ``--restore-from`` as ``utils.checkpoint.Weights`` (read once, on the CPU).

    An unusable file ends the program through ``fail(one line naming it, 2)``.
    """
    if getattr(args, "onnx", None):
        from utils.onnx_infer import OnnxModel, OnnxModelError

        try:
            return OnnxModel(args.onnx)
        except OnnxModelError as exc:
            fail(str(exc), 2)
    from utils.checkpoint import CheckpointError, read_weights

    try:
        return read_weights(args.restore_from)
    except CheckpointError as exc:
        fail(str(exc), 2)


def given_labels(args: argparse.Namespace, fail: Fail, *, data_dir: str | None = None) -> LabelSet | None:
    """``--labels``, else ``labels.json`` in ``data_dir`` (None when neither), read before anything
    else, so that a bad set ends the program (``fail(one line, 2)``) before any work."""
    try:
        return given_label_set(args.labels, data_dir)
    except LabelSetError as exc:
        fail(str(exc), 2)


def network_label_set(args: argparse.Namespace, network: Weights | OnnxModel, given: LabelSet | None,
                      fail: Fail) -> LabelSet:
    """The label set to predict with: ``given`` (see :func:`given_labels`), else the set the network
    records, else the Dog set; it must be the network's classes, and agree with ``--num-classes`` and
    ``--ignore-label`` where given. A problem ends the program through ``fail(one line, 2)``."""
    if hasattr(network, "state"):  # a checkpoint
        from networks.dfpnet import DFPNet

        what, count = f"the checkpoint {network.path}", DFPNet.classes_in(network.state)
    else:
        what, count = f"the ONNX model {network.path}", network.num_classes
    label_set = given or network.label_set or DOG
    try:
        check_flags(label_set, args.num_classes, getattr(args, "ignore_label", None))
        recorded = None if label_set is network.label_set else network.label_set
        check_same_classes(label_set, recorded, count, what)
    except LabelSetError as exc:
        fail(str(exc), 2)
    return label_set


def setup_model(args: argparse.Namespace, network: Weights | OnnxModel, label_set: LabelSet,
                device: torch.device | None, fail: Fail) -> nn.Module | OnnxModel:
    """The network of :func:`read_network`, ready to predict: an ``OnnxModel`` as it is, a checkpoint as
    an eval-mode DFPNet for ``label_set`` on ``device`` (folded with ``--fuse``).

    Weights that do not fit end the program through ``fail(one line naming the file, 2)``.
    """
    if not hasattr(network, "state"):
        return network
    import torch

    from utils.checkpoint import CheckpointError

    try:
        model = load_model(network, label_set.num_classes, device, channels_last=args.channels_last,
                           fuse=getattr(args, "fuse", False))
    except CheckpointError as exc:
        fail(str(exc), 2)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # one fixed crop size: let cuDNN pick its kernels once
    return model
