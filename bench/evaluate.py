"""Benchmark evaluation: images/s of ``inference.predict.evaluate_model`` and the share of time spent
outside the network; ``--compare-amp`` checks that bf16 keeps a checkpoint's mean IU.

    python -m bench.evaluate --device cpu --input-size 384,384 --images 16 --amp bf16 --channels-last \
        --json outputs/bench/evaluate_cpu.json
    python -m bench.evaluate --compare-amp --input-size 128,128 --json outputs/bench/compare_amp.json

The network is wrapped in a module that synchronises the device and times each forward, so
"outside" = 1 - forward time / total loop time: reading and warping images in the loader, the
copy to the device, resizing and argmax of the final map, warping predictions back to the
original size and the confusion matrix (partly overlapped with the network by the loader's
workers and the loop's post-processing thread). Without ``--data-dir`` a synthetic val split
(``dataset.synthetic.generate_dataset``) is written to a temporary folder. Without
``--restore-from`` the network is randomly initialised: speed does not depend on the weights.

``--compare-amp`` evaluates one checkpoint with ``--amp off`` and ``--amp bf16`` and reports both
mean IUs; the target in bench/RESULTS.md is a difference within 0.1 point. Defaults there: the
demo checkpoint ``./snapshots/demo/best.pth`` (written by ``run.sh demo``) on
the synthetic demo set's val split (``utils.recipe.DEMO_DATA_DIR``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import torch
from torch import nn

from bench.common import environment, finish, format_table, summarize, synchronize
from dataset.datasets import CartoonDataSet, default_transform
from dataset.synthetic import generate_dataset
from inference.pipeline import InferenceStats
from inference.predict import evaluate_model, make_eval_loader
from networks.dfpnet import DFPNet
from utils import recipe
from utils.checkpoint import load_model_weights
from utils.cli import DefaultsHelpFormatter, add_inference_arguments, positive_int
from utils.device import autocast, default_amp, resolve_device
from utils.labels import LabelSetError, check_flags, resolve_label_set

DEMO_CHECKPOINT = "./snapshots/demo/best.pth"
DEMO_DATA = recipe.DEMO_DATA_DIR
# The target: "a bf16 model evaluated on a fixed checkpoint gives a mean IU within 0.1 point of float32".
AMP_TOLERANCE = 0.1


class TimedModel(nn.Module):
    """Wraps a model; every forward is synchronised with the device and its seconds added up."""

    def __init__(self, model: nn.Module, device: torch.device) -> None:
        super().__init__()
        self.model = model
        self.device = device
        self.seconds = 0.0
        self.calls = 0

    def forward(self, x: torch.Tensor):
        synchronize(self.device)
        start = time.perf_counter()
        outputs = self.model(x)
        synchronize(self.device)
        self.seconds += time.perf_counter() - start
        self.calls += 1
        return outputs


def get_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.evaluate",
        description=__doc__.split("\n")[0],
        formatter_class=DefaultsHelpFormatter,
    )
    add_inference_arguments(parser)  # --input-size, --batch-size, --workers, --device, --amp, ...
    parser.add_argument(
        "--data-dir",
        default=None,
        help="dataset root with a val split (default: a synthetic one in a temporary folder; "
        f"with --compare-amp: {DEMO_DATA} when it has a val split)",
    )
    parser.add_argument("--dataset", default="val", help="split to evaluate")
    parser.add_argument(
        "--images", type=positive_int, default=16, help="images in the generated synthetic val split"
    )
    parser.add_argument(
        "--restore-from",
        default=None,
        help=f"checkpoint to evaluate (default: random weights; with --compare-amp: {DEMO_CHECKPOINT})",
    )
    parser.add_argument(
        "--repeats",
        type=positive_int,
        default=2,
        help="evaluation passes (after one warm-up forward); medians are reported",
    )
    parser.add_argument(
        "--compare-amp",
        action="store_true",
        help="evaluate the checkpoint with --amp off and bf16 and report both mean IUs",
    )
    parser.add_argument(
        "--threads", type=positive_int, default=None, help="torch intra-op threads (default: torch's choice)"
    )
    parser.add_argument("--json", default=None, metavar="FILE", help="write the results as JSON")
    args = parser.parse_args(argv)
    try:
        args.device = resolve_device(args.device)
        args.label_set = resolve_label_set(args.labels, args.data_dir)
        check_flags(args.label_set, args.num_classes)
    except (ValueError, LabelSetError) as exc:
        parser.error(str(exc))
    if args.amp is None:
        args.amp = default_amp(args.device)
    if args.compare_amp:
        args.restore_from = args.restore_from or DEMO_CHECKPOINT
        if not os.path.isfile(args.restore_from):
            parser.error(
                f"--compare-amp: checkpoint {args.restore_from} not found "
                "(run `bash run.sh demo` first, or pass --restore-from)"
            )
        if args.data_dir is None and os.path.isfile(os.path.join(DEMO_DATA, f"{args.dataset}_id.txt")):
            args.data_dir = DEMO_DATA
    return args


def build_model(args: argparse.Namespace) -> nn.Module:
    """DFPNet (project default norm layer) with the checkpoint's or random weights, in eval mode."""

    torch.manual_seed(0)
    model = DFPNet(args.label_set.num_classes)
    if args.restore_from:
        load_model_weights(model, args.restore_from)
    model.to(args.device).eval()
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def run_pass(model: TimedModel, dataset, args: argparse.Namespace, amp: str) -> dict:
    """One evaluation pass over ``dataset``: timings, shares and the metrics."""
    loader = make_eval_loader(
        dataset, batch_size=args.batch_size, workers=args.workers, pin_memory=args.device.type == "cuda"
    )
    stats = InferenceStats()
    model.seconds = 0.0
    matrix = evaluate_model(
        model,
        dataset,
        loader,
        args.device,
        label_set=args.label_set,
        amp=amp,
        flip=args.flip,
        scales=args.scales,
        progress=False,
        channels_last=args.channels_last,
        stats=stats,
    )
    metrics = matrix.compute()
    return {
        "images": stats.images,
        "total_s": stats.seconds,
        "network_s": model.seconds,
        "device_path_s": stats.network_seconds,
        "images_per_s": stats.images_per_second,
        "outside_share": 1.0 - model.seconds / stats.seconds,
        "mean_iou": metrics["mean_iou"],
        "pixel_accuracy": metrics["pixel_accuracy"],
    }


