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

Exit status: 0 done; 1 dataset problem, non-finite loss or out of memory; 2 bad arguments, a bad
label set or an unusable checkpoint.
"""
from __future__ import annotations

import argparse
import datetime
import os
import signal
import sys
import time
import warnings
from dataclasses import dataclass

import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from dataset.layout import split_paths
from utils import distributed as du
from utils import recipe
from utils.checkpoint import (
    CheckpointError,
    Weights,
    load_imagenet_backbone,
    load_state_dict_strict,
    read_weights,
)
from utils.cli import (
    AMP_MODES,
    add_label_arguments,
    default_amp,
    first_line,
    non_negative_float,
    non_negative_int,
    parse_size,
    positive_float,
    positive_int,
    resolve_device,
)
from utils.cpu_defaults import cpu_defaults, keep_freed_memory
from utils.engine import (
    NonFiniteLossError,
    SeededSamples,
    StepInfo,
    StopSignals,
    capture_rng_state,
    default_inplace_abn,
    ignore_stop_signals,
    plain_args,
    poly_lr,
    restore_rng_state,
    train_one_epoch,
)
from utils.labels import IGNORE_LABEL, LabelSet, LabelSetError, check_flags, resolve_label_set
from utils.snapshots import (
    SnapshotDirBusy,
    Snapshots,
    find_resume,
    lock_for_run,
    read_training_state,
    resume_position,
    training_state,
)

PROG = "train.py"
# Evaluation splits and their TensorBoard tags (the authors': mIoUval, mIoUtest).
SCALAR_TAGS = {"val": "mIoUval", "trainTest": "mIoUtest"}


class UsageError(Exception):
    """A flag value that only turns out wrong once the data is known; reported like an argparse error."""


# ------------------------------------------------------------------------------------------
# Arguments
# ------------------------------------------------------------------------------------------

def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, add_help=add_help,
                                     description="Train DFPnet (cartoon dog parsing), the authors' recipe.")
    # The authors' flags, with their defaults.
    parser.add_argument("--data-dir", default=recipe.DATA_DIR,
                        help="dataset root holding <split>_id.txt, <split>_images/, <split>_segmentations/")
    parser.add_argument("--dataset", default="train",
                        help="training split: train, or trainval (its own lists if present, else train+val)")
    parser.add_argument("--batch-size", type=positive_int, default=recipe.BATCH_SIZE,
                        help="images per step PER PROCESS (torchrun with N processes trains on N x this)")
    parser.add_argument("--input-size", type=parse_size, default=recipe.INPUT_SIZE, metavar="H,W",
                        help="training crop height,width (the authors' run.sh: 384,384; their train.py's "
                             "unused default: 473,473)")
    parser.add_argument("--learning-rate", type=positive_float, default=recipe.LEARNING_RATE,
                        help="base learning rate of the poly schedule")
    parser.add_argument("--momentum", type=non_negative_float, default=recipe.MOMENTUM, help="SGD momentum")
    parser.add_argument("--weight-decay", type=non_negative_float, default=recipe.WEIGHT_DECAY,
                        help="SGD weight decay (L2)")
    parser.add_argument("--power", type=non_negative_float, default=recipe.POWER,
                        help="poly exponent: lr = base * (1 - iteration / total) ** power")
    add_label_arguments(parser, stored=False)
    parser.add_argument("--ignore-label", type=int, default=IGNORE_LABEL,
                        help="label id that gets no loss and no score")
    parser.add_argument("--random-mirror", action="store_true",
                        help="accepted for the authors' scripts; ignored: training splits are always "
                             "augmented (flip, scale, rotation), as in the original")
    parser.add_argument("--random-scale", action="store_true",
                        help="accepted for the authors' scripts; ignored (see --random-mirror)")
    parser.add_argument("--random-seed", type=int, default=recipe.RANDOM_SEED,
                        help="seed of the initial weights, the data order, the augmentation and dropout")
    parser.add_argument("--restore-from", default=recipe.IMAGENET_WEIGHTS,
                        help="initial weights: the ImageNet deep-stem ResNet-101 (backbone only) or a full "
                             "DFPnet checkpoint (fine-tuning; of another label set: its classifiers are "
                             "re-initialised); 'none' trains from scratch")
    parser.add_argument("--snapshot-dir", default=recipe.SNAPSHOT_DIR,
                        help="where checkpoints and TensorBoard events go")
    parser.add_argument("--gpu", default=None,
                        help="authors' flag: GPU ids to expose through CUDA_VISIBLE_DEVICES (e.g. 0 or 0,1); "
                             "--device auto then uses the first (or, under torchrun, the local rank's)")
    parser.add_argument("--start-epoch", type=non_negative_int, default=0,
                        help="first epoch when not resuming (the LR schedule starts at that epoch)")
    parser.add_argument("--epochs", type=positive_int, default=None,
                        help=f"number of epochs of the whole run (default: {recipe.EPOCHS}, or what "
                             f"--time-budget allows)")
    parser.add_argument("--save-num-images", type=positive_int, default=2,
                        help="images per TensorBoard training grid (input, label, prediction)")
    # Ours.
    parser.add_argument("--resume", nargs="?", const="auto", default="auto", metavar="PATH|auto|none",
                        help="continue a run from a training state: auto (default) = <snapshot-dir>/last.pth "
                             "if it exists; a path; none = start anew (overwriting last.pth later)")
    parser.add_argument("--device", default="auto",
                        help="auto (CUDA when available, else CPU), cpu, cuda, cuda:N")
    parser.add_argument("--workers", type=non_negative_int, default=2,
                        help="DataLoader worker processes per process")
    parser.add_argument("--amp", choices=AMP_MODES, default=None,
                        help="autocast precision of the network: off, bf16 or fp16 (CUDA, with loss "
                             "scaling); default bf16 where the device supports it, else off")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                        help="channels-last memory format (default: on, except on CPUs without AVX2, where "
                             "the authors' NCHW is kept)")
    parser.add_argument("--inplace-abn", choices=("auto", "on", "off"), default="auto",
                        help="InPlace-ABN's in-place memory saving: on, off (the same math under plain "
                             "autograd: more memory, fewer kernel launches) or auto (default: on for the "
                             "CPU, off for CUDA, where it is faster; synchronised layers under DDP stay "
                             "in place)")
    parser.add_argument("--malloc", choices=("reuse", "system"), default="reuse",
                        help="on the CPU, glibc malloc keeps freed memory for reuse (reuse, the default: "
                             "7-11%% faster steps, no page faults for every activation; at large batches "
                             "up to a third more peak memory) or behaves as it does by default (system)")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the network (off by default: slower to train on the CPU)")
    parser.add_argument("--deterministic", action="store_true",
                        help="deterministic algorithms only (bit-exact reruns on the CPU; slower)")
    parser.add_argument("--eval-every", type=positive_int, default=None,
                        help="evaluate every N epochs and after the last (default: the authors' 5, 20 "
                             "after epoch 500)")
    parser.add_argument("--val-datasets", nargs="*", default=["val", "trainTest"], metavar="SPLIT",
                        help="splits evaluated during training; one whose id list is missing is skipped "
                             "with a warning; best.pth follows the first one evaluated (val)")
    parser.add_argument("--eval-input-size", type=parse_size, default=None, metavar="H,W",
                        help="crop size for evaluation (default: --input-size)")
    parser.add_argument("--save-every", type=non_negative_int, default=500,
                        help="also write last.pth every N iterations (0: only at the end of each epoch)")
    parser.add_argument("--snapshot-every", type=positive_int, default=recipe.SNAPSHOT_EVERY,
                        help="write DFPnet_epoch_<e>.pth when e %% N == 0 (authors: 99) and after the "
                             "last epoch")
    parser.add_argument("--log-every", type=positive_int, default=100,
                        help="TensorBoard scalars (loss, learning_rate, images_per_second) every N "
                             "iterations")
    parser.add_argument("--image-every", type=positive_int, default=500,
                        help="TensorBoard image grids (input, label, prediction) every N iterations")
    parser.add_argument("--time-budget", type=positive_float, default=None, metavar="MINUTES",
                        help="fit the run into this wall time: time the first steps, then fix the number of "
                             "epochs (and the poly schedule over them) so that training, evaluations and "
                             "saves end within it; a resumed run keeps the schedule it fixed (instead of "
                             "--epochs)")
    parser.add_argument("--max-iters", type=positive_int, default=None,
                        help="stop once the run has made N steps in all (demos, tests); the LR schedule "
                             "still spans --epochs, so --resume continues it")
    return parser


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Cross-flag checks that argparse's types cannot make; each failure exits 2 like argparse."""
    if not 0 <= args.ignore_label <= 255:
        parser.error(f"argument --ignore-label: expected 0..255 (labels are 8-bit PNGs), "
                     f"got {args.ignore_label}")
    if args.time_budget is not None and args.epochs is not None:
        parser.error("argument --time-budget: not with --epochs (the budget decides the number of epochs)")
    if args.time_budget is None and args.epochs is None:
        args.epochs = recipe.EPOCHS
    if args.epochs is not None and args.start_epoch >= args.epochs:
        parser.error(f"argument --start-epoch: {args.start_epoch} is not below --epochs {args.epochs}")
    if args.momentum >= 1:
        parser.error(f"argument --momentum: expected a value below 1, got {args.momentum}")
    if min(args.input_size) < 16:
        parser.error(f"argument --input-size: {args.input_size[0]},{args.input_size[1]} is too small; "
                     f"DFPnet downsamples 16 times (use at least 16,16)")


