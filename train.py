"""Train DFPnet on the cartoon dog parsing dataset (the authors' recipe, SPEC section 6).

    python train.py --data-dir ./dataset/Cartoon_sketches/Dog/ --input-size 384,384 --batch-size 12
    torchrun --nproc_per_node=4 train.py ...        # DistributedDataParallel; --batch-size is per process

SGD (momentum 0.9, weight decay 5e-4) from the ImageNet deep-stem ResNet-101, poly learning
rate per iteration, loss = sum of the cross-entropies of the five outputs. Every --eval-every
epochs the val and trainTest splits are evaluated with the same code as evaluate.py. Writes to
--snapshot-dir: TensorBoard events, DFPnet_epoch_<e>.pth (authors' format), best.pth (best val
mean IU) and last.pth (the full training state that --resume continues from, exactly).

Exit status: 0 done; 1 dataset problem, non-finite loss or out of memory; 2 bad arguments or an
unusable checkpoint.
"""
from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
import warnings

import torch
from torch.utils.data import ConcatDataset, DataLoader

from utils import distributed as du
from utils.checkpoint import (CheckpointError, extract_state_dict, load_imagenet_backbone,
                              load_state_dict_strict, read_checkpoint)
from utils.engine import (NonFiniteLossError, SeededSamples, StepInfo, capture_rng_state, default_inplace_abn,
                          plain_args, poly_lr, restore_rng_state, train_one_epoch)
from utils.cli import (AMP_MODES, default_amp, non_negative_float, non_negative_int, parse_size,
                       positive_float, positive_int, resolve_device)
from utils.labels import IGNORE_LABEL, NUM_CLASSES, class_names

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
    parser.add_argument("--data-dir", default="./dataset/Cartoon_sketches/Dog/",
                        help="dataset root holding <split>_id.txt, <split>_images/, <split>_segmentations/")
    parser.add_argument("--dataset", default="train",
                        help="training split: train, or trainval (its own lists if present, else train+val)")
    parser.add_argument("--batch-size", type=positive_int, default=12,
                        help="images per step PER PROCESS (torchrun with N processes trains on N x this)")
    parser.add_argument("--input-size", type=parse_size, default=(473, 473), metavar="H,W",
                        help="training crop height,width (authors' script: 473,473; their run.sh: 384,384)")
    parser.add_argument("--learning-rate", type=positive_float, default=1e-3,
                        help="base learning rate of the poly schedule")
    parser.add_argument("--momentum", type=non_negative_float, default=0.9, help="SGD momentum")
    parser.add_argument("--weight-decay", type=non_negative_float, default=5e-4, help="SGD weight decay (L2)")
    parser.add_argument("--power", type=non_negative_float, default=0.9,
                        help="poly exponent: lr = base * (1 - iteration / total) ** power")
    parser.add_argument("--num-classes", type=positive_int, default=NUM_CLASSES,
                        help="number of classes, background included (8 for the Dog dataset)")
    parser.add_argument("--ignore-label", type=int, default=IGNORE_LABEL,
                        help="label id that gets no loss and no score")
    parser.add_argument("--random-mirror", action="store_true",
                        help="accepted for the authors' scripts; ignored: training splits are always "
                             "augmented (flip, scale, rotation), as in the original")
    parser.add_argument("--random-scale", action="store_true",
                        help="accepted for the authors' scripts; ignored (see --random-mirror)")
    parser.add_argument("--random-seed", type=int, default=1234,
                        help="seed of the initial weights, the data order, the augmentation and dropout")
    parser.add_argument("--restore-from", default="./Trained_Models/resnet101-imagenet.pth",
                        help="initial weights: the ImageNet deep-stem ResNet-101 (backbone only) or a full "
                             "DFPnet checkpoint (fine-tuning); 'none' trains from scratch")
    parser.add_argument("--snapshot-dir", default="./snapshots",
                        help="where checkpoints and TensorBoard events go")
    parser.add_argument("--gpu", default=None,
                        help="authors' flag: GPU ids to expose through CUDA_VISIBLE_DEVICES (e.g. 0 or 0,1); "
                             "--device auto then uses the first (or, under torchrun, the local rank's)")
    parser.add_argument("--start-epoch", type=non_negative_int, default=0,
                        help="first epoch when not resuming (the LR schedule starts at that epoch)")
    parser.add_argument("--epochs", type=positive_int, default=500, help="number of epochs of the whole run")
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
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                        help="channels-last memory format (faster convolutions on recent GPUs and CPUs)")
    parser.add_argument("--inplace-abn", choices=("auto", "on", "off"), default="auto",
                        help="InPlace-ABN's in-place memory saving: on, off (the same math under plain "
                             "autograd: more memory, fewer kernel launches) or auto (default: on for the "
                             "CPU, off for CUDA, where it is faster; synchronised layers under DDP stay "
                             "in place)")
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
    parser.add_argument("--snapshot-every", type=positive_int, default=99,
                        help="write DFPnet_epoch_<e>.pth when e %% N == 0 (authors: 99) and after the "
                             "last epoch")
    parser.add_argument("--log-every", type=positive_int, default=100,
                        help="TensorBoard scalars (loss, learning_rate, images_per_second) every N "
                             "iterations")
    parser.add_argument("--image-every", type=positive_int, default=500,
                        help="TensorBoard image grids (input, label, prediction) every N iterations")
    parser.add_argument("--max-iters", type=positive_int, default=None,
                        help="stop once the run has made N steps in all (demos, tests); the LR schedule "
                             "still spans --epochs, so --resume continues it")
    return parser


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Cross-flag checks that argparse's types cannot make; each failure exits 2 like argparse."""
    if not 0 <= args.ignore_label <= 255:
        parser.error(f"argument --ignore-label: expected 0..255 (labels are 8-bit PNGs), "
                     f"got {args.ignore_label}")
    if args.num_classes > 255 or args.ignore_label < args.num_classes:
        parser.error(f"argument --num-classes: {args.num_classes} classes leave no room for --ignore-label "
                     f"{args.ignore_label}")
    if args.start_epoch >= args.epochs:
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
        if os.path.isfile(os.path.join(data_dir, f"{split}_id.txt")):
            kept.append(split)
        else:
            warn(f"{os.path.join(data_dir, f'{split}_id.txt')} not found: split {split!r} is not evaluated")
    return kept