def warm_up(model: TimedModel, args: argparse.Namespace, amp: str) -> None:
    """One forward at the crop size: oneDNN/cuDNN pick their kernels outside the timed passes."""

    x = torch.zeros(args.batch_size, 3, *args.input_size, device=args.device)
    if args.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), autocast(args.device.type, amp):
        model(x)


def evaluate_amp_modes(model: TimedModel, dataset, args: argparse.Namespace, modes: list[str]) -> dict:
    """``args.repeats`` passes per amp mode, alternating the modes; per-mode medians and passes."""
    for amp in modes:
        warm_up(model, args, amp)
    passes: dict[str, list[dict]] = {amp: [] for amp in modes}
    for _ in range(args.repeats):
        for amp in modes:
            passes[amp].append(run_pass(model, dataset, args, amp))
            p = passes[amp][-1]
            print(
                f"amp {amp}: {p['images']} images in {p['total_s']:.2f} s, network {p['network_s']:.2f} s, "
                f"outside {100 * p['outside_share']:.1f}%, mean IU {p['mean_iou']:.3f}",
                file=sys.stderr,
            )
    results = {}
    for amp in modes:
        rows = passes[amp]
        speed = summarize([p["images_per_s"] for p in rows])
        outside = summarize([p["outside_share"] for p in rows])
        results[amp] = {
            "images_per_s": speed["median"],
            "images_per_s_min": speed["min"],
            "images_per_s_max": speed["max"],
            "outside_share": outside["median"],
            "outside_share_min": outside["min"],
            "outside_share_max": outside["max"],
            "network_s_per_image": statistics.median(p["network_s"] / p["images"] for p in rows),
            "total_s_per_image": statistics.median(p["total_s"] / p["images"] for p in rows),
            "mean_iou": rows[-1]["mean_iou"],
            "pixel_accuracy": rows[-1]["pixel_accuracy"],
            "images": rows[-1]["images"],
            "passes": rows,
        }
    return results


def main(args: argparse.Namespace) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)

    info = environment(args.device)
    with tempfile.TemporaryDirectory(prefix="dfpnet-bench-") as tmp:
        data_dir = args.data_dir
        if data_dir is None:
            data_dir = tmp
            generate_dataset(
                tmp,
                n_train=0,
                n_val=args.images if args.dataset == "val" else 0,
                n_traintest=args.images if args.dataset == "trainTest" else 0,
                seed=0,
            )
        dataset = CartoonDataSet(
            data_dir,
            args.dataset,
            crop_size=args.input_size,
            transform=default_transform(),
            label_set=args.label_set,
        )
        model = TimedModel(build_model(args), args.device)
        modes = ["off", "bf16"] if args.compare_amp else [args.amp]
        per_mode = evaluate_amp_modes(model, dataset, args, modes)

    result = {
        **per_mode,
        "modes": modes,
        "device": info["device"],
        "input_size": list(args.input_size),
        "batch_size": args.batch_size,
        "workers": args.workers,
        "channels_last": args.channels_last,
        "checkpoint": args.restore_from or "random init",
        "data_dir": args.data_dir or f"synthetic val, {args.images} images (temporary)",
        "versions": {k: info[k] for k in ("python", "torch", "numpy", "opencv", "abn_backend")},
        "command": info["command"],
        "environment": info,
    }
    rows = [
        {
            "amp": amp,
            **per_mode[amp],
            "outside_range": f"{100 * per_mode[amp]['outside_share_min']:.1f}-"
            f"{100 * per_mode[amp]['outside_share_max']:.1f}%",
        }
        for amp in modes
    ]
    print(
        format_table(
            rows,
            [
                ("amp", "amp", ""),
                ("images", "images", "d"),
                ("images_per_s", "images/s", ".3f"),
                ("network_s_per_image", "network s/img", ".3f"),
                ("total_s_per_image", "total s/img", ".3f"),
                ("outside_share", "outside", ".1%"),
                ("outside_range", "outside min-max", ""),
                ("mean_iou", "mean IU", ".3f"),
            ],
        )
    )
    if args.compare_amp:
        diff = per_mode["bf16"]["mean_iou"] - per_mode["off"]["mean_iou"]
        result["mean_iou_difference"] = diff
        result["within_tolerance"] = abs(diff) <= AMP_TOLERANCE
        verdict = "within" if result["within_tolerance"] else "OUTSIDE"
        print(
            f"mean IU bf16 - float32 = {diff:+.3f} points on {result['checkpoint']} "
            f"({verdict} the {AMP_TOLERANCE} point tolerance)"
        )
    return finish(
        result,
        info,
        args.json,
        f"data: {result['data_dir']}; checkpoint: {result['checkpoint']}; batch {args.batch_size}, "
        f"{args.workers} workers, {'channels-last' if args.channels_last else 'NCHW'}",
    )


if __name__ == "__main__":
    main(get_arguments())