# ------------------------------------------------------------------------------------------
# Set-up
# ------------------------------------------------------------------------------------------

def log(*parts, **kwargs) -> None:
    """print() on rank 0 only (every rank computes the same numbers)."""
    if du.is_main_process():
        print(*parts, flush=True, **kwargs)


def warn(message: str) -> None:
    if du.launched_rank() == 0:
        print(f"{PROG}: warning: {message}", file=sys.stderr, flush=True)


def resolve_training_device(args: argparse.Namespace) -> torch.device:
    """--device, with torchrun's local rank picking the GPU of each process."""
    device = resolve_device(args.device)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda" and device.index is None:
        if local_rank >= torch.cuda.device_count():
            raise UsageError(f"local rank {local_rank} has no GPU: {torch.cuda.device_count()} visible "
                             f"(check --gpu / CUDA_VISIBLE_DEVICES and --nproc_per_node)")
        device = torch.device("cuda", local_rank)
    return device


def present_splits(data_dir: str, splits: list[str]) -> list[str]:
    kept = []
    for split in splits:
        id_list = split_paths(data_dir, split).id_list
        if os.path.isfile(id_list):
            kept.append(split)
        else:
            warn(f"{id_list} not found: split {split!r} is not evaluated")
    return kept


def training_splits(data_dir: str, dataset: str) -> list[str]:
    """The split lists the training set is made of: ``trainval`` without its own lists is train + val."""
    if dataset == "trainval" and not os.path.isfile(split_paths(data_dir, "trainval").id_list):
        return ["train", "val"]
    return [dataset]


