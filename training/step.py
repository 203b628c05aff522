"""One training step and one epoch of them: forward under autocast, the loss of the five outputs in
float32, backward, a finiteness check agreed by every process, then the SGD update.

``training.trainer`` drives ``train_one_epoch``; tests call ``train_step`` directly (the DDP test
runs it in two gloo processes).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from training.distributed import get_world_size, is_dist_avail_and_initialized
from training.loss import parsing_loss
from training.optim import SGDInBackward
from training.schedule import set_lr
from utils.cli import error_line
from utils.device import autocast
from utils.labels import IGNORE_LABEL

# DFPnet's outputs in the order the network returns them (docs/reference.md section 4).
OUTPUT_NAMES: tuple[str, ...] = ("aux5", "aux4", "aux3", "aux2", "final")


class DataError(RuntimeError):
    """The training data failed between two steps (a picture deleted, truncated or replaced after the
    start-up check): the message is one line naming the file; the weights are those of the last step."""


def _batches(loader):
    """The loader's batches; what goes wrong while loading one is a :class:`DataError`."""
    iterator = iter(loader)
    while True:
        try:
            batch = next(iterator)
        except StopIteration:
            return
        except (OSError, ValueError, RuntimeError) as exc:
            raise DataError(error_line(exc)) from exc
        yield batch


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; raised before the optimizer step, so the weights stay good."""

    def __init__(self, iteration: int, losses: dict[str, float]) -> None:
        self.iteration = iteration  # 0-based index of the failed step
        self.losses = losses
        bad = ", ".join(f"{name}={value}" for name, value in losses.items() if not math.isfinite(value))
        super().__init__(f"non-finite loss in iteration {iteration + 1} (output {bad})")


def output_losses(
    outputs: list[torch.Tensor], labels: torch.Tensor, ignore_label: int = IGNORE_LABEL
) -> torch.Tensor:
    """Cross-entropy of each of DFPnet's outputs, float32, shape ``[len(outputs)]``; the loss is the sum.

    One ``training.loss.parsing_loss`` per output (same resizing and float32 maths), kept apart so a
    non-finite loss can be traced to the output that produced it.
    """
    return torch.stack([parsing_loss([out], labels, ignore_label) for out in outputs])


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    lr: float,
    iteration: int,
    amp: str = "off",
    scaler: torch.amp.GradScaler | None = None,
    ignore_label: int = IGNORE_LABEL,
) -> tuple[list[float], list[torch.Tensor]]:
    """One SGD step at learning rate ``lr``; returns (per-output losses averaged over ranks, outputs).

    The network runs under autocast (``amp``), the loss in float32 outside it. The losses are
    averaged over the processes after backward (its all-reduces are already queued, so this sync
    costs little) and checked there, so every rank raises :class:`NonFiniteLossError` at the
    same step, before ``optimizer.step``: a NaN never reaches the weights. An optimizer that updates
    in backward (:class:`~training.optim.SGDInBackward`, one process) has the losses checked before
    backward instead.
    """
    set_lr(optimizer, lr)
    # Freed before the forward pass, so last step's gradients do not sit beside the activations.
    optimizer.zero_grad(set_to_none=True)
    with autocast(images.device.type, amp):
        outputs = model(images)
    losses = output_losses(outputs, labels, ignore_label)
    total = losses.sum()
    if isinstance(optimizer, SGDInBackward):
        values = losses.detach().tolist()
        _check_finite(values, iteration, optimizer)
        total.backward()  # which updates the weights
        return values, outputs
    (scaler.scale(total) if scaler is not None else total).backward()

    reported = losses.detach().clone()
    if is_dist_avail_and_initialized():
        dist.all_reduce(reported)
        reported /= get_world_size()
    values = reported.tolist()
    _check_finite(values, iteration, optimizer)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    return values, outputs


def _check_finite(values: list[float], iteration: int, optimizer: torch.optim.Optimizer) -> None:
    if not all(math.isfinite(v) for v in values):
        optimizer.zero_grad(set_to_none=True)
        raise NonFiniteLossError(iteration, dict(zip(OUTPUT_NAMES, values)))


@dataclass
class StepInfo:
    """What ``train_one_epoch`` hands its ``on_step`` callback after each step."""

    iteration: int  # steps done over the whole run, this one included
    lr: float
    losses: list[float]  # per output, averaged over ranks
    images: torch.Tensor
    labels: torch.Tensor
    outputs: list[torch.Tensor]
    seconds: float  # wall time of this step, data loading included

    @property
    def loss(self) -> float:
        return float(sum(self.losses))


@dataclass
class EpochStats:
    iterations: int = 0
    images: int = 0  # over all ranks
    loss_sum: float = 0.0
    seconds: float = 0.0
    last_lr: float = 0.0

    @property
    def mean_loss(self) -> float:
        return self.loss_sum / self.iterations if self.iterations else float("nan")

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


def train_one_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loader,
    device: torch.device,
    *,
    iteration: int,
    lr_at: Callable[[int], float],
    amp: str = "off",
    scaler: torch.amp.GradScaler | None = None,
    channels_last: bool = False,
    ignore_label: int = IGNORE_LABEL,
    stop_at: int | None = None,
    on_step: Callable[[StepInfo], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> EpochStats:
    """Run the loader's batches (what is left of an epoch), starting at global step ``iteration``.

    ``lr_at(i)`` gives the learning rate of step ``i``; ``stop_at`` ends the epoch early once that
    many steps are done in total (--max-iters); ``on_step`` logs and saves; ``should_stop``,
    asked after each step, ends the epoch early when it says so (a stop signal).
    """
    model.train()
    stats = EpochStats()
    world = get_world_size()
    tick = time.perf_counter()
    for batch in _batches(loader):
        if stop_at is not None and iteration >= stop_at:
            break
        images, labels = batch[0], batch[1]
        images = images.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        labels = labels.to(device, non_blocking=True)
        lr = lr_at(iteration)
        losses, outputs = train_step(
            model,
            optimizer,
            images,
            labels,
            lr=lr,
            iteration=iteration,
            amp=amp,
            scaler=scaler,
            ignore_label=ignore_label,
        )
        iteration += 1
        now = time.perf_counter()
        stats.iterations += 1
        stats.images += images.shape[0] * world
        stats.loss_sum += sum(losses)
        stats.seconds += now - tick
        stats.last_lr = lr
        if on_step is not None:
            on_step(StepInfo(iteration, lr, losses, images, labels, outputs, now - tick))
        del outputs
        if should_stop is not None and should_stop():
            break
        tick = time.perf_counter()  # saving and logging in on_step do not count as training time
    return stats
