"""One process or many: torchrun's environment, rank-aware helpers and the training sampler.

``torchrun --nproc_per_node=N train.py ...`` (or multi-node with its rendezvous flags) sets
RANK, WORLD_SIZE and LOCAL_RANK; without them everything runs as a single process and every
helper here degrades to the obvious single-process answer.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from training import PROG
from utils.device import is_main_process as is_main_process  # training's callers ask here


def log(*parts: object) -> None:
    """print() on rank 0 only (every rank computes the same numbers)."""
    if is_main_process():
        print(*parts, flush=True)


def warn(message: str) -> None:
    """``train.py: warning: ...`` on stderr, once (from the process torchrun launched as rank 0)."""
    if launched_rank() == 0:
        print(f"{PROG}: warning: {message}", file=sys.stderr, flush=True)


def is_dist_avail_and_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_dist_avail_and_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_dist_avail_and_initialized() else 1


def launched_rank() -> int:
    """The rank torchrun gave this process (0 without torchrun), readable before init_process_group."""
    return int(os.environ.get("RANK", "0"))


@dataclass(frozen=True)
class Processes:
    """Where this process stands among torchrun's (one process without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def launched_processes() -> Processes:
    """torchrun's RANK, WORLD_SIZE and LOCAL_RANK, readable before the process group starts."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return Processes(
            int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", "0"))
        )
    return Processes()


def init_distributed_mode(processes: Processes, device: torch.device) -> None:
    """Start the process group of ``processes`` when there are several: NCCL for CUDA, gloo for the
    CPU (NCCL cannot reduce CPU tensors). Under torchrun each process drives the GPU of its local
    rank, which ``training.config.resolve_training_device`` has picked."""
    if not processes.distributed:
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    kwargs = {"device_id": device} if device.type == "cuda" else {}
    dist.init_process_group(
        backend=backend, init_method="env://", world_size=processes.world_size, rank=processes.rank, **kwargs
    )
    dist.barrier()
    if processes.rank == 0:
        print(f"distributed: {processes.world_size} processes, backend {backend}", flush=True)


def cleanup_distributed() -> None:
    if is_dist_avail_and_initialized():
        dist.destroy_process_group()


def all_gather_objects(obj: Any) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` (``[obj]`` in a single process)."""
    if not is_dist_avail_and_initialized():
        return [obj]
    out: list[Any] = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def max_over_processes(value: int, device: torch.device) -> int:
    """The largest ``value`` of all processes (``value`` itself in a single process)."""
    if not is_dist_avail_and_initialized():
        return value
    t = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed that is a pure function of ``parts`` (e.g. (seed, epoch, index)).

    Hash-based, so nearby inputs give unrelated seeds and the result is the same in every
    process, on every run and under any Python hash randomisation.
    """
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class EpochShuffleSampler(Sampler):
    """Training order: a permutation that depends on (seed, epoch) only, split across ranks.

    Like ``DistributedSampler(drop_last=True)``: each epoch shuffles all indices with a
    generator seeded from (seed, epoch), keeps the largest multiple of ``world_size *
    batch_size`` so every rank runs the same number of full batches (a rank that ran one
    batch more would wait forever in DDP's all-reduce), and hands rank ``r`` the indices
    ``r, r + world_size, ...``. ``set_epoch(epoch, skip_batches)`` selects the epoch and skips
    its first batches: that is how a run resumed mid-epoch sees exactly the batches an
    uninterrupted run would have seen next. It yields ``(epoch, index)`` pairs so the dataset
    wrapper (:class:`training.data.SeededSamples`) can seed each sample's augmentation.
    """

    def __init__(
        self, dataset_size: int, batch_size: int, *, seed: int = 0, rank: int = 0, world_size: int = 1
    ) -> None:
        self.dataset_size = dataset_size
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.skip_batches = 0

    @property
    def batches_per_epoch(self) -> int:
        return self.dataset_size // (self.world_size * self.batch_size)

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        self.epoch = epoch
        self.skip_batches = max(0, min(skip_batches, self.batches_per_epoch))

    def epoch_order(self, epoch: int) -> list[int]:
        """This rank's full index order for ``epoch`` (before any skipping)."""
        g = torch.Generator().manual_seed(derive_seed(self.seed, "order", epoch))
        used = self.batches_per_epoch * self.world_size * self.batch_size
        order = torch.randperm(self.dataset_size, generator=g)[:used].tolist()
        return order[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = self.epoch_order(self.epoch)[self.skip_batches * self.batch_size :]
        return iter([(self.epoch, i) for i in order])

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.skip_batches) * self.batch_size