def training_label_set(args: argparse.Namespace) -> LabelSet:
    """--labels, else labels.json in --data-dir, else the Dog set; --num-classes and --ignore-label must
    agree with it. Raises LabelSetError (a bad set, or a flag that disagrees)."""
    label_set = resolve_label_set(args.labels, args.data_dir)
    check_flags(label_set, args.num_classes, args.ignore_label)
    return label_set


def check_data(args: argparse.Namespace, splits: list[str], label_set: LabelSet) -> bool:
    """dataset.check on every split this run reads, on rank 0; every rank gets the verdict."""
    ok = [True]
    if du.is_main_process():
        from dataset.check import check_dataset
        report = check_dataset(args.data_dir, splits, label_set=label_set, ignore_label=args.ignore_label)
        if not report.ok:
            print(f"{PROG}: error: {args.data_dir} failed the dataset check (splits {', '.join(splits)}):",
                  file=sys.stderr)
            for problem in report.problems:
                print(f"  {problem}", file=sys.stderr)
            hidden = report.total_problems - len(report.problems)
            if hidden > 0:
                print(f"  ... and {hidden} more (python -m dataset.check {args.data_dir} "
                      f"--splits {' '.join(splits)})", file=sys.stderr)
            print(report.summary, file=sys.stderr)
            if not os.path.isdir(args.data_dir):
                print("Get the Dog dataset from the authors' Google Drive folder (see README.md), or try "
                      "./run.sh, which trains a demo on a generated synthetic set.", file=sys.stderr)
        else:
            for line in report.warnings:
                print(f"{PROG}: {line}", file=sys.stderr, flush=True)
            print(report.summary, flush=True)
        ok = [report.ok]
    if du.is_dist_avail_and_initialized():
        torch.distributed.broadcast_object_list(ok, src=0)
    return bool(ok[0])


def build_train_dataset(args: argparse.Namespace, splits: list[str], label_set: LabelSet):
    from dataset.datasets import CartoonDataSet
    from dataset.transforms import default_transform

    parts = []
    for split in splits:
        part = CartoonDataSet(args.data_dir, split, crop_size=args.input_size, ignore_label=args.ignore_label,
                              transform=default_transform(), label_set=label_set)
        # `trainval` built from train + val: the val part must be augmented like the training split.
        part.is_train = True
        parts.append(part)
    return parts[0] if len(parts) == 1 else ConcatDataset(parts)


LOUD = "*" * 78


def init_from_scratch(model: torch.nn.Module) -> None:
    """Random weights that a 101-layer network can learn from: He-normal convolutions (fan-out, as
    torchvision's ResNet) and the last norm of every bottleneck at scale 0, so each residual block
    starts as the identity (Goyal et al. 2017).

    The authors always start from ImageNet, where the init does not matter. From scratch,
    PyTorch's default init gives stem gradient norms in the thousands, and the synthetic demo
    learns far less with it (bench/RESULTS.md section 9).
    """
    from networks.backbone import Bottleneck

    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, Bottleneck):
            torch.nn.init.zeros_(module.bn3.weight)  # InPlace-ABN scale |0| + eps: branch ~ 0


def initialise_weights(model: torch.nn.Module, restore_from: str, label_set: LabelSet) -> str:
    """--restore-from: ImageNet backbone, or a whole DFPnet checkpoint (of another label set: all but the
    classifiers); a missing file is loud, not fatal."""
    if restore_from.lower() in ("", "none") or not os.path.isfile(restore_from):
        init_from_scratch(model)
    if restore_from.lower() in ("", "none"):
        return "random initialisation (--restore-from none)"
    if not os.path.isfile(restore_from):
        if du.launched_rank() == 0:
            lines = [f"--restore-from {restore_from}: FILE NOT FOUND.",
                     "Training starts from RANDOM weights: expect far lower accuracy than the paper's.",
                     "Put resnet101-imagenet.pth there (see Trained_Models/README.md), or pass",
                     "--restore-from none to train from scratch on purpose."]
            print("\n".join([LOUD] + [f"WARNING: {line}" for line in lines] + [LOUD]), file=sys.stderr,
                  flush=True)
        return f"RANDOM initialisation ({restore_from} not found)"
    # The backbone from ImageNet, the rest PyTorch's default init: the authors' recipe.
    weights = read_weights(restore_from)
    if any(key.startswith("outc.") for key in weights.state):  # a whole DFPnet: fine-tune / continue from it
        return fine_tune_from(model, weights, label_set)
    del weights
    loaded, total = load_imagenet_backbone(model, restore_from)
    return f"ImageNet backbone from {restore_from} ({loaded} of {total} tensors)"


def fine_tune_from(model: torch.nn.Module, weights: Weights, label_set: LabelSet) -> str:
    """A whole DFPnet checkpoint: every weight when it predicts this run's classes; else every layer but
    the classifiers, which keep their fresh initialisation (named in one printed line)."""
    from networks.dfpnet import DFPNet

    count = DFPNet.classes_in(weights.state)
    other = weights.label_set
    if (other is None or other.same_classes(label_set)) and count == label_set.num_classes:
        load_state_dict_strict(model, weights.state, weights.path)
        return f"all weights from {weights.path}"
    load_state_dict_strict(model, weights.state, weights.path, skip=DFPNet.CLASSIFIERS)
    was = f"{other.num_classes} classes: {other.names_text()}" if other else f"{count} classes"
    log(f"--restore-from {weights.path}: trained with another label set ({was}) than this run's "
        f"({label_set.describe()}): loaded every layer but the class-specific ones, which start anew: "
        f"{', '.join(DFPNet.CLASSIFIERS)} re-initialised")
    return f"weights from {weights.path}, classifiers {', '.join(DFPNet.CLASSIFIERS)} re-initialised"


