"""Evaluate a DFPnet checkpoint on a split of the Dog dataset (docs/reference.md section 7).

    python evaluate.py --data-dir ./dataset/Cartoon_sketches/Dog/ --dataset val \
        --restore-from ./snapshots/DFPnet_epoch_495.pth --input-size 384,384 \
        --metrics-out outputs/eval/metrics.json --save-path outputs/eval/

Every image is letterboxed into the crop exactly as the loader does, predicted, warped back to
its original size and scored against its ground truth there: mean IU, pixel accuracy and mean
accuracy over the classes of the label set (the authors' 8 by default; ``--labels``, else
``labels.json`` in ``--data-dir``, else the set the checkpoint records; a checkpoint of other
classes is refused). ``--truncate-centers`` reproduces the authors' int32
centers (their logged numbers); ``--flip`` and ``--scales`` add test-time augmentation, which
the original did not have. ``--onnx MODEL.onnx`` (in place of ``--restore-from``) evaluates an
export.py model through onnxruntime with the same pre- and post-processing (docs/deploy.md).

Exit status: 0 on success; 1 for a bad dataset or a failure while evaluating; 2 for bad
arguments, a bad label set, or an unusable checkpoint or ONNX model (of other classes than the
label set's included). The metrics file is written (atomically) only on success.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys

import cv2

from dataset.check import check_dataset
from dataset.datasets import CartoonDataSet, default_transform, is_training_split
from dataset.layout import split_paths
from inference.model import network_input_size, network_label_set, read_network, setup_device, setup_model
from inference.pipeline import InferenceStats, save_legend, save_prediction
from inference.predict import evaluate_model, make_eval_loader
from inference.visualize import confusion_matrix_figure, iou_bar_figure, save_figure
from utils import recipe
from utils.cli import (
    DefaultsHelpFormatter,
    add_inference_arguments,
    die,
    error_line,
    given_labels,
    output_folder_problem,
)
from utils.files import write_error, write_json_atomic
from utils.labels import IGNORE_LABEL, LabelSet

PROG = "evaluate.py"


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        formatter_class=DefaultsHelpFormatter,
        prog=PROG,
        description="Evaluate a DFPnet checkpoint: mean IU, pixel "
        "accuracy and mean accuracy on a val-type split, at the original image "
        "size.",
    )
    parser.add_argument(
        "--data-dir",
        default=recipe.DATA_DIR,
        help="dataset root holding <split>_id.txt, <split>_images/ and <split>_segmentations/",
    )
    parser.add_argument(
        "--dataset",
        default=recipe.EVAL_SPLIT,
        help="split to evaluate: val, trainTest or test (training splits are augmented, so refused)",
    )
    parser.add_argument(
        "--restore-from",
        default=recipe.EVAL_CHECKPOINT,
        help="checkpoint: the authors' .pth, our DFPnet_epoch_<e>.pth / best.pth, or a training-state file",
    )
    parser.add_argument(
        "--ignore-label", type=int, default=IGNORE_LABEL, help="ground-truth id that is not scored"
    )
    parser.add_argument(
        "--gpu",
        default=None,
        help="authors' flag: GPU ids to expose through CUDA_VISIBLE_DEVICES (e.g. 0); "
        "default: leave the environment as it is",
    )
    add_inference_arguments(parser, onnx=True, data_dir=True, scores=True)
    parser.add_argument(
        "--truncate-centers",
        action="store_true",
        help="store centers as int32 before warping predictions back, as the authors did "
        "(reproduces their numbers; off: exact float centers)",
    )
    parser.add_argument(
        "--save-path",
        default=None,
        metavar="DIR",
        help="write <id>_label.png (ids), <id>_color.png (the label set's colours), "
        "<id>_overlay.jpg at the original size, plus legend.png, confusion_matrix.png "
        "and per_class_iou.png",
    )
    parser.add_argument(
        "--metrics-out",
        default=None,
        metavar="FILE.json",
        help="write the metrics, confusion matrix and settings as JSON (only on success)",
    )
    parser.add_argument("--no-progress", action="store_true", help="do not show the progress bar")
    return parser


def get_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    if not 0 <= args.ignore_label <= 255:
        parser.error(
            f"argument --ignore-label: expected 0..255 (labels are 8-bit PNGs), got {args.ignore_label}"
        )
    return args


fail = functools.partial(die, PROG)


def find_split(data_dir: str, split: str) -> None:
    """Stop at once if the folder or the split's id list is missing, or the split is a training one."""
    if not os.path.isdir(data_dir):
        fail(f"{data_dir}: dataset folder not found (set --data-dir)")
    id_file = split_paths(data_dir, split).id_list
    if not os.path.isfile(id_file):
        have = sorted(f[: -len("_id.txt")] for f in os.listdir(data_dir) if f.endswith("_id.txt"))
        fail(
            f"{id_file}: not found: {data_dir} has no split {split!r} "
            f"(splits there: {', '.join(have) if have else 'none'})"
        )

    if is_training_split(split):
        fail(
            f"--dataset {split}: training splits are loaded with random augmentation; "
            f"evaluate val, trainTest or another held-out split"
        )


def check_split(data_dir: str, split: str, label_set: LabelSet, ignore_label: int) -> None:
    """Stop before any work if the checker finds a problem in the split (ids outside the label set
    included)."""

    report = check_dataset(data_dir, [split], label_set=label_set, ignore_label=ignore_label)
    if not report.ok:
        print("\n".join(report.failure_lines(PROG, data_dir, [split])), file=sys.stderr)
        sys.exit(1)
    for line in report.warnings:
        print(f"{PROG}: {line}", file=sys.stderr)


