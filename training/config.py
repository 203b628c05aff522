"""The one typed configuration a training run is built from.

From the flags of ``training.flags``, ``setup`` resolves what depends on the
machine (device, precision, memory format, allocator, torchrun's processes) once and returns a
frozen :class:`TrainConfig`. Nothing changes it afterwards: what a run changes as it goes (the
epoch count a --time-budget fixes, the position) lives in the trainer.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch

from training.distributed import Processes, launched_processes
from utils import recipe
from utils.cpu_defaults import cpu_defaults, keep_freed_memory
from utils.device import default_amp, resolve_device


class UsageError(Exception):
    """A flag value that only turns out wrong once the machine or the data is known; exit 2 like argparse."""


@dataclass(frozen=True)
class TrainConfig:
    """Every flag of a run, with the machine-dependent defaults resolved (see :func:`setup`)."""

    data_dir: str
    dataset: str
    batch_size: int
    input_size: tuple[int, int]
    learning_rate: float
    momentum: float
    weight_decay: float
    power: float
    labels: str | None
    num_classes: int | None
    ignore_label: int
    random_seed: int
    restore_from: str
    snapshot_dir: str
    gpu: str | None
    start_epoch: int
    epochs: int | None  # None: --time-budget fixes it after timing the first steps
    save_num_images: int
    resume: str
    device: torch.device
    workers: int
    amp: str  # off, bf16 or fp16
    channels_last: bool
    inplace_abn: str  # auto, on or off, as given
    malloc: str
    malloc_reuse: bool  # glibc keeps freed memory (--malloc reuse on the CPU, where it took; see setup)
    compile: bool
    activation_checkpointing: str  # off, layer3, backbone or all (training.flags.CHECKPOINTED_LAYERS)
    update_in_backward: bool  # training.optim.SGDInBackward
    tune: str  # auto, on or off (training.tune)
    max_memory: float | None  # --tune's memory bound, MiB
    # Set by setup and the tuner, not flags:
    fixed_by_flags: tuple[str, ...]  # of amp, channels_last, inplace, malloc_reuse: given on the command line
    abn_backend: str | None  # InPlace-ABN's backend when the tuner chose one (None: libs' choice)
    deterministic: bool
    eval_every: int | None
    val_datasets: tuple[str, ...]
    eval_input_size: tuple[int, int] | None
    save_every: int
    snapshot_every: int
    log_every: int
    image_every: int
    time_budget: float | None
    max_iters: int | None
    processes: Processes

    @property
    def rank(self) -> int:
        return self.processes.rank

    @property
    def world_size(self) -> int:
        return self.processes.world_size

    @property
    def distributed(self) -> bool:
        return self.processes.distributed

    @property
    def eval_size(self) -> tuple[int, int]:
        return self.eval_input_size or self.input_size

    def record(self) -> dict[str, Any]:
        """The flags as plain types (what ``torch.load(weights_only=True)`` reads back), for last.pth."""

        def plain(value: Any) -> Any:
            if value is None or isinstance(value, (bool, int, float, str)):
                return value
            if isinstance(value, (list, tuple)):
                return [plain(v) for v in value]
            return str(value)

        record = {f.name: plain(getattr(self, f.name)) for f in fields(self) if f.name != "processes"}
        record.update(asdict(self.processes))
        return record


def resolve_training_device(name: str, local_rank: int) -> torch.device:
    """--device, with torchrun's local rank picking the GPU of each process."""
    try:
        device = resolve_device(name)
    except ValueError as exc:
        raise UsageError(f"argument --device: {exc}") from None
    if device.type == "cuda" and device.index is None:
        if local_rank >= torch.cuda.device_count():
            raise UsageError(
                f"local rank {local_rank} has no GPU: {torch.cuda.device_count()} visible "
                f"(check --gpu / CUDA_VISIBLE_DEVICES and --nproc_per_node)"
            )
        device = torch.device("cuda", local_rank)
    return device


def memory_lean(activation_checkpointing: str, update_in_backward: bool) -> bool:
    """Whether a memory-lean flag is on: glibc then keeps one heap for every thread (fewer MiB)."""
    return activation_checkpointing != "off" or update_in_backward


def setup(args: argparse.Namespace) -> TrainConfig:
    """The run's configuration from checked flags; sets up the process for it on the way: --gpu's
    CUDA_VISIBLE_DEVICES, the allocator (before anything is allocated), determinism, cuDNN."""
    if args.gpu is not None:  # before anything touches CUDA, as the authors
        os.environ["CUDA_VISIBLE_DEVICES"] = args.gpu
    processes = launched_processes()
    device = resolve_training_device(args.device, processes.local_rank)
    amp = args.amp or default_amp(device)
    if amp == "fp16" and device.type != "cuda":
        raise UsageError("argument --amp: fp16 needs a CUDA device (its loss scaling); use bf16 on the CPU")
    if args.update_in_backward and processes.distributed:
        raise UsageError(
            "argument --update-in-backward: needs one process (under torchrun, the gradients are "
            "averaged over the processes after backward)"
        )
    if args.update_in_backward and amp == "fp16":
        raise UsageError(
            "argument --update-in-backward: cannot unscale fp16 gradients; use --amp bf16 or off"
        )
    channels_last = args.channels_last
    if channels_last is None:
        channels_last = cpu_defaults().channels_last if device.type == "cpu" else True
    # Before the model and the data allocate anything: glibc reads these on each allocation.
    malloc = args.malloc or "reuse"
    # Left to the tuner (training.tune.apply) when it may choose: it measured glibc untouched, and
    # mallopt cannot give back glibc's adaptive mmap threshold once set.
    decided = args.malloc is not None or args.tune == "off"
    lean = memory_lean(args.activation_checkpointing, args.update_in_backward)
    malloc_reuse = device.type == "cpu" and malloc == "reuse" and decided and keep_freed_memory(lean)
    if args.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        # Some CUDA kernels (bilinear upsampling's backward) have no deterministic version: warn there.
        torch.use_deterministic_algorithms(True, warn_only=device.type == "cuda")
    torch.backends.cudnn.benchmark = device.type == "cuda" and not args.deterministic
    given = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if hasattr(args, f.name)}
    given.update(
        device=device,
        amp=amp,
        channels_last=channels_last,
        malloc=malloc,
        malloc_reuse=malloc_reuse,
        fixed_by_flags=tuple(
            name
            for name, given in (
                ("amp", args.amp is not None),
                ("channels_last", args.channels_last is not None),
                ("inplace", args.inplace_abn != "auto"),
                ("malloc_reuse", args.malloc is not None),
            )
            if given
        ),
        abn_backend=None,
        processes=processes,
        val_datasets=tuple(args.val_datasets),
        epochs=args.epochs or (None if args.time_budget else recipe.EPOCHS),
    )
    return TrainConfig(**given)
