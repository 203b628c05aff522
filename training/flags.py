"""train.py's flags, each with its default (the recipe's, from ``utils.recipe``), and the cross-flag
checks argparse cannot make. ``training.config.setup`` turns the parsed flags into the run's
configuration."""

from __future__ import annotations

import argparse

from training import PROG
from utils import recipe
from utils.cli import (
    AMP_MODES,
    DefaultsHelpFormatter,
    add_label_arguments,
    non_negative_float,
    non_negative_int,
    parse_size,
    positive_float,
    positive_int,
)
from utils.labels import IGNORE_LABEL

# --activation-checkpointing: the backbone layers each choice recomputes in backward.
_BACKBONE = ("layer1", "layer2", "layer3", "layer4")
CHECKPOINTED_LAYERS = {"off": (), "layer3": ("layer3",), "backbone": _BACKBONE, "all": (*_BACKBONE, "heads")}

# The authors' flags train.py accepts and ignores (training splits are always augmented): no run
# configuration reads them, so TrainConfig has no field for them.
IGNORED_FLAGS = ("random_mirror", "random_scale")


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        add_help=add_help,
        formatter_class=DefaultsHelpFormatter,
        description="Train DFPnet (cartoon dog parsing), the authors' recipe.",
    )
    _add_authors_flags(parser)
    _add_our_flags(parser)
    return parser


def _add_authors_flags(parser: argparse.ArgumentParser) -> None:
    """The authors' train.py flags, with their defaults (the recipe's)."""
    parser.add_argument(
        "--data-dir",
        default=recipe.DATA_DIR,
        help="dataset root holding <split>_id.txt, <split>_images/, <split>_segmentations/",
    )
    parser.add_argument(
        "--dataset",
        default="train",
        help="training split: train, or trainval (its own lists if present, else train+val)",
    )
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        default=recipe.BATCH_SIZE,
        help="images per step PER PROCESS (torchrun with N processes trains on N x this)",
    )
    parser.add_argument(
        "--input-size",
        type=parse_size,
        default=recipe.INPUT_SIZE,
        metavar="H,W",
        help="training crop height,width (the authors' run.sh: 384,384; their train.py's "
        "parser said 473,473, unused)",
    )
    parser.add_argument(
        "--learning-rate",
        type=positive_float,
        default=recipe.LEARNING_RATE,
        help="base learning rate of the poly schedule",
    )
    parser.add_argument("--momentum", type=non_negative_float, default=recipe.MOMENTUM, help="SGD momentum")
    parser.add_argument(
        "--weight-decay", type=non_negative_float, default=recipe.WEIGHT_DECAY, help="SGD weight decay (L2)"
    )
    parser.add_argument(
        "--power",
        type=non_negative_float,
        default=recipe.POWER,
        help="poly exponent: lr = base * (1 - iteration / total) ** power",
    )
    add_label_arguments(parser, stored=False)
    parser.add_argument(
        "--ignore-label", type=int, default=IGNORE_LABEL, help="label id that gets no loss and no score"
    )
    parser.add_argument(
        "--random-mirror",
        action="store_true",
        help="accepted for the authors' scripts; ignored: training splits are always "
        "augmented (flip, scale, rotation), as in the original",
    )
    parser.add_argument(
        "--random-scale",
        action="store_true",
        help="accepted for the authors' scripts; ignored (see --random-mirror)",
    )
    parser.add_argument(
        "--random-seed",
        type=int,
        default=recipe.RANDOM_SEED,
        help="seed of the initial weights, the data order, the augmentation and dropout",
    )
    parser.add_argument(
        "--restore-from",
        default=recipe.IMAGENET_WEIGHTS,
        help="initial weights: the ImageNet deep-stem ResNet-101 (backbone only) or a full "
        "DFPnet checkpoint (fine-tuning; of another label set: its classifiers are "
        "re-initialised); 'none' trains from scratch",
    )
    parser.add_argument(
        "--snapshot-dir", default=recipe.SNAPSHOT_DIR, help="where checkpoints and TensorBoard events go"
    )
    parser.add_argument(
        "--gpu",
        default=None,
        help="authors' flag: GPU ids to expose through CUDA_VISIBLE_DEVICES (e.g. 0 or 0,1); "
        "--device auto then uses the first (or, under torchrun, the local rank's)",
    )
    parser.add_argument(
        "--start-epoch",
        type=non_negative_int,
        default=0,
        help="first epoch when not resuming (the LR schedule starts at that epoch)",
    )
    parser.add_argument(
        "--epochs",
        type=positive_int,
        default=None,
        help=f"number of epochs of the whole run (default: {recipe.EPOCHS}, or what --time-budget allows)",
    )
    parser.add_argument(
        "--save-num-images",
        type=positive_int,
        default=recipe.SAVE_NUM_IMAGES,
        help="images per TensorBoard training grid (input, label, prediction)",
    )