def training_splits(data_dir: str, dataset: str) -> list[str]:
    """The split lists the training set is made of: ``trainval`` without its own lists is train + val."""
    if dataset == "trainval" and not os.path.isfile(os.path.join(data_dir, "trainval_id.txt")):
        return ["train", "val"]
    return [dataset]


def check_data(args: argparse.Namespace, splits: list[str]) -> bool:
    """dataset.check on every split this run reads, on rank 0; every rank gets the verdict."""
    ok = [True]
    if du.is_main_process():
        from dataset.check import check_dataset
        report = check_dataset(args.data_dir, splits, num_classes=args.num_classes,
                               ignore_label=args.ignore_label)
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
            print(report.summary, flush=True)
        ok = [report.ok]
    if du.is_dist_avail_and_initialized():
        torch.distributed.broadcast_object_list(ok, src=0)
    return bool(ok[0])


def build_train_dataset(args: argparse.Namespace, splits: list[str]):
    from dataset.datasets import CartoonDataSet
    from dataset.transforms import default_transform

    parts = []
    for split in splits:
        part = CartoonDataSet(args.data_dir, split, crop_size=args.input_size, ignore_label=args.ignore_label,
                              transform=default_transform(), num_classes=args.num_classes)
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
    PyTorch's default init gives stem gradient norms in the thousands: the synthetic demo
    (128x128, batch 8, LR 1e-2) reached a val mean IU of 24.6 after 480 iterations with it and
    34.8 after 432 with this one.
    """
    from networks.backbone import Bottleneck

    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, Bottleneck):
            torch.nn.init.zeros_(module.bn3.weight)  # InPlace-ABN scale |0| + eps: branch ~ 0


def initialise_weights(model: torch.nn.Module, restore_from: str) -> str:
    """--restore-from: ImageNet backbone, or a whole DFPnet checkpoint; a missing file is loud, not fatal."""
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
    state = extract_state_dict(read_checkpoint(restore_from), restore_from)
    if any(key.startswith("outc.") for key in state):  # a whole DFPnet: fine-tune / continue from it
        load_state_dict_strict(model, state, restore_from)
        return f"all weights from {restore_from}"
    del state
    loaded, total = load_imagenet_backbone(model, restore_from)
    return f"ImageNet backbone from {restore_from} ({loaded} of {total} tensors)"


def find_resume(args: argparse.Namespace) -> str | None:
    if args.resume.lower() == "none":
        return None
    if args.resume.lower() == "auto":
        path = os.path.join(args.snapshot_dir, "last.pth")
        return path if os.path.isfile(path) else None
    if not os.path.isfile(args.resume):
        raise UsageError(f"argument --resume: {args.resume}: no such file")
    return args.resume


def evaluation_due(epoch: int, args: argparse.Namespace) -> bool:
    """After epoch ``epoch`` (0-based)? Every --eval-every epochs counted from 1, and after the last."""
    every = args.eval_every or (5 if epoch < 500 else 20)
    return (epoch + 1) % every == 0 or epoch == args.epochs - 1


def build_eval_sets(args: argparse.Namespace, splits: list[str], device: torch.device) -> dict:
    """``{split: (dataset, loader)}``: un-augmented crops, this process's shard of each split."""
    from dataset.datasets import CartoonDataSet
    from dataset.transforms import default_transform
    from utils.inference import make_eval_loader

    sets = {}
    for split in splits:
        dataset = CartoonDataSet(args.data_dir, split, crop_size=args.eval_input_size or args.input_size,
                                 ignore_label=args.ignore_label, transform=default_transform(),
                                 num_classes=args.num_classes)
        sets[split] = (dataset, make_eval_loader(dataset, batch_size=1, workers=min(args.workers, 2),
                                                 pin_memory=device.type == "cuda"))
    return sets


