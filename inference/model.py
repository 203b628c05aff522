"""The network a prediction script runs, from its flags: the set-up evaluate.py and parse_images.py share.

A device first (cheap, fails early), the network later, after each script's own checks of its
inputs: ``setup_device``, ``read_network`` (a checkpoint as ``utils.checkpoint.Weights`` or an
ONNX model as ``inference.onnx_infer.OnnxModel``), ``network_label_set`` (which classes it
predicts) and ``setup_model`` (ready to predict). ``load_model`` builds an eval-mode DFPNet.

parse_images.py --onnx runs where torch is not installed, through this module: torch, the
network and onnxruntime are imported inside the functions of the path that needs them.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from utils import recipe
from utils.cli import Fail
from utils.labels import DOG, LabelSet, LabelSetError, check_flags, check_same_classes

if TYPE_CHECKING:
    import torch
    from torch import nn

    from inference.onnx_infer import OnnxModel
    from utils.checkpoint import Weights


def load_model(
    weights: Weights,
    num_classes: int,
    device: torch.device,
    *,
    channels_last: bool = False,
    fuse: bool = False,
) -> nn.Module:
    """DFPNet with ``num_classes`` outputs and the checkpoint's ``weights``, on ``device``, in eval mode.

    ``fuse`` returns ``networks.fuse.fuse_for_inference`` of it (InPlace-ABN folded into the
    convolutions; inference only). Raises ``utils.checkpoint.CheckpointError`` (one line naming
    the file and the keys) when the weights do not fit.
    """
    import torch  # not on the --onnx path, which runs without torch

    from networks.dfpnet import DFPNet
    from utils.checkpoint import load_state_dict_strict

    model = DFPNet(num_classes=num_classes)
    load_state_dict_strict(model, weights.state, weights.path)
    model.eval()
    if fuse:
        from networks.fuse import fuse_for_inference  # torch: not on the --onnx path

        model = fuse_for_inference(model)
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def setup_device(args: argparse.Namespace, fail: Fail) -> torch.device | None:
    """The device of ``--device`` and the precision of ``--amp`` (default: native bf16, else off).

    With ``--onnx`` the model runs on the CPU at its own precision: no torch device (None), amp "off".
    A bad ``--device`` ends the program through ``fail(message, 2)``.
    """
    if getattr(args, "onnx", None):
        args.amp = "off"
        return None
    from utils.device import default_amp, resolve_device  # torch: not on the --onnx path

    try:
        device = resolve_device(args.device)
    except ValueError as exc:
        fail(str(exc), 2)
    if args.amp is None:
        args.amp = default_amp(device)
    return device


def read_network(args: argparse.Namespace, fail: Fail) -> Weights | OnnxModel:
    """The network ``args`` name, read but not built: ``--onnx`` as a ``inference.onnx_infer.OnnxModel``,
    else the checkpoint of ``--restore-from`` as ``utils.checkpoint.Weights`` (read once, on the CPU).

    An unusable file ends the program through ``fail(one line naming it, 2)``.
    """
    if getattr(args, "onnx", None):
        from inference.onnx_infer import OnnxModel, OnnxModelError  # onnxruntime: only with --onnx

        try:
            return OnnxModel(args.onnx, runtime=getattr(args, "runtime", "auto"))
        except OnnxModelError as exc:
            fail(str(exc), 2)
    if getattr(args, "runtime", "auto") != "auto":
        fail(f"--runtime {args.runtime}: applies to --onnx models only; a checkpoint runs on PyTorch", 2)
    from utils.checkpoint import CheckpointError, read_weights  # torch: not on the --onnx path

    try:
        return read_weights(args.restore_from)
    except CheckpointError as exc:
        fail(str(exc), 2)


def network_input_size(args: argparse.Namespace, network: Weights | OnnxModel) -> tuple[int, int]:
    """``--input-size``, else the crop the checkpoint or ONNX model records (the one its run evaluated
    at), else the authors' 384x384 (their files record none); set on ``args`` and returned."""
    if args.input_size is None:
        args.input_size = network.input_size or recipe.INPUT_SIZE
    return args.input_size


def network_label_set(
    args: argparse.Namespace, network: Weights | OnnxModel, given: LabelSet | None, fail: Fail
) -> LabelSet:
    """The label set to predict with: ``given`` (see :func:`given_labels`), else the set the network
    records, else the Dog set; it must be the network's classes, and agree with ``--num-classes`` and
    ``--ignore-label`` where given. A problem ends the program through ``fail(one line, 2)``."""
    if hasattr(network, "state"):  # a checkpoint
        from networks.dfpnet import DFPNet  # torch: not on the --onnx path

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


def setup_model(
    args: argparse.Namespace,
    network: Weights | OnnxModel,
    label_set: LabelSet,
    device: torch.device | None,
    fail: Fail,
) -> nn.Module | OnnxModel:
    """The network of :func:`read_network`, ready to predict: an ``OnnxModel`` as it is, a checkpoint as
    an eval-mode DFPNet for ``label_set`` on ``device`` (folded with ``--fuse``).

    Weights that do not fit, or an ONNX model that cannot run the flags (a labels output with
    --flip/--scales, a --static model at another batch or size), end the program through
    ``fail(one line naming the file, 2)``.
    """
    if not hasattr(network, "state"):  # an OnnxModel: refuse now what it would fail on mid-run
        problem = network.unusable_with(
            batch_size=args.batch_size,
            input_size=args.input_size,
            flip=args.flip,
            scales=args.scales,
            min_confidence=getattr(args, "min_confidence", None),
        )
        if problem:
            fail(problem, 2)
        if network.note:  # e.g. a bf16 model where bf16 is not native: it runs, and says so
            print(f"{network.path}: {network.note}")
        return network
    import torch  # a checkpoint: the PyTorch path

    from utils.checkpoint import CheckpointError  # torch: a checkpoint is the PyTorch path

    try:
        model = load_model(
            network,
            label_set.num_classes,
            device,
            channels_last=args.channels_last,
            fuse=getattr(args, "fuse", False),
        )
    except CheckpointError as exc:
        fail(str(exc), 2)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # one fixed crop size: let cuDNN pick its kernels once
    return model
