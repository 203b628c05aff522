"""The snapshot folder of a training run: its lock, the resume state and the checkpoints.

One home for everything train.py keeps on disk::

    <snapshot-dir>/.lock                  held by the run writing here (one run per folder)
    <snapshot-dir>/last.pth               the full training state that --resume continues from
    <snapshot-dir>/best.pth               weights with the best val mean IU so far
    <snapshot-dir>/DFPnet_epoch_<e>.pth   the authors' format (DataParallel keys, ``module.`` prefix)

and resuming, all of it here: which file a run continues from (``find_resume``), reading it
(``read_training_state``), where it continues (``resume_position``: the resume rule when the run's
shape changed) and putting back the optimizer, the random states and the best score
(``restore_training_state``).
Every write goes through :func:`utils.checkpoint.save_atomic` (temporary file, then rename), so
a run killed mid-save leaves the previous file whole, and every file records the run's label set
(:func:`utils.checkpoint.with_label_set`).
"""

from __future__ import annotations

import errno
import fcntl
import os
import random
import shutil
import socket
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from training import distributed as du
from utils.checkpoint import (
    CheckpointError,
    extract_state_dict,
    load_state_dict_strict,
    read_checkpoint,
    save_atomic,
    stored_label_set,
    with_label_set,
)
from utils.files import write_error
from utils.labels import LabelSet

LOCK_NAME = ".lock"
LAST_NAME = "last.pth"
BEST_NAME = "best.pth"


def epoch_snapshot_name(epoch: int) -> str:
    """The authors' name for the weights after 0-based epoch ``epoch``."""
    return f"DFPnet_epoch_{epoch}.pth"


# ------------------------------------------------------------------------------------------
# One run per folder
# ------------------------------------------------------------------------------------------


class SaveError(Exception):
    """A checkpoint could not be written (disk full, quota, read-only, permission): one line naming the
    file and the errno. The file's previous version, if any, is intact and no temporary file is left."""


class SnapshotDirBusy(Exception):
    """Another live process holds the folder's lock; the message names the folder and the holder."""