def _add_our_flags(parser: argparse.ArgumentParser) -> None:
    """What the authors' script did not have: resuming, devices, precision, cadences, budgets."""
    parser.add_argument(
        "--resume",
        nargs="?",
        const="auto",
        default="auto",
        metavar="PATH|auto|none",
        help="continue a run from a training state: auto = <snapshot-dir>/last.pth if it exists, a "
        "path, or none = start anew (overwriting last.pth later)",
    )
    parser.add_argument(
        "--device", default="auto", help="auto (CUDA when available, else CPU), cpu, cuda, cuda:N"
    )
    parser.add_argument(
        "--workers",
        type=non_negative_int,
        default=recipe.WORKERS,
        help="DataLoader worker processes per process",
    )
    parser.add_argument(
        "--amp",
        choices=AMP_MODES,
        default=None,
        help="autocast precision of the network: off, bf16 or fp16 (CUDA, with loss "
        "scaling); default: bf16 where the device supports it, else off",
    )
    parser.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="channels-last memory format (default: on, except on CPUs without AVX2, where "
        "the authors' NCHW is kept)",
    )
    parser.add_argument(
        "--inplace-abn",
        choices=("auto", "on", "off"),
        default="auto",
        help="InPlace-ABN's in-place memory saving: on, off (the same math under plain "
        "autograd: more memory, fewer kernel launches) or auto (default: on for the "
        "CPU, off for CUDA, where it is faster; synchronised layers under DDP stay "
        "in place)",
    )
    parser.add_argument(
        "--malloc",
        choices=("reuse", "system"),
        default=None,
        help="on the CPU, glibc malloc keeps freed memory for reuse (reuse: faster steps, no "
        "page faults for every activation; at large batches more peak memory) or "
        "leaves glibc as it is (system) (default: reuse, or what --tune measured fastest)",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the network (off by default: slower to train on the CPU)",
    )
    parser.add_argument(
        "--activation-checkpointing",
        choices=tuple(CHECKPOINTED_LAYERS),
        default="off",
        help="recompute activations in backward instead of keeping them, for less memory and more time "
        "(docs/training.md, 'Out of memory?'): layer3 (the backbone's largest layer), backbone (layer1-4) "
        "or all (the backbone and the full-size heads); the same loss and gradients",
    )
    parser.add_argument(
        "--update-in-backward",
        action="store_true",
        help="apply each parameter's SGD update as soon as backward has its gradient, then free the "
        "gradient, so that the gradients never all exist at once (docs/training.md, 'Out of memory?'): "
        "the same weights; one process, bf16 or float32",
    )
    parser.add_argument(
        "--tune",
        choices=("auto", "on", "off"),
        default="auto",
        help="time the configurations that --amp, --channels-last, --inplace-abn and --malloc leave "
        "open (and InPlace-ABN's backend) for a few steps at this run's batch and crop, and train with "
        "the fastest whose peak memory stays within the authors' configuration's (or --max-memory): "
        "on measures now, auto when that costs under 1%% of the planned steps or an earlier run on "
        "this machine measured it (docs/training.md, 'Tuning'), off keeps the CPU class's defaults",
    )
    parser.add_argument(
        "--max-memory",
        type=positive_float,
        default=None,
        metavar="MIB",
        help="--tune's memory bound in MiB (default: the authors' configuration's peak, measured "
        "alike; on CUDA the card's memory)",
    )
    parser.add_argument(
        "--deterministic",
        action="store_true",
        help="deterministic algorithms only (bit-exact reruns on the CPU; slower)",
    )
    parser.add_argument(
        "--eval-every",
        type=positive_int,
        default=None,
        help=f"evaluate every N epochs and after the last (default: the authors' {recipe.EVAL_EVERY}, "
        f"{recipe.EVAL_EVERY_LATE} from epoch {recipe.EVAL_LATE_FROM} on)",
    )
    parser.add_argument(
        "--val-datasets",
        nargs="*",
        default=list(recipe.VAL_DATASETS),
        metavar="SPLIT",
        help="splits evaluated during training; one whose id list is missing is skipped "
        "with a warning; best.pth follows the first one evaluated (val)",
    )
    parser.add_argument(
        "--eval-input-size",
        type=parse_size,
        default=None,
        metavar="H,W",
        help="crop size for evaluation (default: --input-size)",
    )
    parser.add_argument(
        "--save-every",
        type=non_negative_int,
        default=recipe.SAVE_EVERY,
        help="also write last.pth every N iterations (0: only at the end of each epoch)",
    )
    parser.add_argument(
        "--snapshot-every",
        type=positive_int,
        default=recipe.SNAPSHOT_EVERY,
        help="write DFPnet_epoch_<e>.pth when e %% N == 0 (authors: 99) and after the last epoch",
    )
    parser.add_argument(
        "--log-every",
        type=positive_int,
        default=recipe.LOG_EVERY,
        help="TensorBoard scalars (loss, learning_rate, images_per_second) every N iterations",
    )
    parser.add_argument(
        "--image-every",
        type=positive_int,
        default=recipe.IMAGE_EVERY,
        help="TensorBoard image grids (input, label, prediction) every N iterations",
    )
    parser.add_argument(
        "--time-budget",
        type=positive_float,
        default=None,
        metavar="MINUTES",
        help="fit the run into this wall time from the process start: time the first steps, "
        "plan the number of iterations (and the poly schedule over them) so that training, "
        "evaluations and saves end as close to it as whole steps allow, and plan again from the "
        "measured times at every epoch end and, in the last epoch, after every step (it may be "
        "partial); a resumed run keeps the last plan (instead of --epochs)",
    )
    parser.add_argument(
        "--max-iters",
        type=positive_int,
        default=None,
        help="stop once the run has made N steps in all (demos, tests); the LR schedule "
        "still spans --epochs, so --resume continues it",
    )


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Cross-flag checks that argparse's types cannot make; each failure exits 2 like argparse."""
    if not 0 <= args.ignore_label <= 255:
        parser.error(
            f"argument --ignore-label: expected 0..255 (labels are 8-bit PNGs), got {args.ignore_label}"
        )
    if args.time_budget is not None and args.epochs is not None:
        parser.error("argument --time-budget: not with --epochs (the budget decides the number of epochs)")
    epochs = args.epochs or (None if args.time_budget else recipe.EPOCHS)
    if epochs is not None and args.start_epoch >= epochs:
        parser.error(f"argument --start-epoch: {args.start_epoch} is not below --epochs {epochs}")
    if args.momentum >= 1:
        parser.error(f"argument --momentum: expected a value below 1, got {args.momentum}")
    if min(args.input_size) < 16:
        parser.error(
            f"argument --input-size: {args.input_size[0]},{args.input_size[1]} is too small; "
            f"DFPnet downsamples 16 times (use at least 16,16)"
        )