def evaluation_due(epoch: int, args: argparse.Namespace) -> bool:
    """After epoch ``epoch`` (0-based)? Every --eval-every epochs counted from 1, and after the last."""
    every = args.eval_every or (5 if epoch < 500 else 20)
    return (epoch + 1) % every == 0 or epoch == args.epochs - 1


def build_eval_sets(args: argparse.Namespace, splits: list[str], device: torch.device,
                    label_set: LabelSet) -> dict:
    """``{split: (dataset, loader)}``: un-augmented crops, this process's shard of each split."""
    from dataset.datasets import CartoonDataSet
    from dataset.transforms import default_transform
    from utils.inference import make_eval_loader

    sets = {}
    for split in splits:
        dataset = CartoonDataSet(args.data_dir, split, crop_size=args.eval_input_size or args.input_size,
                                 ignore_label=args.ignore_label, transform=default_transform(),
                                 label_set=label_set)
        sets[split] = (dataset, make_eval_loader(dataset, batch_size=1, workers=min(args.workers, 2),
                                                 pin_memory=device.type == "cuda"))
    return sets


def log_training_images(writer, info: StepInfo, n: int, label_set: LabelSet) -> None:
    """Input (true colours), label and prediction grids of the step's first ``n`` images."""
    from utils.visualize import image_grid, label_grid

    writer.add_image("Images", image_grid(info.images.detach().float().cpu(), max_images=n), info.iteration,
                     dataformats="HWC")
    writer.add_image("Labels", label_grid(info.labels.cpu(), label_set, max_images=n), info.iteration,
                     dataformats="HWC")
    predictions = info.outputs[-1][:n].detach().float().cpu()
    writer.add_image("Preds", label_grid(predictions, label_set, max_images=n), info.iteration,
                     dataformats="HWC")


# ------------------------------------------------------------------------------------------
# Evaluation (the loop and the metrics are evaluate.py's)
# ------------------------------------------------------------------------------------------

def evaluate(model: torch.nn.Module, splits: dict, device: torch.device, args: argparse.Namespace,
             writer, epoch: int, label_set: LabelSet) -> dict[str, dict]:
    """Evaluate each split with utils.inference.evaluate_model; log the authors' TensorBoard scalars
    (one curve per class of the label set, by name)."""
    from utils.inference import evaluate_model

    names = label_set.names
    results = {}
    for split, (dataset, loader) in splits.items():
        example = {}

        def keep_first(name: str, label, index: int) -> None:
            if not example:
                example.update(label=label, index=index)

        matrix = evaluate_model(model, dataset, loader, device, label_set=label_set, amp=args.amp,
                                channels_last=args.channels_last, progress=sys.stderr.isatty(),
                                on_prediction=keep_first if writer is not None else None)
        stats = matrix.compute()
        results[split] = stats
        if writer is None:
            continue
        step = epoch + 1
        tag = SCALAR_TAGS.get(split, f"mIoU{split}")
        scalars = dict(zip(names, stats["per_class_iou"]))
        scalars.update({"Pixel accuracy": stats["pixel_accuracy"], "Mean accuracy": stats["mean_accuracy"],
                        "Mean IU": stats["mean_iou"]})
        writer.add_scalars(tag, scalars, step)
        from utils.visualize import confusion_matrix_figure, iou_bar_figure, label_to_rgb
        writer.add_figure(f"{split}/confusion_matrix", confusion_matrix_figure(matrix.mat, names), step,
                          close=False)
        writer.add_figure(f"{split}/per_class_iou",
                          iou_bar_figure(stats["per_class_iou"], label_set, mean_iou=stats["mean_iou"]), step,
                          close=False)
        if example:
            index = example["index"]
            pictures = {"image": dataset.read_image(index)[:, :, ::-1].copy(),  # BGR -> RGB
                        "prediction": label_to_rgb(example["label"], label_set),
                        "ground_truth": label_to_rgb(dataset.read_label(index), label_set)}
            for name, picture in pictures.items():
                writer.add_image(f"{split}/{name}", picture, step, dataformats="HWC")
    return results


# ------------------------------------------------------------------------------------------
# The run's pieces: device, data, model
# ------------------------------------------------------------------------------------------

def setup_device(args: argparse.Namespace) -> torch.device:
    """--gpu, --device, --amp and --deterministic: the device this process trains on."""
    if args.gpu is not None:  # before anything touches CUDA, as the authors
        os.environ["CUDA_VISIBLE_DEVICES"] = args.gpu
    try:
        device = resolve_training_device(args)
    except ValueError as exc:
        raise UsageError(f"argument --device: {exc}") from None
    args.device = device
    if args.amp is None:
        args.amp = default_amp(device)
    if args.channels_last is None:
        args.channels_last = cpu_defaults().channels_last if device.type == "cpu" else True
    # Before the model and the data allocate anything: glibc reads these on each allocation.
    args.malloc_reuse = device.type == "cpu" and args.malloc == "reuse" and keep_freed_memory()
    if args.amp == "fp16" and device.type != "cuda":
        raise UsageError("argument --amp: fp16 needs a CUDA device (its loss scaling); use bf16 on the CPU")
    if args.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        # Some CUDA kernels (bilinear upsampling's backward) have no deterministic version: warn there.
        torch.use_deterministic_algorithms(True, warn_only=device.type == "cuda")
    torch.backends.cudnn.benchmark = device.type == "cuda" and not args.deterministic
    return device