def log_training_images(writer, info: StepInfo, n: int) -> None:
    """Input (true colours), label and prediction grids of the step's first ``n`` images."""
    from utils.visualize import image_grid, label_grid

    writer.add_image("Images", image_grid(info.images.detach().float().cpu(), max_images=n), info.iteration,
                     dataformats="HWC")
    writer.add_image("Labels", label_grid(info.labels.cpu(), max_images=n), info.iteration, dataformats="HWC")
    writer.add_image("Preds", label_grid(info.outputs[-1][:n].detach().float().cpu(), max_images=n),
                     info.iteration, dataformats="HWC")


# ------------------------------------------------------------------------------------------
# Evaluation (the loop and the metrics are evaluate.py's)
# ------------------------------------------------------------------------------------------

def evaluate(model: torch.nn.Module, splits: dict, device: torch.device, args: argparse.Namespace,
             writer, epoch: int) -> dict[str, dict]:
    """Evaluate each split with utils.inference.evaluate_model; log the authors' TensorBoard scalars."""
    from utils.inference import evaluate_model

    names = class_names(args.num_classes)
    results = {}
    for split, (dataset, loader) in splits.items():
        example = {}

        def keep_first(name: str, label, index: int) -> None:
            if not example:
                example.update(label=label, index=index)

        matrix = evaluate_model(model, dataset, loader, device, num_classes=args.num_classes, amp=args.amp,
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
                          iou_bar_figure(stats["per_class_iou"], names, mean_iou=stats["mean_iou"]), step,
                          close=False)
        if example:
            index = example["index"]
            pictures = {"image": dataset.read_image(index)[:, :, ::-1].copy(),  # BGR -> RGB
                        "prediction": label_to_rgb(example["label"]),
                        "ground_truth": label_to_rgb(dataset.read_label(index))}
            for name, picture in pictures.items():
                writer.add_image(f"{split}/{name}", picture, step, dataformats="HWC")
    return results


# ------------------------------------------------------------------------------------------
# Checkpoints
# ------------------------------------------------------------------------------------------

def read_training_state(path: str, model: torch.nn.Module) -> dict:
    """last.pth (or another training state): its weights go into ``model``; the rest is returned."""
    state = read_checkpoint(path)
    if not isinstance(state, dict) or "optimizer" not in state or "iteration" not in state:
        raise CheckpointError(f"{path}: holds weights only, not a training state to resume "
                              f"(pass it as --restore-from, or --resume none)")
    load_state_dict_strict(model, extract_state_dict(state, path), path)
    return state


def resume_position(state: dict, path: str, iters_per_epoch: int, total_iters: int) -> int:
    """The iteration to continue from; warns when the run's shape changed since the save."""
    iteration = int(state["iteration"])
    saved = state.get("schedule", {})
    if saved.get("iters_per_epoch") != iters_per_epoch:
        # Another batch size or process count: the interrupted epoch's batches cannot be matched.
        epoch = int(state.get("epoch", 0))
        warn(f"{path} was saved with {saved.get('iters_per_epoch')} iterations per epoch, this run has "
             f"{iters_per_epoch} (other --batch-size or process count): epoch {epoch} starts over")
        return epoch * iters_per_epoch
    if saved.get("total_iters") != total_iters:
        warn(f"{path}: the run had {saved.get('total_iters')} iterations in all, this one has {total_iters} "
             f"(other --epochs): the LR schedule is stretched from here on")
    return iteration


