"""Train DFPnet on the cartoon dog parsing dataset (the authors' recipe, docs/reference.md section 6).

    python train.py --data-dir ./dataset/Cartoon_sketches/Dog/ --input-size 384,384 --batch-size 12
    python train.py --data-dir ./my_data/ --labels lip   # another label set (else my_data/labels.json)
    torchrun --nproc_per_node=4 train.py ...        # DistributedDataParallel; --batch-size is per process

SGD (momentum 0.9, weight decay 5e-4) from the ImageNet deep-stem ResNet-101, poly learning
rate per iteration, loss = sum of the cross-entropies of the five outputs. Every --eval-every
epochs the val and trainTest splits are evaluated with the same code as evaluate.py. Writes to
--snapshot-dir: TensorBoard events, DFPnet_epoch_<e>.pth (authors' format), best.pth (best val
mean IU) and last.pth (the full training state that --resume continues from, exactly).

The label set (class names, left/right flip pairs, colours; docs/labels.md) is --labels, else
labels.json in --data-dir, else the Dog set; every checkpoint written records it.

Exit status (docs/training.md): 0 done (or stopped by --max-iters); 1 a dataset problem, a
non-finite loss, out of memory, a snapshot folder another run holds, a failed save, a picture gone
bad mid-run, a dead DataLoader worker or any other error (one line; DFPNET_DEBUG=1 shows the
traceback); 2 bad arguments, a bad label set or an unusable checkpoint; 128 + the signal number
when a SIGINT (130) or SIGTERM (143) stopped the run after saving its last step.

The pieces live in the training package (docs/design.md): training.flags, training.config (TrainConfig),
training.data, training.model, training.trainer (the loop), training.snapshots (saving, resuming).
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

import torch

from training import PROG
from training import distributed as du
from training.config import TrainConfig, UsageError, setup
from training.data import build_data
from training.flags import check_args, get_args_parser
from training.model import build_model
from training.snapshots import SaveError, SnapshotDirBusy, Snapshots, find_resume, lock_for_run
from training.step import DataError
from training.trainer import Trainer
from training.tune import tune_run
from utils.checkpoint import CheckpointError
from utils.cli import first_line
from utils.labels import LabelSet, LabelSetError, check_flags, resolve_label_set


def training_label_set(cfg: TrainConfig) -> LabelSet:
    """--labels, else labels.json in --data-dir, else the Dog set; --num-classes and --ignore-label must
    agree with it. Raises LabelSetError (a bad set, or a flag that disagrees)."""
    label_set = resolve_label_set(cfg.labels, cfg.data_dir)
    check_flags(label_set, cfg.num_classes, cfg.ignore_label)
    return label_set


def main(cfg: TrainConfig) -> int:
    """Build the run from its configuration and train; the exit status."""
    du.init_distributed_mode(cfg.processes, cfg.device)
    label_set = training_label_set(cfg)
    lock = lock_for_run(cfg.snapshot_dir)  # one run per folder, taken before any data is read
    data = None
    try:
        data = build_data(cfg, label_set)
        if data is None:
            return 1
        cfg, tuned = tune_run(cfg, data)
        try:
            resume_path = find_resume(cfg.resume, cfg.snapshot_dir)
        except FileNotFoundError as exc:
            raise UsageError(f"argument --resume: {exc}") from None
        net, state = build_model(cfg, resume_path, label_set)
        trainer = Trainer(cfg, data, net, Snapshots(cfg.snapshot_dir, label_set, cfg.eval_size))
        trainer.tuning = f"{tuned.reason}\n\n{tuned.table}".strip()
        trainer.restore(state, resume_path)
        del state
        trainer.log_setup()
        return trainer.fit()
    finally:
        if data is not None:
            data.close()  # the loaders' worker processes, whatever ended the run
        if lock is not None:
            lock.release()


def run(argv: list[str] | None = None) -> int:
    parser = get_args_parser()
    args: argparse.Namespace = parser.parse_args(argv)
    check_args(parser, args)
    warnings.filterwarnings("ignore", message=".*upsample_bilinear2d_backward_out_cuda.*")
    try:
        return main(setup(args))
    except UsageError as exc:
        parser.error(str(exc))
    except (CheckpointError, LabelSetError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except SnapshotDirBusy as exc:  # every rank stops; one says why
        if du.launched_rank() == 0:
            print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    except torch.OutOfMemoryError as exc:
        print(
            f"{PROG}: error: out of memory ({first_line(exc, 'out of memory')}). Try a smaller "
            f"--batch-size (it is per process), --amp bf16 (or fp16 on older GPUs), or a smaller "
            f"--input-size.",
            file=sys.stderr,
        )
        return 1
    except (SaveError, DataError) as exc:  # raised outside the loop (the loop reports its own)
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # anything else: one line, the traceback on request
        if os.environ.get("DFPNET_DEBUG"):
            raise
        print(
            f"{PROG}: error: {type(exc).__name__}: {first_line(exc)} (DFPNET_DEBUG=1 shows the traceback)",
            file=sys.stderr,
        )
        return 1
    finally:
        du.cleanup_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(run())