@dataclass
class TrainData:
    label_set: LabelSet           # the classes, their names, mirror pairs and colours
    splits: list[str]             # the id lists the training set is made of
    dataset: Dataset
    sampler: du.EpochShuffleSampler
    loader: DataLoader
    generator: torch.Generator    # reseeded per epoch: worker seeds from (seed, epoch, rank)
    eval_sets: dict               # {split: (dataset, loader)}, in the order they are evaluated

    @property
    def iters_per_epoch(self) -> int:
        return self.sampler.batches_per_epoch


def build_data(args: argparse.Namespace, device: torch.device, label_set: LabelSet) -> TrainData | None:
    """The training set and loader and the evaluation splits, checked first (None: the check failed),
    so that a broken file stops the run before its first iteration."""
    train_splits = training_splits(args.data_dir, args.dataset)
    val_splits = present_splits(args.data_dir, args.val_datasets) if os.path.isdir(args.data_dir) else []
    if not check_data(args, list(dict.fromkeys(train_splits + val_splits)), label_set):
        return None
    if train_splits != [args.dataset]:
        log(f"--dataset {args.dataset}: no {args.dataset}_id.txt, training on {' + '.join(train_splits)}")
    dataset = build_train_dataset(args, train_splits, label_set)
    world = args.world_size
    sampler = du.EpochShuffleSampler(len(dataset), args.batch_size, seed=args.random_seed, rank=args.rank,
                                     world_size=world)
    if sampler.batches_per_epoch == 0:
        raise UsageError(f"argument --batch-size: {args.batch_size} x {world} process(es) needs at least "
                         f"{args.batch_size * world} training images, {'+'.join(train_splits)} has "
                         f"{len(dataset)} (incomplete batches are dropped)")
    generator = torch.Generator()
    loader = DataLoader(SeededSamples(dataset, args.random_seed), batch_size=args.batch_size, sampler=sampler,
                        num_workers=args.workers, pin_memory=device.type == "cuda", drop_last=True,
                        generator=generator, persistent_workers=args.workers > 0,
                        worker_init_fn=ignore_stop_signals)
    eval_sets = build_eval_sets(args, val_splits, device, label_set)
    return TrainData(label_set, train_splits, dataset, sampler, loader, generator, eval_sets)


@dataclass
class Network:
    model: torch.nn.Module        # the weights: what is saved and evaluated (no DDP wrapper)
    train_model: torch.nn.Module  # what a step runs: `model` inside DDP and/or torch.compile
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    inplace: bool                 # InPlace-ABN in place (else the same math under plain autograd)
    init_note: str                # where the weights came from, for the log


def build_model(args: argparse.Namespace, device: torch.device, resume_path: str | None,
                label_set: LabelSet) -> tuple[Network, dict | None]:
    """DFPnet for the label set's classes with its initial weights (or those of the training state it
    resumes), on the device, wrapped for DDP / compile, and its optimizer. Returns the network and the
    training state read."""
    from libs import set_inplace
    from networks.dfpnet import DFPNet

    torch.manual_seed(args.random_seed)  # the same initial weights in every process
    model = DFPNet(num_classes=label_set.num_classes)
    # In the authors' checkpoints but never used in forward: frozen, so DDP does not wait for its
    # gradients (it would otherwise need find_unused_parameters, a graph walk per step).
    model.layer5_pred3x3.requires_grad_(False)
    inplace = default_inplace_abn(device) if args.inplace_abn == "auto" else args.inplace_abn == "on"
    set_inplace(model, inplace)
    state = read_training_state(resume_path, model, label_set) if resume_path else None
    init_note = (f"resumed from {resume_path}" if state
                 else initialise_weights(model, args.restore_from, label_set))
    model.to(device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    train_model = model
    if args.distributed:
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, gradient_as_bucket_view=True)
    if args.compile:
        train_model = torch.compile(train_model)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=args.learning_rate,
                                momentum=args.momentum, weight_decay=args.weight_decay)
    scaler = torch.amp.GradScaler("cuda") if args.amp == "fp16" else None
    return Network(model, train_model, optimizer, scaler, inplace, init_note), state


# ------------------------------------------------------------------------------------------
# The loop
# ------------------------------------------------------------------------------------------

# Steps --time-budget times before it fixes the schedule; the first two (oneDNN and allocator warm-up)
# are not counted.
TIMING_STEPS = 5


def plan_epochs(left_s: float, args: argparse.Namespace, *, iters_per_epoch: int, done: int, step_s: float,
                eval_s: float, save_s: float) -> tuple[int, float]:
    """The most epochs (at least one) whose remaining work fits in ``left_s`` seconds, and its seconds.

    Counts the steps not yet ``done``, last.pth at each epoch end, each evaluation (``eval_s``,
    0 without evaluation splits) with a best.pth, and the epoch snapshots (weights only: about
    half a last.pth each), under the --eval-every / --snapshot-every rules.
    """
    plan = argparse.Namespace(**vars(args))

    def seconds(epochs: int) -> float:
        plan.epochs = epochs
        evals = sum(evaluation_due(e, plan) for e in range(epochs)) if eval_s else 0
        snapshots = sum(e % plan.snapshot_every == 0 or e == epochs - 1 for e in range(epochs))
        return ((epochs * iters_per_epoch - done) * step_s + epochs * save_s
                + evals * (eval_s + save_s / 2) + snapshots * save_s / 2)

    epochs = 1
    while seconds(epochs + 1) <= left_s:
        epochs += 1
    return epochs, seconds(epochs)

