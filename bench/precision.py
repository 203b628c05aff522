"""Accuracy of the deployed precisions: mean IU and per-class IU of float32, bf16 and int8 on one split.

    python -m bench.precision --restore-from snapshots/demo/best.pth \
        --data-dir dataset/Cartoon_sketches/Synthetic --dataset val --input-size 384,384 \
        --calibration-images 96 --json outputs/bench/precision.json

The checkpoint is exported once in float32 (export.py's path) and quantized once to int8
(``inference/quantize.py``, calibrated on ``--calibration-split``), then each row scores the same
split with evaluate.py's loop (letterbox, network, warp back to the original size, confusion
matrix):

* ``float32``: the float32 model on onnxruntime (the reference of every agreement);
* ``pytorch-bf16``: the checkpoint fused in PyTorch under bf16 autocast (``evaluate.py --amp bf16``),
  where bf16 is native;
* ``bf16``: the float32 model on OpenVINO at bf16 (``export.py --precision bf16``), where native;
* ``int8`` and ``int8-onnxruntime``: the int8 model on OpenVINO and on onnxruntime.

Agreement is the share of scored pixels (at the original image size) whose label equals the float32
row's. Targets (docs/deploy.md): int8 mean IU within 0.5 points of float32, agreement >= 99%;
a class losing more than 2 points IU is named.
"""

from __future__ import annotations

import argparse
import os
import tempfile

import numpy as np
import torch

import export
from bench.common import copy_as_bf16, cpu_class_name, environment, finish, format_table, log
from dataset.datasets import CartoonDataSet, default_transform
from inference.model import load_model
from inference.onnx_infer import OnnxModel, openvino_available
from inference.predict import evaluate_model, make_eval_loader
from inference.quantize import calibration_set, quantize_int8
from utils.checkpoint import read_weights
from utils.cli import DefaultsHelpFormatter, parse_size, positive_int
from utils.cpuinfo import native_bf16

INT8_MEAN_IU_POINTS = 0.5
AGREEMENT = 0.99
CLASS_POINTS = 2.0


def get_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.precision",
        description=__doc__.split("\n")[0],
        formatter_class=DefaultsHelpFormatter,
    )
    parser.add_argument("--restore-from", required=True, help="the checkpoint to export and score")
    parser.add_argument(
        "--float-model",
        default=None,
        metavar="FILE.onnx",
        help="the checkpoint's export.py model (float32 or bf16, logits), instead of exporting it again",
    )
    parser.add_argument("--data-dir", required=True, help="dataset folder (scored split and calibration)")
    parser.add_argument("--dataset", default="val", help="the split scored")
    parser.add_argument("--calibration-split", default="train", help="the split that calibrates int8")
    parser.add_argument("--calibration-images", type=positive_int, default=96, help="calibration images")
    parser.add_argument("--input-size", type=parse_size, default=(384, 384), metavar="H,W", help="crop")
    parser.add_argument("--reduce-range", choices=export.REDUCE_RANGE, default="auto", help="as export.py's")
    parser.add_argument("--threads", type=positive_int, default=None, help="runtime threads")
    parser.add_argument("--json", default=None, metavar="FILE", help="write the results as JSON")
    return parser.parse_args(argv)


def score(
    model, dataset: CartoonDataSet, label_set, *, amp: str = "off"
) -> tuple[dict, dict[str, np.ndarray]]:
    """(metrics, labels by image name) of ``model`` on ``dataset``, as evaluate.py scores it."""
    labels: dict[str, np.ndarray] = {}
    loader = make_eval_loader(dataset, batch_size=1, workers=0, pin_memory=False)
    device = None if isinstance(model, OnnxModel) else torch.device("cpu")
    matrix = evaluate_model(
        model,
        dataset,
        loader,
        device,
        label_set=label_set,
        amp=amp,
        progress=False,
        channels_last=device is not None,
        on_prediction=lambda name, label, index: labels.__setitem__(name, label),
    )
    return matrix.compute(), labels


def agreement(
    labels: dict[str, np.ndarray], reference: dict[str, np.ndarray], scored: dict[str, np.ndarray]
) -> float:
    """Share of the ``scored`` pixels (those with a ground truth, by image name) whose label equals
    the reference's."""
    same = sum(int((labels[name] == reference[name])[valid].sum()) for name, valid in scored.items())
    return same / max(sum(int(valid.sum()) for valid in scored.values()), 1)


