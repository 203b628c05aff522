"""The data of a training run: the checked splits, the training set with its reproducible augmentation
and its loader, and the evaluation splits."""

from __future__ import annotations

import os
import random
import sys
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from dataset.check import check_dataset
from dataset.datasets import CartoonDataSet, default_transform
from dataset.layout import split_paths, split_present
from inference.predict import make_eval_loader
from training import PROG
from training import distributed as du
from training.config import TrainConfig, UsageError
from training.signals import ignore_stop_signals
from utils import recipe
from utils.labels import LabelSet


class SeededSamples(Dataset):
    """A training dataset whose augmentation is a pure function of (seed, epoch, sample index).

    Indexed with the ``(epoch, index)`` pairs of :class:`training.distributed.EpochShuffleSampler`.
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
        seed = du.derive_seed(self.seed, "augment", epoch, index)
        saved_python, saved_numpy = random.getstate(), np.random.get_state()
        random.seed(seed)
        np.random.seed(seed % 2**32)
        try:
            return self.dataset[index]
        finally:
            random.setstate(saved_python)
            np.random.set_state(saved_numpy)


def training_splits(data_dir: str, dataset: str) -> list[str]:
    """The split lists the training set is made of: ``trainval`` without its own lists is train + val."""
    if dataset == "trainval" and not os.path.isfile(split_paths(data_dir, "trainval").id_list):
        return ["train", "val"]
    return [dataset]


def present_splits(data_dir: str, splits: tuple[str, ...]) -> list[str]:
    """The evaluation splits whose id list exists (``dataset.layout``'s rule, which dataset.check
    applies too); each missing one is warned about and skipped."""
    kept = []
    for split in splits:
        if split_present(data_dir, split):
            kept.append(split)
        else:
            du.warn(f"{split_paths(data_dir, split).id_list} not found: split {split!r} is not evaluated")
    return kept


def check_data(cfg: TrainConfig, splits: list[str], label_set: LabelSet) -> bool:
    """dataset.check on every split this run reads, on rank 0; every rank gets the verdict."""
    ok = [True]
    if du.is_main_process():
        report = check_dataset(cfg.data_dir, splits, label_set=label_set, ignore_label=cfg.ignore_label)
        if not report.ok:
            _print_problems(cfg.data_dir, splits, report)
        else:
            for line in report.warnings:
                print(f"{PROG}: {line}", file=sys.stderr, flush=True)
            print(report.summary, flush=True)
        ok = [report.ok]
    if du.is_dist_avail_and_initialized():
        torch.distributed.broadcast_object_list(ok, src=0)
    return bool(ok[0])


def _print_problems(data_dir: str, splits: list[str], report) -> None:
    print("\n".join(report.failure_lines(PROG, data_dir, splits)), file=sys.stderr)
    if not os.path.isdir(data_dir):
        print(
            "Get the Dog dataset from the authors' Google Drive folder (see README.md), or try ./run.sh, "
            "which trains a demo on a generated synthetic set.",
            file=sys.stderr,
        )


def _split(cfg: TrainConfig, split: str, crop_size: tuple[int, int], label_set: LabelSet) -> CartoonDataSet:
    return CartoonDataSet(
        cfg.data_dir,
        split,
        crop_size=crop_size,
        ignore_label=cfg.ignore_label,
        transform=default_transform(),
        label_set=label_set,
    )


def build_train_dataset(cfg: TrainConfig, splits: list[str], label_set: LabelSet) -> Dataset:
    parts = []
    for split in splits:
        part = _split(cfg, split, cfg.input_size, label_set)
        # `trainval` built from train + val: the val part must be augmented like the training split.
        part.is_train = True
        parts.append(part)
    return parts[0] if len(parts) == 1 else ConcatDataset(parts)


def build_eval_sets(cfg: TrainConfig, splits: list[str], label_set: LabelSet) -> dict:
    """``{split: (dataset, loader)}``: un-augmented crops, this process's shard of each split."""
    sets = {}
    for split in splits:
        dataset = _split(cfg, split, cfg.eval_size, label_set)
        workers = min(cfg.workers, recipe.EVAL_WORKERS)
        loader = make_eval_loader(
            dataset, batch_size=1, workers=workers, pin_memory=cfg.device.type == "cuda"
        )
        sets[split] = (dataset, loader)
    return sets


@dataclass
class TrainData:
    label_set: LabelSet  # the classes, their names, mirror pairs and colours
    splits: list[str]  # the id lists the training set is made of
    dataset: Dataset
    sampler: du.EpochShuffleSampler
    loader: DataLoader
    generator: torch.Generator  # reseeded per epoch: worker seeds from (seed, epoch, rank)
    eval_sets: dict  # {split: (dataset, loader)}, in the order they are evaluated

    @property
    def iters_per_epoch(self) -> int:
        return self.sampler.batches_per_epoch

    def close(self) -> None:
        """Stop every loader's worker processes now, whatever ended the run.

        Persistent workers outlive an epoch, and the workers ignore SIGTERM (they leave stopping to the
        main process), so the interpreter's exit, which terminates them with SIGTERM and then joins
        them, would wait forever: a run that failed would never exit. PyTorch has no public call for
        this; ``_shutdown_workers`` is what its iterator runs when it is collected.
        """
        loaders = [self.loader] + [loader for _, loader in self.eval_sets.values()]
        for loader in loaders:
            iterator = getattr(loader, "_iterator", None)
            if iterator is not None and hasattr(iterator, "_shutdown_workers"):
                iterator._shutdown_workers()
            loader._iterator = None


def build_data(cfg: TrainConfig, label_set: LabelSet) -> TrainData | None:
    """The training set and loader and the evaluation splits, checked first (None: the check failed),
    so that a broken file stops the run before its first iteration."""
    train_splits = training_splits(cfg.data_dir, cfg.dataset)
    val_splits = present_splits(cfg.data_dir, cfg.val_datasets) if os.path.isdir(cfg.data_dir) else []
    if not check_data(cfg, list(dict.fromkeys(train_splits + val_splits)), label_set):
        return None
    if train_splits != [cfg.dataset]:
        du.log(f"--dataset {cfg.dataset}: no {cfg.dataset}_id.txt, training on {' + '.join(train_splits)}")
    dataset = build_train_dataset(cfg, train_splits, label_set)
    world = cfg.world_size
    sampler = du.EpochShuffleSampler(
        len(dataset), cfg.batch_size, seed=cfg.random_seed, rank=cfg.rank, world_size=world
    )
    if sampler.batches_per_epoch == 0:
        raise UsageError(
            f"argument --batch-size: {cfg.batch_size} x {world} process(es) needs at least "
            f"{cfg.batch_size * world} training images, {'+'.join(train_splits)} has "
            f"{len(dataset)} (incomplete batches are dropped)"
        )
    generator = torch.Generator()
    loader = DataLoader(
        SeededSamples(dataset, cfg.random_seed),
        batch_size=cfg.batch_size,
        sampler=sampler,
        num_workers=cfg.workers,
        pin_memory=cfg.device.type == "cuda",
        drop_last=True,
        generator=generator,
        persistent_workers=cfg.workers > 0,
        worker_init_fn=ignore_stop_signals,
    )
    eval_sets = build_eval_sets(cfg, val_splits, label_set)
    return TrainData(label_set, train_splits, dataset, sampler, loader, generator, eval_sets)