class SnapshotLock:
    """An exclusive ``flock`` on ``<folder>/.lock`` for the whole run.

    The kernel drops the lock when its process dies, however it dies, so a killed run never
    leaves a stale lock: the file may stay, but it blocks nobody. Readers (evaluate.py,
    TensorBoard) never take it and are never blocked. The holder writes its pid and host into
    the file, so the process that is refused can say who holds the folder.
    """

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self.path = os.path.join(folder, LOCK_NAME)
        self._fd: int | None = None
        self._created_folder = False

    def acquire(self) -> None:
        self._created_folder = not os.path.isdir(self.folder)
        os.makedirs(self.folder, exist_ok=True)
        # Not O_TRUNC: a refused process must not wipe the holder's pid and host.
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 256, 0).decode("utf-8", "replace").strip() or "a process that gave no pid"
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise SnapshotDirBusy(
                f"{self.folder} is in use by another training run ({holder}); wait for it "
                f"to end, stop it, or choose another --snapshot-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on host {socket.gethostname()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Unlock; a folder this lock created and that holds nothing else is removed again."""
        if self._fd is None:
            return
        if self._created_folder and os.listdir(self.folder) == [LOCK_NAME]:
            os.unlink(self.path)
            os.rmdir(self.folder)
        os.close(self._fd)  # closing the last descriptor releases the flock
        self._fd = None

    def __enter__(self) -> SnapshotLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def lock_for_run(folder: str) -> SnapshotLock | None:
    """Rank 0 takes the folder's lock; every rank learns whether it got it.

    Returns the held lock on rank 0 (``None`` on the others) or raises :class:`SnapshotDirBusy`
    on every rank, so that no process goes on to wait in a collective for one that stopped.
    """
    lock, refusal = None, [None]
    if du.is_main_process():
        lock = SnapshotLock(folder)
        try:
            lock.acquire()
        except (SnapshotDirBusy, OSError) as exc:
            lock, refusal = (
                None,
                [
                    str(exc)
                    if isinstance(exc, SnapshotDirBusy)
                    else f"{folder}: cannot create its lock file ({exc.strerror})"
                ],
            )
    if du.is_dist_avail_and_initialized():
        torch.distributed.broadcast_object_list(refusal, src=0)
    if refusal[0] is not None:
        raise SnapshotDirBusy(refusal[0])
    return lock


# ------------------------------------------------------------------------------------------
# Writing
# ------------------------------------------------------------------------------------------


class Snapshots:
    """The files of one snapshot folder, written from rank 0 only (every rank holds the same weights),
    each recording ``label_set``."""

    def __init__(self, folder: str, label_set: LabelSet, input_size: tuple[int, int] | None = None) -> None:
        self.folder = folder
        self.label_set = label_set
        self.input_size = input_size  # the crop the run evaluates at, recorded beside the label set
        self.last_path = os.path.join(folder, LAST_NAME)
        self.best_path = os.path.join(folder, BEST_NAME)
        self.last_saved: int | None = None  # iteration of the last.pth this run wrote

    @staticmethod
    def _save(obj: Any, path: str) -> None:
        if not du.is_main_process():
            return
        try:
            save_atomic(obj, path)
        except OSError as exc:
            raise SaveError(str(write_error(path, exc))) from None

    def save_last(self, state: dict[str, Any]) -> None:
        state = dict(state, model=with_label_set(state["model"], self.label_set, self.input_size))
        self._save(state, self.last_path)
        self.last_saved = int(state["iteration"])

    def save_best(self, model: nn.Module) -> None:
        self._save(with_label_set(model.state_dict(), self.label_set, self.input_size), self.best_path)

    def save_epoch(self, model: nn.Module, epoch: int) -> None:
        # The authors trained under DataParallel: every key of their files starts with `module.`.
        state = {f"module.{k}": v for k, v in model.state_dict().items()}
        self._save(
            with_label_set(state, self.label_set, self.input_size),
            os.path.join(self.folder, epoch_snapshot_name(epoch)),
        )

    def space_warning(self, model: nn.Module) -> str | None:
        """One line when the folder's free space is below what the next saves need, else None.

        A save writes a temporary file beside the file it replaces, so the next last.pth needs its
        whole size free (the weights plus SGD's momentum of the trainable ones), and the best.pth or
        epoch snapshot after it the weights' size again. The run's lock has created the folder.
        """
        weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
        trainable = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
        need = 2 * weights + trainable
        free = shutil.disk_usage(self.folder).free
        if free >= need:
            return None
        return (
            f"{self.folder}: {free / 2**20:.0f} MiB free, the next saves need about {need / 2**20:.0f} MiB "
            f"(last.pth, then best.pth or an epoch snapshot): a full disk would stop the run at its save"
        )

    def where(self) -> str:
        """What a stopped run leaves to continue from, for its last message."""
        if self.last_saved is None:
            return "nothing was saved by this run"
        return f"{self.last_path} holds iteration {self.last_saved}"


def training_state(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: Any,
    *,
    epoch: int,
    iteration: int,
    schedule: dict[str, Any],
    rng: list[dict],
    best: dict[str, Any],
    args: dict[str, Any],
) -> dict[str, Any]:
    """What last.pth holds: enough to continue the run exactly (see :func:`resume_position`).

    ``epoch`` is the epoch the run continues with; ``rng`` every process's random states;
    ``schedule`` the poly schedule (base_lr, power, total_iters, iters_per_epoch).
    """
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "epoch": epoch,
        "iteration": iteration,
        "schedule": schedule,
        "rng": rng,
        "best": best,
        "world_size": len(rng),
        "args": args,
    }


# ------------------------------------------------------------------------------------------
# Reading and the resume rule
# ------------------------------------------------------------------------------------------


def find_resume(resume: str, folder: str) -> str | None:
    """--resume: ``auto`` = the folder's last.pth if there is one; ``none``; or a path (must exist)."""
    if resume.lower() == "none":
        return None
    if resume.lower() == "auto":
        path = os.path.join(folder, LAST_NAME)
        return path if os.path.isfile(path) else None
    if not os.path.isfile(resume):
        raise FileNotFoundError(f"{resume}: no such file")
    return resume


