"""The training step and what a run needs to stop and continue exactly: LR schedule, seeds, state.

train.py wires these together; tests call them directly (the DDP test runs ``train_step`` in
two gloo processes).
"""
from __future__ import annotations

import contextlib
import math
import random
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset

from utils.distributed import derive_seed, get_world_size, is_dist_avail_and_initialized, launched_rank
from utils.inference import autocast
from utils.labels import IGNORE_LABEL
from utils.loss import parsing_loss

# DFPnet's outputs in the order the network returns them (docs/reference.md section 4).
OUTPUT_NAMES: tuple[str, ...] = ("aux5", "aux4", "aux3", "aux2", "final")


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; raised before the optimizer step, so the weights stay good."""

    def __init__(self, iteration: int, losses: dict[str, float]) -> None:
        self.iteration = iteration  # 0-based index of the failed step
        self.losses = losses
        bad = ", ".join(f"{name}={value}" for name, value in losses.items() if not math.isfinite(value))
        super().__init__(f"non-finite loss in iteration {iteration + 1} (output {bad})")


# ------------------------------------------------------------------------------------------
# Learning rate
# ------------------------------------------------------------------------------------------

def poly_lr(base_lr: float, iteration: int, total_iters: int, power: float = 0.9) -> float:
    """The authors' poly schedule: ``base_lr * (1 - iteration / total_iters) ** power``.

    ``iteration`` counts optimizer steps from 0 over the whole run (all epochs, across resumes),
    and is the step about to be taken: step 0 runs at ``base_lr`` and the last step
    (``total_iters - 1``) at ``base_lr * (1 / total_iters) ** power``, never at 0.
    """
    if total_iters <= 0:
        raise ValueError(f"total_iters must be positive, got {total_iters}")
    progress = min(max(iteration, 0), total_iters) / total_iters
    return base_lr * (1.0 - progress) ** power


def default_inplace_abn(device: torch.device) -> bool:
    """Whether InPlace-ABN runs in place by default (train.py --inplace-abn auto).

    On the CPU in place costs nothing and saves memory. On CUDA the step is bound by kernel
    launches, and the in-place Function's extra small kernels made it slower for a little less
    memory (bench/RESULTS.md section 5), so plain autograd is the default there.
    """
    if device.type == "cuda":
        return False
    from utils.cpu_defaults import cpu_defaults

    return cpu_defaults().inplace


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


# ------------------------------------------------------------------------------------------
# Reproducible augmentation
# ------------------------------------------------------------------------------------------

class SeededSamples(Dataset):
    """A training dataset whose augmentation is a pure function of (seed, epoch, sample index).

    Indexed with the ``(epoch, index)`` pairs of :class:`utils.distributed.EpochShuffleSampler`.
    CartoonDataSet draws its augmentation from the global Python and numpy generators (the
    authors' order); this wrapper seeds both from ``derive_seed(seed, epoch, index)`` for each
    sample and puts the previous generator states back afterwards. So a sample looks the same
    whichever worker, rank or resumed process loads it, which is what lets a run resumed
    mid-epoch (or run with a different --workers) repeat an uninterrupted run exactly.
    """

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset = dataset
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        seed = derive_seed(self.seed, "augment", epoch, index)
        saved_python, saved_numpy = random.getstate(), np.random.get_state()
        random.seed(seed)
        np.random.seed(seed % 2 ** 32)
        try:
            return self.dataset[index]
        finally:
            random.setstate(saved_python)
            np.random.set_state(saved_numpy)


# ------------------------------------------------------------------------------------------
# One step, one epoch
# ------------------------------------------------------------------------------------------

def output_losses(outputs: list[torch.Tensor], labels: torch.Tensor,
                  ignore_label: int = IGNORE_LABEL) -> torch.Tensor:
    """Cross-entropy of each of DFPnet's outputs, float32, shape ``[len(outputs)]``; the loss is the sum.

    One ``utils.loss.parsing_loss`` per output (same resizing and float32 maths), kept apart so a
    non-finite loss can be traced to the output that produced it.
    """
    return torch.stack([parsing_loss([out], labels, ignore_label) for out in outputs])


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor,
               labels: torch.Tensor, *, lr: float, iteration: int, amp: str = "off",
               scaler: torch.amp.GradScaler | None = None,
               ignore_label: int = IGNORE_LABEL) -> tuple[list[float], list[torch.Tensor]]:
    """One SGD step at learning rate ``lr``; returns (per-output losses averaged over ranks, outputs).

    The network runs under autocast (``amp``), the loss in float32 outside it. The losses are
    averaged over the processes after backward (its all-reduces are already queued, so this sync
    costs little) and checked there, so every rank raises :class:`NonFiniteLossError` at the
    same step, before ``optimizer.step``: a NaN never reaches the weights.
    """
    set_lr(optimizer, lr)
    # Freed before the forward pass, so last step's gradients do not sit beside the activations.
    optimizer.zero_grad(set_to_none=True)
    with autocast(images.device.type, amp):
        outputs = model(images)
    losses = output_losses(outputs, labels, ignore_label)
    total = losses.sum()
    (scaler.scale(total) if scaler is not None else total).backward()

    reported = losses.detach().clone()
    if is_dist_avail_and_initialized():
        dist.all_reduce(reported)
        reported /= get_world_size()
    values = reported.tolist()
    if not all(math.isfinite(v) for v in values):
        optimizer.zero_grad(set_to_none=True)
        raise NonFiniteLossError(iteration, dict(zip(OUTPUT_NAMES, values)))
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    return values, outputs


@dataclass
class StepInfo:
    """What ``train_one_epoch`` hands its ``on_step`` callback after each step."""
    iteration: int                # steps done over the whole run, this one included
    epoch: int
    lr: float
    losses: list[float]           # per output, averaged over ranks
    images: torch.Tensor
    labels: torch.Tensor
    outputs: list[torch.Tensor]
    seconds: float                # wall time of this step, data loading included

    @property
    def loss(self) -> float:
        return float(sum(self.losses))


@dataclass
class EpochStats:
    iterations: int = 0
    images: int = 0               # over all ranks
    loss_sum: float = 0.0
    seconds: float = 0.0
    last_lr: float = 0.0
    per_output: list[float] = field(default_factory=list)

    @property
    def mean_loss(self) -> float:
        return self.loss_sum / self.iterations if self.iterations else float("nan")

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


def train_one_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, loader, device: torch.device, *,
                    epoch: int, iteration: int, lr_at: Callable[[int], float], amp: str = "off",
                    scaler: torch.amp.GradScaler | None = None, channels_last: bool = False,
                    ignore_label: int = IGNORE_LABEL, stop_at: int | None = None,
                    on_step: Callable[[StepInfo], None] | None = None,
                    should_stop: Callable[[], bool] | None = None) -> EpochStats:
    """Run the loader's batches (what is left of epoch ``epoch``), starting at global step ``iteration``.

    ``lr_at(i)`` gives the learning rate of step ``i``; ``stop_at`` ends the epoch early once that
    many steps are done in total (--max-iters); ``on_step`` logs and saves; ``should_stop``,
    asked after each step, ends the epoch early when it says so (a stop signal).
    """
    model.train()
    stats = EpochStats()
    world = get_world_size()
    tick = time.perf_counter()
    for batch in loader:
        if stop_at is not None and iteration >= stop_at:
            break
        images, labels = batch[0], batch[1]
        images = images.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        labels = labels.to(device, non_blocking=True)
        lr = lr_at(iteration)
        losses, outputs = train_step(model, optimizer, images, labels, lr=lr, iteration=iteration, amp=amp,
                                     scaler=scaler, ignore_label=ignore_label)
        iteration += 1
        now = time.perf_counter()
        stats.iterations += 1
        stats.images += images.shape[0] * world
        stats.loss_sum += sum(losses)
        stats.seconds += now - tick
        stats.last_lr = lr
        stats.per_output = losses
        if on_step is not None:
            on_step(StepInfo(iteration, epoch, lr, losses, images, labels, outputs, now - tick))
        del outputs
        if should_stop is not None and should_stop():
            break
        tick = time.perf_counter()  # saving and logging in on_step do not count as training time
    return stats


# ------------------------------------------------------------------------------------------
# Stopping on a signal
# ------------------------------------------------------------------------------------------

class StopSignals:
    """SIGINT (Ctrl-C) and SIGTERM (job schedulers, ``docker stop``, ``kill``) as requests to stop.

    The first signal only records itself in ``signum``: the training loop finishes the step it
    is in (a step abandoned half-way could leave the weights half-updated), saves last.pth and
    exits 128 + signum. A second signal abandons the run at once (``KeyboardInterrupt``),
    except while a checkpoint is being written (:meth:`saving`), which it cannot cut short.
    Used as a context manager around the training loop; the previous handlers come back after.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, prog: str = "train.py") -> None:
        self.prog = prog
        self.signum = 0
        self._saving = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():  # Python's rule for handlers
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        if not self.signum:
            self.signum = signum
            if launched_rank() == 0:
                print(f"\n{self.prog}: {signal.Signals(signum).name} received: stopping after this step "
                      f"(send it again to stop at once, without saving)", file=sys.stderr, flush=True)
        elif not self._saving:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def saving(self):
        """A section no signal interrupts (a checkpoint write)."""
        self._saving = True
        try:
            yield
        finally:
            self._saving = False


def ignore_stop_signals(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: a worker leaves stopping to the main process.

    Schedulers signal every process of a job, and a worker that died of SIGTERM or quit on
    SIGINT would make the main process fail in the middle of its orderly stop.
    """
    for sig in StopSignals.SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


# ------------------------------------------------------------------------------------------
# Random generator states (saved in last.pth)
# ------------------------------------------------------------------------------------------

def capture_rng_state(device: torch.device | None = None) -> dict[str, Any]:
    """This process's Python, numpy, torch CPU and (for a CUDA device) CUDA generator states.

    Stored with plain types and tensors only, so ``torch.load(weights_only=True)`` reads them.
    """
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng_state(state: dict[str, Any], device: torch.device | None = None) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    np.random.set_state((np_state["kind"], np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if device is not None and device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def plain_args(args: Any) -> dict[str, Any]:
    """``vars(args)`` with only types ``torch.load(weights_only=True)`` accepts (anything else as str)."""
    def plain(value: Any) -> Any:
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return str(value)
    return {key: plain(value) for key, value in vars(args).items()}