def check_outputs(args: argparse.Namespace) -> None:
    """Fail now, not after the whole evaluation, if the outputs cannot be written."""
    metrics_dir = os.path.dirname(os.path.abspath(args.metrics_out)) if args.metrics_out else None
    for folder in filter(None, [args.save_path, metrics_dir]):
        problem = output_folder_problem(folder)
        if problem:
            fail(problem)


def print_report(
    args: argparse.Namespace, matrix, stats: InferenceStats, label_set: LabelSet, runtime: str
) -> None:
    print(
        f"Evaluated {stats.images} images of {args.data_dir} split {args.dataset!r} with "
        f"{args.onnx or args.restore_from}"
    )
    print(f"Label set: {label_set.summary()}")
    print(
        f"Settings: input {args.input_size[0]}x{args.input_size[1]}, amp {args.amp}, "
        f"flip {'on' if args.flip else 'off'}, scales {','.join(f'{s:g}' for s in args.scales)}, "
        f"centers {'truncated (authors)' if args.truncate_centers else 'float'}, {runtime}"
    )
    print(matrix.table(list(label_set.names)))
    print(
        f"{stats.images} images in {stats.seconds:.2f} s: {stats.images_per_second:.2f} images/s "
        f"(network {100.0 * stats.network_share:.0f}% of the time)"
    )


def save_figures(folder: str, matrix, metrics: dict, label_set: LabelSet) -> None:
    """The confusion matrix, the per-class IoU bars and the colour legend, beside the pictures."""
    save_figure(
        confusion_matrix_figure(matrix.mat, list(label_set.names)),
        os.path.join(folder, "confusion_matrix.png"),
    )
    save_figure(
        iou_bar_figure(list(metrics["per_class_iou"].values()), label_set, mean_iou=metrics["mean_iou"]),
        os.path.join(folder, "per_class_iou.png"),
    )
    save_legend(folder, label_set)


def metrics_record(
    args: argparse.Namespace, metrics: dict, stats: InferenceStats, label_set: LabelSet, device, model
) -> dict:
    """The scores with everything needed to reproduce them: what --metrics-out holds."""
    return dict(
        metrics,
        **{
            "num_images": stats.images,
            "checkpoint": args.onnx or args.restore_from,
            "dataset": args.dataset,
            "data_dir": args.data_dir,
            "input_size": list(args.input_size),
            "flip": args.flip,
            "scales": list(args.scales),
            "truncate_centers": args.truncate_centers,
            "amp": args.amp,
            "channels_last": args.channels_last and not args.onnx,
            "fused": args.fuse and not args.onnx,
            "runtime": model.runtime if args.onnx else "pytorch",
            "precision": model.run_precision if args.onnx else ("float32" if args.amp == "off" else args.amp),
            "device": "cpu" if args.onnx else str(device),
            "images_per_second": stats.images_per_second,
            "label_set": dict(label_set.to_dict(), source=label_set.source),
        },
    )


def main(args: argparse.Namespace) -> None:
    if args.gpu is not None:  # before anything touches CUDA
        os.environ["CUDA_VISIBLE_DEVICES"] = args.gpu
    device = setup_device(args, fail)
    find_split(args.data_dir, args.dataset)
    given = given_labels(args, fail, data_dir=args.data_dir)
    network = read_network(args, fail)
    network_input_size(args, network)
    label_set = network_label_set(args, network, given, fail)
    check_split(args.data_dir, args.dataset, label_set, args.ignore_label)
    check_outputs(args)
    try:
        dataset = CartoonDataSet(
            args.data_dir,
            args.dataset,
            crop_size=args.input_size,
            ignore_label=args.ignore_label,
            transform=default_transform(),
            label_set=label_set,
        )
    except (ValueError, OSError) as exc:
        fail(error_line(exc))
    model = setup_model(args, network, label_set, device, fail)
    loader = make_eval_loader(
        dataset,
        batch_size=args.batch_size,
        workers=args.workers,
        pin_memory=device is not None and device.type == "cuda",
    )

    def save_pictures(name: str, label, index: int) -> None:
        image = cv2.imread(dataset.image_path(index), cv2.IMREAD_COLOR)
        save_prediction(args.save_path, name, label, image, label_set=label_set)

    stats = InferenceStats()
    try:
        matrix = evaluate_model(
            model,
            dataset,
            loader,
            device,
            label_set=label_set,
            amp=args.amp,
            flip=args.flip,
            scales=args.scales,
            truncate_centers=args.truncate_centers,
            progress=not args.no_progress,
            channels_last=args.channels_last,
            on_prediction=save_pictures if args.save_path else None,
            stats=stats,
        )
    except (ValueError, OSError) as exc:
        fail(error_line(exc))
    if stats.images == 0:
        fail(f"{args.data_dir}: split {args.dataset!r} has no images")

    print_report(args, matrix, stats, label_set, model.describe() if args.onnx else f"device {device}")
    metrics = matrix.to_dict(list(label_set.names))
    if args.save_path:
        try:
            save_figures(args.save_path, matrix, metrics, label_set)
        except OSError as exc:
            fail(str(exc))
        print(f"Pictures in {args.save_path}")
    if args.metrics_out:
        try:
            write_json_atomic(
                metrics_record(args, metrics, stats, label_set, device, model), args.metrics_out
            )
        except OSError as exc:
            fail(str(write_error(args.metrics_out, exc)))
        print(f"Metrics in {args.metrics_out}")


if __name__ == "__main__":
    main(get_arguments())