def main(args: argparse.Namespace) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)

    info = environment("cpu")
    reduce_range, bf16, cpu_class = export.reduce_range(args.reduce_range), native_bf16(), cpu_class_name()
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="dfpnet-bench-precision-") as tmp:
        float_path = args.float_model or os.path.join(tmp, "float32.onnx")
        int8_path = os.path.join(tmp, "int8.onnx")
        if not args.float_model:
            log("exporting float32 ...")
            export.main(
                export.get_arguments(
                    [
                        "--restore-from",
                        args.restore_from,
                        "--out",
                        float_path,
                        "--input-size",
                        ",".join(map(str, args.input_size)),
                        "--no-check",
                    ]
                )
            )
        reference_model = OnnxModel(float_path, threads=args.threads, runtime="onnxruntime")
        label_set = reference_model.label_set
        dataset = CartoonDataSet(
            args.data_dir,
            args.dataset,
            crop_size=args.input_size,
            transform=default_transform(),
            label_set=label_set,
        )
        calibration = calibration_set(
            args.data_dir, args.calibration_split, args.calibration_images, args.input_size
        )
        log(f"quantizing to int8 on {len(calibration.paths)} {args.calibration_split} images ...")
        quantize_int8(float_path, int8_path, calibration, reduce_range=reduce_range)
        sizes = {"float32": os.path.getsize(float_path), "int8": os.path.getsize(int8_path)}

        candidates: list[tuple[str, object, str]] = [("float32", reference_model, "off")]
        if bf16:
            weights = read_weights(args.restore_from)
            fused = load_model(
                weights, label_set.num_classes, torch.device("cpu"), channels_last=True, fuse=True
            )
            candidates.append(("pytorch-bf16", fused, "bf16"))
        if openvino_available():
            if bf16:
                bf16_path = os.path.join(tmp, "bf16.onnx")
                copy_as_bf16(float_path, bf16_path)
                candidates.append(("bf16", OnnxModel(bf16_path, threads=args.threads), "off"))
            candidates.append(("int8", OnnxModel(int8_path, threads=args.threads, runtime="openvino"), "off"))
        candidates.append(
            ("int8-onnxruntime", OnnxModel(int8_path, threads=args.threads, runtime="onnxruntime"), "off")
        )

        # The pixels with a ground truth, read once for every row's agreement.
        scored = {
            name: dataset.read_label(index) != dataset.ignore_label for index, name in enumerate(dataset.ids)
        }
        reference_labels: dict[str, np.ndarray] = {}
        for name, model, amp in candidates:
            log(f"scoring {name} ...")
            metrics, labels = score(model, dataset, label_set, amp=amp)
            if name == "float32":
                reference_labels, reference_metrics = labels, metrics
            row = {
                "precision": name,
                "runtime": "pytorch" if amp != "off" else model.describe(),
                "mean_iou": metrics["mean_iou"],
                "pixel_accuracy": metrics["pixel_accuracy"],
                "per_class_iou": metrics["per_class_iou"],
                "d_mean_iou": metrics["mean_iou"] - reference_metrics["mean_iou"],
                "agreement": agreement(labels, reference_labels, scored),
            }
            drops = [
                (cls, ref - got)
                for cls, ref, got in zip(
                    label_set.names, reference_metrics["per_class_iou"], metrics["per_class_iou"]
                )
                if ref - got > CLASS_POINTS
            ]
            row["classes_over_2_points"] = {cls: round(drop, 2) for cls, drop in drops}
            rows.append(row)

    names = list(label_set.names)
    table_rows = [
        {
            **row,
            **{f"iou_{i}": v for i, v in enumerate(row["per_class_iou"])},
            "agreement_pct": 100 * row["agreement"],
        }
        for row in rows
    ]
    print(
        format_table(
            table_rows,
            [
                ("precision", "precision", ""),
                ("mean_iou", "mean IU", ".2f"),
                ("d_mean_iou", "d vs float32", "+.2f"),
                ("agreement_pct", "argmax agreement %", ".2f"),
            ]
            + [(f"iou_{i}", name, ".1f") for i, name in enumerate(names)],
        )
    )
    int8 = [row for row in rows if row["precision"].startswith("int8")]
    met = all(abs(row["d_mean_iou"]) <= INT8_MEAN_IU_POINTS and row["agreement"] >= AGREEMENT for row in int8)
    for row in rows:
        if row["classes_over_2_points"]:
            print(
                f"{row['precision']}: classes losing more than {CLASS_POINTS:g} points IU: "
                f"{row['classes_over_2_points']}"
            )
    print(
        f"target (int8 mean IU within {INT8_MEAN_IU_POINTS} points of float32, agreement >= "
        f"{100 * AGREEMENT:g}%): {'met' if met else 'NOT met'}"
    )
    result = {
        "rows": rows,
        "class_names": names,
        "target_met": met,
        "size_mib": {k: v / 2**20 for k, v in sizes.items()},
        "checkpoint": args.restore_from,
        "split": args.dataset,
        "images": len(dataset),
        "input_size": list(args.input_size),
        "calibration": {"split": args.calibration_split, "images": args.calibration_images},
        "reduce_range": reduce_range,
        "cpu_class": cpu_class,
    }
    return finish(
        result,
        info,
        args.json,
        f"{args.restore_from} on {args.data_dir} {args.dataset} ({len(dataset)} images), "
        f"{args.input_size[0]}x{args.input_size[1]}; int8 calibrated on {args.calibration_images} "
        f"{args.calibration_split} images, reduce_range {args.reduce_range} "
        f"({'7' if reduce_range else '8'}-bit weights); CPU {cpu_class}",
    )


if __name__ == "__main__":
    main(get_arguments())