def read_training_state(path: str, model: nn.Module, label_set: LabelSet) -> dict[str, Any]:
    """A training state (last.pth) of a run with ``label_set``: its weights go into ``model``; the rest is
    returned. A state of another label set is refused (CheckpointError)."""
    state = read_checkpoint(path)
    if not isinstance(state, dict) or "optimizer" not in state or "iteration" not in state:
        raise CheckpointError(
            f"{path}: holds weights only, not a training state to resume "
            f"(pass it as --restore-from, or --resume none)"
        )
    stored = stored_label_set(state, path)
    if stored is not None and not stored.same_classes(label_set):
        raise CheckpointError(
            f"{path}: the run it continues has {stored.num_classes} classes "
            f"({stored.names_text()}), this one {label_set.describe()} "
            f"({label_set.names_text()}): --resume none to start anew, or another "
            f"--snapshot-dir (to fine-tune from it: --restore-from {path})"
        )
    load_state_dict_strict(model, extract_state_dict(state, path), path)
    return state


def resume_position(
    state: dict[str, Any], path: str, iters_per_epoch: int, total_iters: int, warn: Callable[[str], None]
) -> int:
    """The iteration to continue from.

    The same run shape continues exactly where it stopped. Another number of iterations per
    epoch (other --batch-size or process count) cannot match the interrupted epoch's batches,
    so that epoch starts over; another total (other --epochs) stretches the LR schedule from
    here on. Both are warned about.
    """
    iteration = int(state["iteration"])
    saved = state.get("schedule", {})
    if saved.get("iters_per_epoch") != iters_per_epoch:
        epoch = int(state.get("epoch", 0))
        warn(
            f"{path} was saved with {saved.get('iters_per_epoch')} iterations per epoch, this run has "
            f"{iters_per_epoch} (other --batch-size or process count): epoch {epoch} starts over"
        )
        return epoch * iters_per_epoch
    if saved.get("total_iters") != total_iters:
        warn(
            f"{path}: the run had {saved.get('total_iters')} iterations in all, this one has {total_iters} "
            f"(other --epochs): the LR schedule is stretched from here on"
        )
    return iteration


def restore_training_state(
    state: dict[str, Any],
    path: str,
    *,
    optimizer: torch.optim.Optimizer,
    scaler: Any,
    device: torch.device,
    seed: int,
    rank: int,
    world_size: int,
    iters_per_epoch: int,
    total_iters: int | None,
) -> tuple[int, dict[str, Any]]:
    """Put a training state read by :func:`read_training_state` back (its weights already are): the
    optimizer, the loss scaler and this process's random states. Returns the iteration to continue
    from (:func:`resume_position`) and the best score so far."""
    optimizer.load_state_dict(state["optimizer"])
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    iteration = resume_position(state, path, iters_per_epoch, total_iters, du.warn)
    rng = state.get("rng") or []
    if len(rng) == world_size:
        restore_rng_state(rng[rank], device)
    else:
        du.warn(
            f"{path} holds the random states of {len(rng)} process(es), this run has {world_size}: "
            f"dropout draws differ from the interrupted run's"
        )
        torch.manual_seed(du.derive_seed(seed, "dropout", rank, iteration))
    return iteration, dict(state.get("best") or {})


def planned_iterations(state: dict[str, Any], iters_per_epoch: int) -> int | None:
    """The iterations in all a --time-budget run planned, as its training state recorded (None if
    none); whole epochs at this run's ``iters_per_epoch`` if the state's epochs were another length."""
    saved = state.get("schedule", {})
    if not saved.get("total_iters"):
        return None
    if saved.get("iters_per_epoch") == iters_per_epoch:
        return int(saved["total_iters"])
    return int(saved.get("epochs") or -(-saved["total_iters"] // saved["iters_per_epoch"])) * iters_per_epoch


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
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng_state(state: dict[str, Any], device: torch.device | None = None) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    np.random.set_state(
        (
            np_state["kind"],
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if device is not None and device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
