"""When things happen in a run: the learning rate of each step (the authors' poly schedule), which
epochs are evaluated and snapshotted, and how many epochs fit a --time-budget."""

from __future__ import annotations

import torch

from utils import recipe


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


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def evaluation_due(epoch: int, epochs: int, every: int | None = None) -> bool:
    """Is 0-based ``epoch`` evaluated? Every ``every`` epochs counted from 1 (default: the authors'
    cadence, ``recipe.EVAL_EVERY`` and ``recipe.EVAL_EVERY_LATE`` from ``recipe.EVAL_LATE_FROM`` on),
    and after the last of ``epochs``."""
    every = every or (recipe.EVAL_EVERY if epoch < recipe.EVAL_LATE_FROM else recipe.EVAL_EVERY_LATE)
    return (epoch + 1) % every == 0 or epoch == epochs - 1


def snapshot_due(epoch: int, epochs: int, every: int) -> bool:
    """Is ``DFPnet_epoch_<epoch>.pth`` written? When ``epoch % every == 0`` (the authors'), and after
    the last."""
    return epoch % every == 0 or epoch == epochs - 1


def plan_epochs(
    left_s: float,
    *,
    iters_per_epoch: int,
    done: int,
    step_s: float,
    eval_s: float,
    save_s: float,
    eval_every: int | None,
    snapshot_every: int,
) -> tuple[int, float]:
    """The most epochs (at least one) whose remaining work fits in ``left_s`` seconds, and its seconds.

    Counts the steps not yet ``done``, last.pth at each epoch end, each evaluation (``eval_s``,
    0 without evaluation splits) with a best.pth, and the epoch snapshots (weights only: about
    half a last.pth each), under the --eval-every / --snapshot-every rules.
    """

    def seconds(epochs: int) -> float:
        evals = sum(evaluation_due(e, epochs, eval_every) for e in range(epochs)) if eval_s else 0
        snapshots = sum(snapshot_due(e, epochs, snapshot_every) for e in range(epochs))
        return (
            (epochs * iters_per_epoch - done) * step_s
            + epochs * save_s
            + evals * (eval_s + save_s / 2)
            + snapshots * save_s / 2
        )

    epochs = 1
    while seconds(epochs + 1) <= left_s:
        epochs += 1
    return epochs, seconds(epochs)
