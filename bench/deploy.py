"""Benchmark inference of the network alone: the authors' way, the project's default, the fused
network (networks/fuse.py) and onnxruntime (export.py), in one process, alternating.

    python -m bench.deploy --input-size 384,384 --iters 10 --json outputs/bench/deploy_cpu.json

One call = one forward of a fixed random batch (``--batch-size``, default 1) to the final map, on
the CPU, with no data loading or post-processing (bench/evaluate.py measures those). The
target: fused or onnxruntime at least 2x the authors' images/s, in float32.

Configurations (``--configs``, comma-separated, in the order they alternate):

* ``authors``: their way: ``libs.ABN`` (batch norm then the activation, unfused), NCHW, eager,
  float32;
* ``default``: the network evaluate.py ran before fusing: InPlace-ABN (eval: per-channel affine
  then the activation), channels-last, eager, float32;
* ``fused``: ``networks.fuse.fuse_for_inference`` (InPlace-ABN folded into the convolutions),
  channels-last, float32: evaluate.py's and parse_images.py's default now;
* ``onnxruntime``: the export.py model (fused, final map only) in an onnxruntime CPU session,
  float32, its default threads (one per physical core) and graph optimisations;
* ``default-bf16``, ``fused-bf16``: the same under bf16 autocast, added by default where the CPU
  runs bf16 natively (``utils.device.default_amp``);
* ``openvino``: the same float32 model on OpenVINO (inference precision f32);
* ``onnxruntime-int8``, ``openvino-int8``: the model quantized by ``export.py --precision int8``
  (static, calibrated on ``--calibration-images`` images of ``--data-dir``'s train split, 7-bit
  weights unless ``--reduce-range off``) on each runtime;
* ``openvino-bf16``: the float32 model on OpenVINO at bf16 (``export.py --precision bf16``), added by
  default where bf16 is native.

Targets: fused or onnxruntime >= 2x the authors' images/s in float32 (out of reach, section 10);
int8 >= 4x where the CPU has VNNI (or AMX) and >= 2x where it has not; bf16 >= 2.4x where native.

Each configuration's final map is compared with the authors' (relative error of the logits,
argmax agreement), so a speed-up that changed the numbers would show. Ratios are against
``authors`` in the same run. Weights are random unless ``--restore-from``: speed does not depend
on them. onnxruntime has no switch like ``ATEN_CPU_CAPABILITY``: under an AVX2 emulation of
PyTorch (``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2``) it still uses the CPU's full ISA, so
its rows are then marked "not emulated" and left out of the targets. OpenVINO's CPU plugin obeys
``ONEDNN_MAX_CPU_ISA`` (its kernels are oneDNN's), so its rows are emulated.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from collections.abc import Callable

import numpy as np
import onnxruntime
import torch
from torch import nn

import export
from bench.common import (
    alternate,
    copy_as_bf16,
    cpu_class_name,
    environment,
    finish,
    format_table,
    log,
    summarize,
)
from dataset.synthetic import generate_dataset
from inference.onnx_infer import OnnxModel, openvino_available
from inference.quantize import calibration_set, quantize_int8
from libs import ABN
from networks.dfpnet import DFPNet
from networks.fuse import fuse_for_inference
from utils import recipe
from utils.checkpoint import load_model_weights
from utils.cli import DefaultsHelpFormatter, parse_size, positive_int
from utils.cpuinfo import int8_dot_product, isa_ceiling, native_bf16
from utils.device import autocast, default_amp
from utils.labels import DOG

# The switches that make PyTorch (ATen, oneDNN, MKL) use a lower instruction set than the CPU has.
ISA_ENV = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")
ALL_CONFIGS = (
    "authors",
    "default",
    "fused",
    "onnxruntime",
    "openvino",
    "onnxruntime-int8",
    "openvino-int8",
    "default-bf16",
    "fused-bf16",
    "openvino-bf16",
)
BASE_CONFIGS = ("authors", "default", "fused", "onnxruntime", "openvino", "onnxruntime-int8", "openvino-int8")
BF16_CONFIGS = ("default-bf16", "fused-bf16", "openvino-bf16")
TARGET = 2.0  # fused or onnxruntime >= 2x the authors' images/s
INT8_TARGET_VNNI = 4.0  # int8 >= 4x the authors' images/s on CPUs with VNNI (or AMX)
INT8_TARGET = 2.0  # and >= 2x on CPUs without (AVX2)
BF16_TARGET = 2.4  # bf16 >= 2.4x where native


def get_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.deploy",
        description=__doc__.split("\n")[0],
        formatter_class=DefaultsHelpFormatter,
    )
    parser.add_argument(
        "--input-size",
        type=parse_size,
        default=(384, 384),
        metavar="H,W",
        help="input crop (the authors' 384,384)",
    )
    parser.add_argument("--batch-size", type=positive_int, default=1, help="images per forward")
    parser.add_argument(
        "--iters", type=positive_int, default=10, help="measured rounds (one call per config)"
    )
    parser.add_argument("--warmup", type=int, default=2, help="unmeasured rounds first")
    parser.add_argument(
        "--configs",
        default=None,
        help=f"comma-separated, from {', '.join(ALL_CONFIGS)} (default: all but the bf16 ones, "
        "which are added where bf16 is native; OpenVINO's only where it is installed)",
    )
    parser.add_argument(
        "--data-dir",
        default=None,
        help="dataset whose train split calibrates the int8 model (default: the demo's synthetic set, "
        "generated in a temporary folder if absent)",
    )
    parser.add_argument("--calibration-images", type=positive_int, default=16, help="int8 calibration images")
    parser.add_argument("--reduce-range", choices=export.REDUCE_RANGE, default="auto", help="as export.py's")
    parser.add_argument("--restore-from", default=None, help="checkpoint (default: random weights)")
    parser.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="torch and onnxruntime intra-op threads (default: each library's choice)",
    )
    parser.add_argument("--json", default=None, metavar="FILE", help="write the results as JSON")
    args = parser.parse_args(argv)
    if args.configs is None:
        native = default_amp(torch.device("cpu")) == "bf16" and native_bf16()
        args.configs = [
            c
            for c in ALL_CONFIGS
            if (c in BASE_CONFIGS or native) and (openvino_available() or not c.startswith("openvino"))
        ]
    else:
        args.configs = [c.strip() for c in args.configs.split(",") if c.strip()]
        unknown = [c for c in args.configs if c not in ALL_CONFIGS]
        if unknown or not args.configs:
            parser.error(
                f"--configs: unknown {', '.join(unknown) or '(empty)'}; choose from {', '.join(ALL_CONFIGS)}"
            )
    if "authors" not in args.configs:
        args.configs.insert(0, "authors")  # the ratios need it
    return args


def build_networks(args: argparse.Namespace) -> tuple[nn.Module, nn.Module]:
    """(authors' network with libs.ABN, project network with InPlace-ABN), same weights, eval mode."""

    torch.manual_seed(0)
    project = DFPNet(DOG.num_classes)
    if args.restore_from:
        load_model_weights(project, args.restore_from)
    authors = DFPNet(DOG.num_classes, norm_layer=ABN)
    authors.load_state_dict(project.state_dict())
    return authors.eval(), project.eval()


def torch_runner(
    model: nn.Module, x: torch.Tensor, *, channels_last: bool, amp: str
) -> Callable[[], np.ndarray]:

    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)

    def run() -> np.ndarray:
        with torch.inference_mode(), autocast("cpu", amp):
            return model(x)[-1].float().contiguous().numpy()

    return run


