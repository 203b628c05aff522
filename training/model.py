"""The network of a training run: DFPnet for the label set's classes, its initial weights (ImageNet
backbone, a whole checkpoint to fine-tune, random, or the training state it resumes), its
InPlace-ABN mode, DDP / torch.compile wrapping, and the optimizer."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import torch

from libs import InPlaceABN, set_inplace
from networks.dfpnet import DFPNet
from networks.init import init_from_scratch
from training import distributed as du
from training.config import TrainConfig
from training.flags import CHECKPOINTED_LAYERS
from training.optim import SGDInBackward
from training.snapshots import read_training_state
from utils.checkpoint import Weights, load_imagenet_backbone, load_state_dict_strict, read_weights
from utils.cpu_defaults import cpu_defaults
from utils.device import compile_model
from utils.labels import LabelSet

LOUD = "*" * 78


def default_inplace_abn(device: torch.device) -> bool:
    """Whether InPlace-ABN runs in place by default (train.py --inplace-abn auto).

    On the CPU in place costs nothing and saves memory. On CUDA the step is bound by kernel
    launches, and the in-place Function's extra small kernels made it slower for a little less
    memory (bench/RESULTS.md section 5), so plain autograd is the default there.
    """
    if device.type == "cuda":
        return False
    return cpu_defaults().inplace


def initialise_weights(model: torch.nn.Module, restore_from: str, label_set: LabelSet) -> str:
    """--restore-from: ImageNet backbone, or a whole DFPnet checkpoint (of another label set: all but the
    classifiers); a missing file is loud, not fatal. Returns where the weights came from, for the log."""
    if restore_from.lower() in ("", "none") or not os.path.isfile(restore_from):
        init_from_scratch(model)
    if restore_from.lower() in ("", "none"):
        return "random initialisation (--restore-from none)"
    if not os.path.isfile(restore_from):
        if du.launched_rank() == 0:
            lines = [
                f"--restore-from {restore_from}: FILE NOT FOUND.",
                "Training starts from RANDOM weights: expect far lower accuracy than the paper's.",
                "Put resnet101-imagenet.pth there (see Trained_Models/README.md), or pass",
                "--restore-from none to train from scratch on purpose.",
            ]
            print(
                "\n".join([LOUD] + [f"WARNING: {line}" for line in lines] + [LOUD]),
                file=sys.stderr,
                flush=True,
            )
        return f"RANDOM initialisation ({restore_from} not found)"
    weights = read_weights(restore_from)
    if any(key.startswith("outc.") for key in weights.state):  # a whole DFPnet: fine-tune / continue from it
        return fine_tune_from(model, weights, label_set)
    del weights
    # The backbone from ImageNet, the rest PyTorch's default init: the authors' recipe.
    loaded, total = load_imagenet_backbone(model, restore_from)
    return f"ImageNet backbone from {restore_from} ({loaded} of {total} tensors)"


def fine_tune_from(model: torch.nn.Module, weights: Weights, label_set: LabelSet) -> str:
    """A whole DFPnet checkpoint: every weight when it predicts this run's classes; else every layer but
    the classifiers, which keep their fresh initialisation (named in one printed line)."""
    count = DFPNet.classes_in(weights.state)
    other = weights.label_set
    if (other is None or other.same_classes(label_set)) and count == label_set.num_classes:
        load_state_dict_strict(model, weights.state, weights.path)
        return f"all weights from {weights.path}"
    load_state_dict_strict(model, weights.state, weights.path, skip=DFPNet.CLASSIFIERS)
    was = f"{other.num_classes} classes: {other.names_text()}" if other else f"{count} classes"
    du.log(
        f"--restore-from {weights.path}: trained with another label set ({was}) than this run's "
        f"({label_set.describe()}): loaded every layer but the class-specific ones, which start anew: "
        f"{', '.join(DFPNet.CLASSIFIERS)} re-initialised"
    )
    return f"weights from {weights.path}, classifiers {', '.join(DFPNet.CLASSIFIERS)} re-initialised"


@dataclass
class Network:
    model: torch.nn.Module  # the weights: what is saved and evaluated (no DDP wrapper)
    train_model: torch.nn.Module  # what a step runs: `model` inside DDP and/or torch.compile
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    inplace: bool  # InPlace-ABN in place (else the same math under plain autograd)
    init_note: str  # where the weights came from, for the log


def build_model(
    cfg: TrainConfig, resume_path: str | None, label_set: LabelSet
) -> tuple[Network, dict | None]:
    """DFPnet for the label set's classes with its initial weights (or those of the training state it
    resumes), on the device, wrapped for DDP / compile, and its optimizer. Returns the network and the
    training state read (None when not resuming)."""
    torch.manual_seed(cfg.random_seed)  # the same initial weights in every process
    model = DFPNet(num_classes=label_set.num_classes)
    # In the authors' checkpoints but never used in forward: frozen, so DDP does not wait for its
    # gradients (it would otherwise need find_unused_parameters, a graph walk per step).
    model.layer5_pred3x3.requires_grad_(False)
    inplace = default_inplace_abn(cfg.device) if cfg.inplace_abn == "auto" else cfg.inplace_abn == "on"
    set_inplace(model, inplace)
    if cfg.abn_backend:  # the tuner's choice
        for layer in model.modules():
            if isinstance(layer, InPlaceABN):
                layer.backend = cfg.abn_backend
    model.set_activation_checkpointing(CHECKPOINTED_LAYERS[cfg.activation_checkpointing])
    state = read_training_state(resume_path, model, label_set) if resume_path else None
    init_note = (
        f"resumed from {resume_path}" if state else initialise_weights(model, cfg.restore_from, label_set)
    )
    model.to(cfg.device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    train_model = model
    if cfg.distributed:
        train_model = torch.nn.parallel.DistributedDataParallel(
            model,
            device_ids=[cfg.device.index] if cfg.device.type == "cuda" else None,
            gradient_as_bucket_view=True,
        )
    if cfg.compile:
        train_model = compile_model(train_model)
    optimizer_class = SGDInBackward if cfg.update_in_backward else torch.optim.SGD
    optimizer = optimizer_class(
        [p for p in model.parameters() if p.requires_grad],
        lr=cfg.learning_rate,
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
    )
    scaler = torch.amp.GradScaler("cuda") if cfg.amp == "fp16" else None
    return Network(model, train_model, optimizer, scaler, inplace, init_note), state