# ------------------------------------------------------------------------------------------
# main
# ------------------------------------------------------------------------------------------


def main(args: argparse.Namespace) -> int:
    if args.gpu is not None:  # before anything touches CUDA, as the authors
        os.environ["CUDA_VISIBLE_DEVICES"] = args.gpu
    try:
        device = resolve_training_device(args)
    except ValueError as exc:
        raise UsageError(f"argument --device: {exc}") from None
    args.device = device
    if args.amp is None:
        args.amp = default_amp(device)
    if args.amp == "fp16" and device.type != "cuda":
        raise UsageError("argument --amp: fp16 needs a CUDA device (its loss scaling); use bf16 on the CPU")
    if args.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        # Some CUDA kernels (bilinear upsampling's backward) have no deterministic version: warn there.
        torch.use_deterministic_algorithms(True, warn_only=device.type == "cuda")
    torch.backends.cudnn.benchmark = device.type == "cuda" and not args.deterministic

    du.init_distributed_mode(args)
    rank, world = args.rank, args.world_size

    # ---- data: checked first, so a broken file stops the run before the first iteration
    train_splits = training_splits(args.data_dir, args.dataset)
    val_splits = present_splits(args.data_dir, args.val_datasets) if os.path.isdir(args.data_dir) else []
    if not check_data(args, list(dict.fromkeys(train_splits + val_splits))):
        return 1
    if train_splits != [args.dataset]:
        log(f"--dataset {args.dataset}: no {args.dataset}_id.txt, training on {' + '.join(train_splits)}")
    train_set = build_train_dataset(args, train_splits)
    sampler = du.EpochShuffleSampler(len(train_set), args.batch_size, seed=args.random_seed, rank=rank,
                                     world_size=world)
    iters_per_epoch = sampler.batches_per_epoch
    if iters_per_epoch == 0:
        raise UsageError(f"argument --batch-size: {args.batch_size} x {world} process(es) needs at least "
                         f"{args.batch_size * world} training images, {'+'.join(train_splits)} has "
                         f"{len(train_set)} (incomplete batches are dropped)")
    total_iters = args.epochs * iters_per_epoch
    loader_generator = torch.Generator()  # reseeded per epoch: worker seeds from (seed, epoch, rank)
    train_loader = DataLoader(SeededSamples(train_set, args.random_seed), batch_size=args.batch_size,
                              sampler=sampler, num_workers=args.workers, pin_memory=device.type == "cuda",
                              drop_last=True, generator=loader_generator, persistent_workers=args.workers > 0)
    eval_sets = build_eval_sets(args, val_splits, device)

    # ---- model and optimizer
    from libs import BACKEND_DESCRIPTION, set_inplace
    from networks.dfpnet import DFPNet

    torch.manual_seed(args.random_seed)  # the same initial weights in every process
    model = DFPNet(num_classes=args.num_classes)
    # In the authors' checkpoints but never used in forward: frozen, so DDP does not wait for its
    # gradients (it would otherwise need find_unused_parameters, a graph walk per step).
    model.layer5_pred3x3.requires_grad_(False)
    inplace = default_inplace_abn(device) if args.inplace_abn == "auto" else args.inplace_abn == "on"
    set_inplace(model, inplace)
    resume_path = find_resume(args)
    state = read_training_state(resume_path, model) if resume_path else None
    init_note = f"resumed from {resume_path}" if state else initialise_weights(model, args.restore_from)
    model.to(device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    model_without_ddp = model
    if args.distributed:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, gradient_as_bucket_view=True)
    train_model = torch.compile(model) if args.compile else model
    optimizer = torch.optim.SGD([p for p in model_without_ddp.parameters() if p.requires_grad],
                                lr=args.learning_rate, momentum=args.momentum, weight_decay=args.weight_decay)
    scaler = torch.amp.GradScaler("cuda") if args.amp == "fp16" else None

    # ---- where the run stands
    iteration = args.start_epoch * iters_per_epoch
    best = {"mean_iou": -1.0, "epoch": -1, "split": None}
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        iteration = resume_position(state, resume_path, iters_per_epoch, total_iters)
        best = dict(state.get("best") or best)
        rng = state.get("rng") or []
        if len(rng) == world:
            restore_rng_state(rng[rank], device)
        else:
            warn(f"{resume_path} holds the random states of {len(rng)} process(es), this run has {world}: "
                 f"dropout draws differ from the interrupted run's")
            torch.manual_seed(du.derive_seed(args.random_seed, "dropout", rank, iteration))
        del state
    else:
        torch.manual_seed(du.derive_seed(args.random_seed, "dropout", rank))
    start_epoch, skip_batches = divmod(iteration, iters_per_epoch)

    n_params = sum(p.numel() for p in model_without_ddp.parameters()) / 1e6
    log(f"DFPnet: {n_params:.2f} M parameters, {init_note}")
    # Synchronised layers keep the in-place Function under DDP whatever --inplace-abn says.
    abn_mode = "in place" if inplace or args.distributed else "under plain autograd"
    log(f"device {device} x {world} process(es), amp {args.amp}, channels-last {args.channels_last}, "
        f"compile {args.compile}, InPlace-ABN {abn_mode}, {BACKEND_DESCRIPTION}")
    log(f"training {'+'.join(train_splits)}: {len(train_set)} images, batch {args.batch_size} x {world}, "
        f"{iters_per_epoch} iterations/epoch x {args.epochs} epochs = {total_iters} iterations; "
        f"evaluating {', '.join(val_splits) or 'nothing'}")
    if iteration >= total_iters:
        log(f"nothing to do: {resume_path} is at iteration {iteration} of {total_iters}, the run is complete "
            f"(--resume none starts anew)")
        return 0
    if iteration:
        lr = poly_lr(args.learning_rate, iteration, total_iters, args.power)
        log(f"starting at epoch {start_epoch}, iteration {iteration} (lr {lr:.3e})")

    writer = None
    if du.is_main_process():
        os.makedirs(args.snapshot_dir, exist_ok=True)
        from tensorboardX import SummaryWriter
        # purge_step hides what an interrupted run logged after its last save (steps > iteration).
        writer = SummaryWriter(logdir=args.snapshot_dir, purge_step=iteration + 1 if iteration else None)

    last_path = os.path.join(args.snapshot_dir, "last.pth")
    last_saved: dict[str, int | None] = {"iteration": None}

    def save_last(next_epoch: int, at: int) -> None:
        if writer is not None:
            writer.flush()  # best effort: a kill still loses what tensorboardX's queue holds
        rng = du.all_gather_objects(capture_rng_state(device))  # every process's, for an exact resume
        du.save_on_master({
            "model": model_without_ddp.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "epoch": next_epoch,
            "iteration": at,
            "schedule": {"base_lr": args.learning_rate, "power": args.power, "total_iters": total_iters,
                         "iters_per_epoch": iters_per_epoch},
            "rng": rng,
            "best": best,
            "world_size": world,
            "args": plain_args(args),
        }, last_path)
        last_saved["iteration"] = at

    from tqdm import tqdm
    bar = tqdm(total=total_iters, initial=iteration, unit="it", dynamic_ncols=True,
               disable=not (du.is_main_process() and sys.stderr.isatty()))

    def on_step(info: StepInfo) -> None:
        it = info.iteration
        rate = info.images.shape[0] * world / max(info.seconds, 1e-9)
        bar.update(1)
        bar.set_postfix(loss=f"{info.loss:.3f}", lr=f"{info.lr:.2e}", img_s=f"{rate:.1f}", refresh=False)
        if writer is not None and it % args.log_every == 0:
            writer.add_scalar("loss", info.loss, it)
            writer.add_scalar("learning_rate", info.lr, it)
            writer.add_scalar("images_per_second", rate, it)
        if writer is not None and it % args.image_every == 0:
            log_training_images(writer, info, args.save_num_images)
        # The epoch's last step is saved at the epoch end, after its evaluation.
        if args.save_every and it % args.save_every == 0 and it % iters_per_epoch != 0:
            save_last(info.epoch, it)

    def lr_at(it: int) -> float:
        return poly_lr(args.learning_rate, it, total_iters, args.power)

    run_start = time.perf_counter()
    try:
        for epoch in range(start_epoch, args.epochs):
            if args.max_iters is not None and iteration >= args.max_iters:
                break
            epoch_start = time.perf_counter()
            sampler.set_epoch(epoch, skip_batches if epoch == start_epoch else 0)
            loader_generator.manual_seed(du.derive_seed(args.random_seed, "loader", epoch, rank))
            bar.set_description(f"epoch {epoch + 1}/{args.epochs}")
            stats = train_one_epoch(train_model, optimizer, train_loader, device, epoch=epoch,
                                    iteration=iteration, lr_at=lr_at, amp=args.amp, scaler=scaler,
                                    channels_last=args.channels_last, ignore_label=args.ignore_label,
                                    stop_at=args.max_iters, on_step=on_step)
            iteration += stats.iterations
            if iteration < (epoch + 1) * iters_per_epoch:  # stopped by --max-iters
                break
            line = (f"epoch {epoch + 1}/{args.epochs}  iter {iteration}/{total_iters}  "
                    f"loss {stats.mean_loss:.4f}  lr {stats.last_lr:.3e}  "
                    f"{stats.images_per_second:.2f} img/s  "
                    f"{datetime.timedelta(seconds=round(time.perf_counter() - epoch_start))}")
            if eval_sets and evaluation_due(epoch, args):
                results = evaluate(model_without_ddp, eval_sets, device, args, writer, epoch)
                line += "  " + "  ".join(f"{split} mIoU {r['mean_iou']:.2f}" for split, r in results.items())
                first = next(iter(results))  # val, unless it is missing
                if results[first]["mean_iou"] > best["mean_iou"]:
                    best = {"mean_iou": results[first]["mean_iou"], "epoch": epoch, "split": first}
                    du.save_on_master(model_without_ddp.state_dict(),
                                      os.path.join(args.snapshot_dir, "best.pth"))
                    line += "  (best)"
            if epoch % args.snapshot_every == 0 or epoch == args.epochs - 1:
                # The authors' format: DataParallel's state_dict, every key prefixed with `module.`.
                du.save_on_master({f"module.{k}": v for k, v in model_without_ddp.state_dict().items()},
                                  os.path.join(args.snapshot_dir, f"DFPnet_epoch_{epoch}.pth"))
            save_last(epoch + 1, iteration)
            if du.is_main_process():
                (bar.write if not bar.disable else print)(line)
                sys.stdout.flush()
    except KeyboardInterrupt:
        bar.close()
        where = (f"{last_path} holds iteration {last_saved['iteration']}"
                 if last_saved["iteration"] is not None else "nothing was saved by this run")
        print(f"{PROG}: interrupted; {where}: run the same command again to continue from there",
              file=sys.stderr, flush=True)
        return 130
    except NonFiniteLossError as exc:
        bar.close()
        where = (f"{last_path} (saved after iteration {last_saved['iteration']}) is the last good state"
                 if last_saved["iteration"] is not None else "no training state was saved by this run")
        hint = "lower --learning-rate" + (" or try --amp off" if args.amp != "off" else "")
        print(f"{PROG}: error: {exc}; stopped before updating the weights. {where}; {hint}.",
              file=sys.stderr, flush=True)
        return 1
    bar.close()
    if writer is not None:
        writer.close()

    elapsed = datetime.timedelta(seconds=round(time.perf_counter() - run_start))
    if iteration < total_iters:
        if last_saved["iteration"] != iteration:
            save_last(iteration // iters_per_epoch, iteration)
        log(f"stopped at iteration {iteration} of {total_iters} (--max-iters) after {elapsed}; {last_path} "
            f"saved: run again (--resume is the default) to continue")
    elif best["epoch"] >= 0:
        log(f"done in {elapsed}: best {best['split']} mean IU {best['mean_iou']:.2f} after epoch "
            f"{best['epoch'] + 1} ({os.path.join(args.snapshot_dir, 'best.pth')})")
    else:
        log(f"done in {elapsed}")
    return 0


def run(argv: list[str] | None = None) -> int:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    check_args(parser, args)
    warnings.filterwarnings("ignore", message=".*upsample_bilinear2d_backward_out_cuda.*")
    try:
        return main(args)
    except UsageError as exc:
        parser.error(str(exc))
    except CheckpointError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except torch.OutOfMemoryError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "out of memory"
        print(f"{PROG}: error: out of memory ({first}). Try a smaller --batch-size (it is per process), "
              f"--amp bf16 (or fp16 on older GPUs), or a smaller --input-size.", file=sys.stderr)
        return 1
    finally:
        du.cleanup_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(run())
