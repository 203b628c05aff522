"""When things happen in a run: the learning rate of each step (the authors' poly schedule), which
epochs are evaluated and snapshotted, and how many iterations fit a --time-budget."""

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


def plan_iterations(
    left_s: float,
    *,
    iters_per_epoch: int,
    done: int,
    next_end: int,
    step_s: float,
    eval_s: float,
    save_s: float,
    eval_every: int | None,
    snapshot_every: int,
) -> tuple[int, float]:
    """The iterations in all (at least ``done``) whose remaining work ends closest to ``left_s``
    seconds from now, and the seconds that work takes: the most that fit, or one more step where
    that overshoots by less than the most that fit fall short (a slow CPU's step, or the epoch end
    one more step brings, can be seconds long).

    The last epoch may be partial: the run ends wherever the budget does. The work counted: the
    steps after ``done``, and at each epoch end from 0-based epoch ``next_end`` on (the first whose
    end has not been processed), last.pth (``save_s``), the evaluation if one is due (``eval_s``, 0
    without evaluation splits) with a best.pth, and the epoch snapshot if one is due (weights only:
    about half a last.pth), under the --eval-every / --snapshot-every rules; the last epoch, whole
    or not, is evaluated and snapshotted.
    """
    ipe, step_s = iters_per_epoch, max(step_s, 1e-6)  # a step takes time: the search below ends

    def end_cost(epoch: int, last: bool) -> float:
        evaluated = eval_s > 0 and (last or evaluation_due(epoch, epoch + 2, eval_every))
        snapshot = last or snapshot_due(epoch, epoch + 2, snapshot_every)
        return save_s + (eval_s + save_s / 2 if evaluated else 0.0) + (save_s / 2 if snapshot else 0.0)

    def seconds(total: int) -> float:
        epochs = max(next_end + 1, -(-total // ipe))
        ends = sum(end_cost(e, False) for e in range(next_end, epochs - 1))
        return (total - done) * step_s + ends + end_cost(epochs - 1, True)

    best = done  # nothing fits: stop now, with the last epoch end
    ends = 0.0  # the epoch ends before the last one, next_end .. epochs - 2
    epochs = max(next_end + 1, -(-done // ipe))
    while True:
        last = end_cost(epochs - 1, True)
        first = max(done, (epochs - 1) * ipe + 1)  # the fewest iterations that end in this epoch
        if (first - done) * step_s + ends + last > left_s:
            break
        best = min(epochs * ipe, done + int((left_s - ends - last) / step_s))
        ends += end_cost(epochs - 1, False)
        epochs += 1
    under, over = left_s - seconds(best), seconds(best + 1) - left_s
    return (best + 1, seconds(best + 1)) if over < under else (best, seconds(best))