class Trainer:
    """The training loop and what it changes as it goes: the position, the best result, the saves."""

    def __init__(self, args: argparse.Namespace, device: torch.device, data: TrainData, net: Network,
                 snapshots: Snapshots) -> None:
        self.args, self.device, self.data, self.net, self.snapshots = args, device, data, net, snapshots
        self.iters_per_epoch = data.iters_per_epoch
        # None until --time-budget has fixed the number of epochs (plan_schedule).
        self.total_iters: int | None = args.epochs * self.iters_per_epoch if args.epochs else None
        self.started = time.perf_counter()
        self.step_seconds: list[float] = []
        self.iteration = args.start_epoch * self.iters_per_epoch  # steps done over the whole run
        self.best: dict = {"mean_iou": -1.0, "epoch": -1, "split": None}
        self.signals = StopSignals(PROG)
        self.stop_signal = 0  # the signal every process agreed to stop on
        self.writer = None
        self.bar = None

    # ---- state
    def restore(self, state: dict | None, path: str | None) -> None:
        """Continue from a training state (optimizer, scaler, position, best, random states), or start."""
        args, rank, world = self.args, self.args.rank, self.args.world_size
        if state is None:
            torch.manual_seed(du.derive_seed(args.random_seed, "dropout", rank))
            return
        saved = state.get("schedule", {})
        if args.time_budget is not None and saved.get("total_iters"):  # the schedule the budget fixed
            args.epochs = int(saved.get("epochs") or saved["total_iters"] // saved["iters_per_epoch"])
            self.total_iters = args.epochs * self.iters_per_epoch
        self.net.optimizer.load_state_dict(state["optimizer"])
        if self.net.scaler is not None and state.get("scaler"):
            self.net.scaler.load_state_dict(state["scaler"])
        self.iteration = resume_position(state, path, self.iters_per_epoch, self.total_iters, warn)
        self.best = dict(state.get("best") or self.best)
        rng = state.get("rng") or []
        if len(rng) == world:
            restore_rng_state(rng[rank], self.device)
        else:
            warn(f"{path} holds the random states of {len(rng)} process(es), this run has {world}: "
                 f"dropout draws differ from the interrupted run's")
            torch.manual_seed(du.derive_seed(args.random_seed, "dropout", rank, self.iteration))

    def save_last(self) -> None:
        if self.writer is not None:
            self.writer.flush()  # best effort: a kill still loses what tensorboardX's queue holds
        args = self.args
        rng = du.all_gather_objects(capture_rng_state(self.device))  # every process's, for an exact resume
        schedule = {"base_lr": args.learning_rate, "power": args.power, "total_iters": self.total_iters,
                    "iters_per_epoch": self.iters_per_epoch, "epochs": args.epochs}
        state = training_state(self.net.model, self.net.optimizer, self.net.scaler,
                               epoch=self.iteration // self.iters_per_epoch, iteration=self.iteration,
                               schedule=schedule, rng=rng, best=self.best, args=plain_args(args))
        with self.signals.saving():
            self.snapshots.save_last(state)

    # ---- callbacks of train_one_epoch
    def lr_at(self, iteration: int) -> float:
        if self.total_iters is None:  # the timing steps of --time-budget: poly's start
            return self.args.learning_rate
        return poly_lr(self.args.learning_rate, iteration, self.total_iters, self.args.power)

    def on_step(self, info: StepInfo) -> None:
        args, it = self.args, info.iteration
        self.iteration = it
        self.step_seconds.append(info.seconds)
        rate = info.images.shape[0] * args.world_size / max(info.seconds, 1e-9)
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{info.loss:.3f}", lr=f"{info.lr:.2e}", img_s=f"{rate:.1f}", refresh=False)
        if self.writer is not None and it % args.log_every == 0:
            self.writer.add_scalar("loss", info.loss, it)
            self.writer.add_scalar("learning_rate", info.lr, it)
            self.writer.add_scalar("images_per_second", rate, it)
        if self.writer is not None and it % args.image_every == 0:
            log_training_images(self.writer, info, args.save_num_images, self.data.label_set)
        # The epoch's last step is saved at the epoch end, after its evaluation.
        if args.save_every and it % args.save_every == 0 and it % self.iters_per_epoch != 0:
            self.save_last()

    def should_stop(self) -> bool:
        """Did any process get a stop signal? Asked by every process at the same points."""
        self.stop_signal = du.max_over_processes(self.signals.signum, self.device)
        return self.stop_signal > 0

    # ---- epochs
    def train_epoch(self, epoch: int, stop_at: int | None = None) -> bool:
        """One epoch (or what is left of it), its evaluation and saves; False if it was cut short
        (--max-iters, a stop signal, or ``stop_at`` steps done in all)."""
        args, data = self.args, self.data
        epoch_start = time.perf_counter()
        data.sampler.set_epoch(epoch, self.iteration - epoch * self.iters_per_epoch)
        data.generator.manual_seed(du.derive_seed(args.random_seed, "loader", epoch, args.rank))
        self.bar.set_description(f"epoch {epoch + 1}/{args.epochs or '?'}")
        stats = train_one_epoch(self.net.train_model, self.net.optimizer, data.loader, self.device,
                                epoch=epoch, iteration=self.iteration, lr_at=self.lr_at, amp=args.amp,
                                scaler=self.net.scaler,
                                channels_last=args.channels_last, ignore_label=args.ignore_label,
                                stop_at=min(filter(None, (args.max_iters, stop_at)), default=None),
                                on_step=self.on_step, should_stop=self.should_stop)
        if self.iteration < (epoch + 1) * self.iters_per_epoch:  # --max-iters or a stop signal
            return False
        line = (f"epoch {epoch + 1}/{args.epochs}  iter {self.iteration}/{self.total_iters}  "
                f"loss {stats.mean_loss:.4f}  lr {stats.last_lr:.3e}  {stats.images_per_second:.2f} img/s  "
                f"{datetime.timedelta(seconds=round(time.perf_counter() - epoch_start))}")
        if data.eval_sets and evaluation_due(epoch, args):
            results = evaluate(self.net.model, data.eval_sets, self.device, args, self.writer, epoch,
                               data.label_set)
            line += "  " + "  ".join(f"{split} mIoU {r['mean_iou']:.2f}" for split, r in results.items())
            first = next(iter(results))  # val, unless it is missing
            if results[first]["mean_iou"] > self.best["mean_iou"]:
                self.best = {"mean_iou": results[first]["mean_iou"], "epoch": epoch, "split": first}
                self.snapshots.save_best(self.net.model)
                line += "  (best)"
        if epoch % args.snapshot_every == 0 or epoch == args.epochs - 1:
            self.snapshots.save_epoch(self.net.model, epoch)
        self.save_last()
        if du.is_main_process():
            (self.bar.write if not self.bar.disable else print)(line)
            sys.stdout.flush()
        return True

    def fit(self) -> int:
        """Train to the end of the schedule, --max-iters or a stop signal; the exit status."""
        from tqdm import tqdm

        args = self.args
        if self.total_iters is not None and self.iteration >= self.total_iters:
            log(f"nothing to do: the training state is at iteration {self.iteration} of {self.total_iters}, "
                f"the run is complete (--resume none starts anew)")
            return 0
        run_start = time.perf_counter()
        try:
            # From the first line on, a stop signal is a clean stop (the last step is saved).
            with self.signals:
                if self.iteration:
                    log(f"starting at epoch {self.iteration // self.iters_per_epoch}, iteration "
                        f"{self.iteration} (lr {self.lr_at(self.iteration):.3e})")
                if du.is_main_process():
                    from tensorboardX import SummaryWriter
                    # purge_step hides what an interrupted run logged after its last save.
                    self.writer = SummaryWriter(logdir=args.snapshot_dir,
                                                purge_step=self.iteration + 1 if self.iteration else None)
                    self.writer.add_text("label_set", self.data.label_set.summary(), self.iteration)
                self.bar = tqdm(total=self.total_iters, initial=self.iteration, unit="it", dynamic_ncols=True,
                                disable=not (du.is_main_process() and sys.stderr.isatty()))
                if self.total_iters is None:
                    self.plan_schedule()
                for epoch in range(self.iteration // self.iters_per_epoch, args.epochs or 0):
                    if args.max_iters is not None and self.iteration >= args.max_iters:
                        break
                    if self.should_stop() or not self.train_epoch(epoch):
                        break
                if self.stop_signal:  # this step is done: save it before going
                    if self.snapshots.last_saved != self.iteration:
                        self.save_last()
                    raise KeyboardInterrupt
        except KeyboardInterrupt:  # a stop signal, or a second one that abandoned the step
            if self.bar is not None:
                self.bar.close()
            name = signal.Signals(self.signals.signum or signal.SIGINT).name
            if du.launched_rank() == 0:  # every rank stopped at the same step; one says so
                print(f"{PROG}: interrupted by {name}; {self.snapshots.where()}: run the same command again "
                      f"to continue from there", file=sys.stderr, flush=True)
            return 128 + (self.signals.signum or signal.SIGINT)
        except NonFiniteLossError as exc:
            if self.bar is not None:
                self.bar.close()
            where = (f"{self.snapshots.last_path} (saved after iteration {self.snapshots.last_saved}) is the "
                     f"last good state" if self.snapshots.last_saved is not None
                     else "no training state was saved by this run")
            hint = "lower --learning-rate" + (" or try --amp off" if args.amp != "off" else "")
            print(f"{PROG}: error: {exc}; stopped before updating the weights. {where}; {hint}.",
                  file=sys.stderr, flush=True)
            return 1
        finally:
            if self.writer is not None:
                self.writer.close()
        self.bar.close()
        self.report(datetime.timedelta(seconds=round(time.perf_counter() - run_start)))
        return 0

    def plan_schedule(self) -> None:
        """--time-budget: time the first steps of epoch 0, then fix the number of epochs.

        The timed steps are real training steps (at the base LR, where poly starts); the first
        two are warm-up and not counted. The plan counts every step, evaluation (one forward pass
        per image, timed here) and save (the first last.pth, timed here) the run will make, and
        keeps the largest number of epochs that ends within the budget, at least one.
        """
        args, ipe = self.args, self.iters_per_epoch
        epoch = self.iteration // ipe
        # Within the epoch where it can: its end (evaluation, snapshots) wants the plan made.
        timing_steps = max(1, min(TIMING_STEPS, ipe - self.iteration % ipe - 1))
        args.epochs = epoch + 2  # provisional: the epoch being timed is not the last
        self.train_epoch(epoch, stop_at=self.iteration + timing_steps)
        if self.stop_signal or not self.step_seconds:
            args.epochs = None  # stopped while timing: nothing is planned, nothing more runs
            return
        counted = self.step_seconds[2:] or self.step_seconds[-1:]
        step_s = sorted(counted)[len(counted) // 2]
        eval_s = self.time_evaluation()
        args.epochs, self.total_iters = epoch + 1, (epoch + 1) * ipe  # provisional, for the timed save
        tick = time.perf_counter()
        self.save_last()
        save_s = time.perf_counter() - tick
        left = args.time_budget * 60 - (time.perf_counter() - self.started)
        epochs, planned = plan_epochs(left, args, iters_per_epoch=ipe, done=self.iteration, step_s=step_s,
                                      eval_s=eval_s if self.data.eval_sets else 0.0, save_s=save_s)
        args.epochs, self.total_iters = epochs, epochs * ipe
        self.save_last()  # the fixed schedule, for --resume
        self.bar.reset(total=self.total_iters)
        self.bar.update(self.iteration)
        log(f"--time-budget {args.time_budget:g} min: {step_s:.2f} s per step "
            f"(median of {len(counted)} timed), "
            f"~{eval_s:.0f} s per evaluation, {save_s:.1f} s per save, {left:.0f} s left: {epochs} epochs = "
            f"{self.total_iters} iterations (poly LR over them), planned to end in {planned:.0f} s")

    def time_evaluation(self) -> float:
        """Seconds one evaluation of every split takes, from two timed forward passes of one image."""
        from utils.inference import autocast

        args = self.args
        images = sum(len(dataset) for dataset, _ in self.data.eval_sets.values()) / args.world_size
        if not images:
            return 0.0
        size = args.eval_input_size or args.input_size
        x = torch.zeros(1, 3, *size, device=self.device)
        if args.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        model = self.net.model
        model.eval()
        with torch.no_grad(), autocast(self.device.type, args.amp):
            model(x)
            tick = time.perf_counter()
            model(x)
            forward_s = time.perf_counter() - tick
        model.train()
        return images * forward_s * 1.2  # + the warp back, the scoring and the pictures (a guess)

    def report(self, elapsed: datetime.timedelta) -> None:
        if self.iteration < self.total_iters:  # --max-iters
            if self.snapshots.last_saved != self.iteration:
                self.save_last()
            log(f"stopped at iteration {self.iteration} of {self.total_iters} (--max-iters) after {elapsed}; "
                f"{self.snapshots.last_path} saved: run again (--resume is the default) to continue")
        elif self.best["epoch"] >= 0:
            log(f"done in {elapsed}: best {self.best['split']} mean IU {self.best['mean_iou']:.2f} after "
                f"epoch "
                f"{self.best['epoch'] + 1} ({self.snapshots.best_path})")
        else:
            log(f"done in {elapsed}")


def log_setup(args: argparse.Namespace, data: TrainData, net: Network) -> None:
    from libs import BACKEND_DESCRIPTION

    n_params = sum(p.numel() for p in net.model.parameters()) / 1e6
    log(f"label set: {data.label_set.summary()}")
    log(f"DFPnet: {n_params:.2f} M parameters, {net.init_note}")
    # Synchronised layers keep the in-place Function under DDP whatever --inplace-abn says.
    abn_mode = "in place" if net.inplace or args.distributed else "under plain autograd"
    log(f"device {args.device} x {args.world_size} process(es), amp {args.amp}, channels-last "
        f"{args.channels_last}, compile {args.compile}, InPlace-ABN {abn_mode}, {BACKEND_DESCRIPTION}")
    if args.device.type == "cpu":
        reuse = ("glibc malloc keeps freed memory for reuse (--malloc system to turn off)" if args.malloc_reuse
                 else "system malloc")
        log(f"{cpu_defaults().describe()}; {reuse}")
    ipe = data.iters_per_epoch
    length = (f"{args.epochs} epochs = {ipe * args.epochs} iterations" if args.epochs
              else f"epochs to fit --time-budget {args.time_budget:g} min")
    log(f"training {'+'.join(data.splits)}: {len(data.dataset)} images, batch {args.batch_size} x "
        f"{args.world_size}, {ipe} iterations/epoch x {length}; "
        f"evaluating {', '.join(data.eval_sets) or 'nothing'}")


# ------------------------------------------------------------------------------------------
# main
# ------------------------------------------------------------------------------------------

def main(args: argparse.Namespace) -> int:
    device = setup_device(args)
    du.init_distributed_mode(args)
    label_set = training_label_set(args)
    lock = lock_for_run(args.snapshot_dir)  # one run per folder, taken before any data is read
    try:
        data = build_data(args, device, label_set)
        if data is None:
            return 1
        try:
            resume_path = find_resume(args.resume, args.snapshot_dir)
        except FileNotFoundError as exc:
            raise UsageError(f"argument --resume: {exc}") from None
        net, state = build_model(args, device, resume_path, label_set)
        trainer = Trainer(args, device, data, net, Snapshots(args.snapshot_dir, label_set))
        trainer.restore(state, resume_path)
        del state
        log_setup(args, data, net)
        return trainer.fit()
    finally:
        if lock is not None:
            lock.release()


def run(argv: list[str] | None = None) -> int:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    check_args(parser, args)
    warnings.filterwarnings("ignore", message=".*upsample_bilinear2d_backward_out_cuda.*")
    try:
        return main(args)
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
        print(f"{PROG}: error: out of memory ({first_line(exc, 'out of memory')}). Try a smaller "
              f"--batch-size (it is per process), --amp bf16 (or fp16 on older GPUs), or a smaller "
              f"--input-size.", file=sys.stderr)
        return 1
    finally:
        du.cleanup_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(run())