def export_for_bench(project: nn.Module, args: argparse.Namespace, folder: str) -> str:
    """The project network through export.py's own export path, at the benchmark's input size."""

    path = os.path.join(folder, "dfpnet.onnx")
    namespace = export.get_arguments(
        [
            "--input-size",
            ",".join(map(str, args.input_size)),
            "--out",
            path,
            "--restore-from",
            args.restore_from or "random weights",
        ]
    )
    example = torch.randn(2, 3, *args.input_size)
    export.export_onnx(
        export.FinalMap(fuse_for_inference(project)),
        example,
        path,
        opset=namespace.opset,
        dynamic=True,
        props=export.metadata(namespace, DOG),
    )
    return path


def main(args: argparse.Namespace) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)

    info = environment("cpu")
    authors, project = build_networks(args)
    x = torch.randn(args.batch_size, 3, *args.input_size, generator=torch.Generator().manual_seed(0))
    runs: dict[str, Callable[[], np.ndarray]] = {}
    with tempfile.TemporaryDirectory(prefix="dfpnet-bench-deploy-") as tmp:
        models: dict[str, str] = {}

        def onnx_model(precision: str) -> str:
            """The export.py model at ``precision`` (exported, quantized or marked once)."""
            if precision in models:
                return models[precision]
            if "float32" not in models:
                log("exporting the network ...")
                models["float32"] = export_for_bench(project, args, tmp)
                if precision == "float32":
                    return models["float32"]
            path = os.path.join(tmp, f"dfpnet_{precision}.onnx")
            if precision == "int8":
                data_dir = args.data_dir or calibration_data(tmp)
                log(f"quantizing to int8 on {args.calibration_images} images of {data_dir} ...")
                calibration = calibration_set(data_dir, "train", args.calibration_images, args.input_size)
                quantize_int8(
                    models["float32"], path, calibration, reduce_range=export.reduce_range(args.reduce_range)
                )
            elif precision == "bf16":
                copy_as_bf16(models["float32"], path)
            models[precision] = path
            return path

        for name in args.configs:
            if name == "authors":
                runs[name] = torch_runner(authors, x, channels_last=False, amp="off")
            elif name.startswith("default"):
                runs[name] = torch_runner(
                    project, x, channels_last=True, amp="bf16" if "bf16" in name else "off"
                )
            elif name.startswith("fused"):
                runs[name] = torch_runner(
                    fuse_for_inference(project),
                    x,
                    channels_last=True,
                    amp="bf16" if "bf16" in name else "off",
                )
            else:
                runtime, _, precision = name.partition("-")
                path = onnx_model(precision or "float32")
                session = OnnxModel(path, threads=args.threads, runtime=runtime)
                runs[name] = lambda session=session: session(x.numpy())

        reference = runs["authors"]()
        agreement = {}
        for name, run in runs.items():
            out = run().astype(np.float64)
            agreement[name] = {
                "relative_error": float(np.linalg.norm(out - reference) / np.linalg.norm(reference)),
                "argmax_agreement": float((out.argmax(1) == reference.argmax(1)).mean()),
            }
        samples = alternate(runs, args.iters, args.warmup, "cpu", log=log)

    result: dict = {"configs": args.configs}
    for name in args.configs:
        stats = summarize(samples[name])
        result[name] = {
            "s_per_call": stats["median"],
            "s_q1": stats["q1"],
            "s_q3": stats["q3"],
            "s_min": stats["min"],
            "s_max": stats["max"],
            "images_per_s": args.batch_size / stats["median"],
            "samples": samples[name],
            **agreement[name],
        }
    base = result["authors"]["images_per_s"]
    result["ratios"] = {name: result[name]["images_per_s"] / base for name in args.configs}

    def target(names: list[str], ratio: float) -> dict:
        """The best of ``names`` and whether it reaches ``ratio`` x the authors' images/s."""
        best = max(names, key=result["ratios"].__getitem__) if names else None
        return {"target": ratio, "best": best, "met": best is not None and result["ratios"][best] >= ratio}

    emulated = isa_ceiling() is not None
    # onnxruntime ignores the ISA ceiling: under an emulation its rows are the real CPU's.
    counted = [n for n in args.configs if not (emulated and n.startswith("onnxruntime"))]
    fast = [name for name in ("fused", "onnxruntime") if name in counted]
    result["target_met"] = target(fast, TARGET)["met"]
    vnni = int8_dot_product()
    int8_target = INT8_TARGET_VNNI if vnni else INT8_TARGET
    int8 = [n for n in counted if n.endswith("int8")]
    bf16 = [n for n in counted if n.endswith("bf16")]

    result["targets"] = {
        "int8": target(int8, int8_target),
        "bf16": target(bf16, BF16_TARGET) if native_bf16() else None,
    }
    result["cpu_class"] = cpu_class_name()
    result["not_emulated"] = [n for n in args.configs if n not in counted]
    result.update(
        {
            "input_size": list(args.input_size),
            "batch_size": args.batch_size,
            "checkpoint": args.restore_from or "random init",
            "cpu_flags": cpu_class_name(ceiling=None),  # the hardware, whatever the ceiling
            "isa_env": {k: v for k, v in os.environ.items() if k in ISA_ENV},
            "versions": {k: info[k] for k in ("python", "torch", "numpy", "opencv", "abn_backend")},
            "command": info["command"],
            "environment": info,
        }
    )
    try:
        result["versions"]["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass

    rows = [
        {
            "config": name,
            **result[name],
            "ratio": result["ratios"][name],
            "iqr": f"{result[name]['s_q1']:.3f}-{result[name]['s_q3']:.3f}",
        }
        for name in args.configs
    ]
    print(
        format_table(
            rows,
            [
                ("config", "config", ""),
                ("s_per_call", "s/call (median)", ".3f"),
                ("iqr", "IQR s", ""),
                ("images_per_s", "images/s", ".2f"),
                ("ratio", "x authors", ".2f"),
                ("relative_error", "rel. error vs authors", ".1e"),
                ("argmax_agreement", "argmax agreement", ".4f"),
            ],
        )
    )
    verdict = "met" if result["target_met"] else "NOT met"
    print(f"target (fused or onnxruntime >= {TARGET:g}x the authors' images/s, float32): {verdict}")
    for kind, target in result["targets"].items():
        if target is None or target["best"] is None:
            continue
        verdict = "met" if target["met"] else "NOT met"
        print(
            f"target ({kind} >= {target['target']:g}x the authors' images/s on {result['cpu_class']}): "
            f"{verdict}, best {target['best']} {result['ratios'][target['best']]:.2f}x"
        )
    if result["not_emulated"]:
        print(
            f"not emulated (onnxruntime ignores {isa_ceiling()} and runs the CPU's full ISA), left out "
            f"of the targets: {', '.join(result['not_emulated'])}"
        )
    return finish(
        result,
        info,
        args.json,
        f"batch {args.batch_size}, {args.input_size[0]}x{args.input_size[1]}, {result['checkpoint']}; "
        f"CPU flags: {result['cpu_flags']}; ISA environment: {result['isa_env'] or 'none'}; "
        f"onnxruntime {result['versions'].get('onnxruntime', '-')}",
    )


def calibration_data(folder: str) -> str:
    """The demo's synthetic set if generated, else a small one generated into ``folder``."""
    if os.path.isfile(os.path.join(recipe.DEMO_DATA_DIR, "train_id.txt")):
        return recipe.DEMO_DATA_DIR
    path = os.path.join(folder, "calibration")
    generate_dataset(path, 16, 0, 0, seed=0)
    return path


if __name__ == "__main__":
    main(get_arguments())
