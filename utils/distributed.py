"""One process or many: torchrun's environment, rank-aware helpers and the training sampler.

``torchrun --nproc_per_node=N train.py ...`` (or multi-node with its rendezvous flags) sets
RANK, WORLD_SIZE and LOCAL_RANK; without them everything runs as a single process and every
helper here degrades to the obvious single-process answer.
"""
from __future__ import annotations

import argparse
import hashlib
import os
from typing import Any, Iterator

import torch
import torch.distributed as dist
from torch.utils.data import Sampler


def is_dist_avail_and_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_dist_avail_and_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_dist_avail_and_initialized() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def launched_rank() -> int:
    """The rank torchrun gave this process (0 without torchrun), readable before init_process_group."""
    return int(os.environ.get("RANK", "0"))


def save_on_master(obj: Any, path: str | os.PathLike) -> None:
    """Atomic ``torch.save`` from rank 0 only (every rank holds the same weights under DDP)."""
    if is_main_process():
        from utils.checkpoint import save_atomic
        save_atomic(obj, path)


def barrier() -> None:
    if is_dist_avail_and_initialized():
        dist.barrier()


def init_distributed_mode(args: argparse.Namespace) -> None:
    """Read torchrun's environment into ``args`` and start the process group.

    Sets ``args.distributed``, ``args.rank``, ``args.world_size``, ``args.local_rank`` and
    ``args.dist_backend``. ``args.device`` must already be a resolved ``torch.device``: NCCL
    for CUDA, gloo for the CPU (NCCL cannot reduce CPU tensors). Under torchrun each process
    drives the GPU of its local rank, which ``resolve_training_device`` in train.py has picked.
    """
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        args.rank = int(os.environ["RANK"])
        args.world_size = int(os.environ["WORLD_SIZE"])
        args.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    else:
        args.rank, args.world_size, args.local_rank = 0, 1, 0
    args.distributed = args.world_size > 1
    args.dist_backend = None
    if not args.distributed:
        return
    if args.device.type == "cuda":
        torch.cuda.set_device(args.device)
        args.dist_backend = "nccl"
    else:
        args.dist_backend = "gloo"
    kwargs = {"device_id": args.device} if args.device.type == "cuda" else {}
    dist.init_process_group(backend=args.dist_backend, init_method="env://",
                            world_size=args.world_size, rank=args.rank, **kwargs)
    dist.barrier()
    if args.rank == 0:
        print(f"distributed: {args.world_size} processes, backend {args.dist_backend}", flush=True)


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
    wrapper (:class:`utils.engine.SeededSamples`) can seed each sample's augmentation.
    """

    def __init__(self, dataset_size: int, batch_size: int, *, seed: int = 0,
                 rank: int = 0, world_size: int = 1) -> None:
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
        return order[self.rank::self.world_size]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = self.epoch_order(self.epoch)[self.skip_batches * self.batch_size:]
        return iter([(self.epoch, i) for i in order])

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.skip_batches) * self.batch_size

