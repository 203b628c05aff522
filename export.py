"""Export a DFPnet checkpoint to ONNX for onnxruntime (docs/deploy.md).

    python export.py --restore-from snapshots/DFPnet_epoch_495.pth --out dfpnet.onnx

The inference graph only: the final map of ``DFPNet.forward`` (the four auxiliary heads are
dropped), with every InPlace-ABN folded into the convolution before it (``networks/fuse.py``).

- input ``image``: N x 3 x H x W float32, BGR, normalised as the loader does
  (``(x / 255 - mean) / std`` with ImageNet's mean and std on the B, G, R channels as they are);
- output ``logits`` (default): N x C x H x W at the input size, the last output of
  ``DFPNet.forward``; ``--output probs`` adds the softmax, ``--output labels`` the argmax
  (N x H x W int64; no flip or multi-scale testing on such a model);
- batch, H and W are dynamic: one file serves any input size (``--input-size`` is the size of
  the example traced, and the training crop recorded in the metadata);
- metadata: the label set (class names, left/right flip pairs, palette; the checkpoint's own, or
  ``--labels`` for the same classes), mean, std, channel order, input size, output kind, checkpoint,
  precision (and for int8 the calibration);
- ``--precision int8``: static post-training quantization (``inference/quantize.py``), calibrated on
  ``--calibration-images`` images of ``--data-dir``'s ``--calibration-split``; ``--precision bf16``:
  the float32 graph, marked to run in bf16 where the CPU has it natively (OpenVINO).

The model is written atomically (a temporary file beside ``--out``, then renamed) and checked
with onnxruntime against the PyTorch network on one random input before it replaces anything.

Exit status: 0 on success; 2 for bad arguments, a bad label set, an unusable checkpoint, missing
or unreadable calibration images or an unwritable output; 1 if the exporter, the quantizer or the
check fails, or if the deploy packages (requirements-deploy.txt) are not installed.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import json
import logging
import os
import shutil
import tempfile
import warnings

import numpy as np
import torch

try:
    import onnx
except ImportError:  # the deploy set (requirements-deploy.txt) is not installed
    raise SystemExit(
        "export.py: error: onnx is not installed: pip install -r requirements-deploy.txt "
        "(bash tests/run.sh installs it into ./.venv)"
    ) from None
from torch import nn
from tqdm import tqdm

from inference.bundle import write_bundle
from inference.model import load_model, network_input_size, network_label_set, read_network
from inference.onnx_infer import OUTPUTS, PRECISIONS, OnnxModel, OnnxModelError
from inference.pipeline import ImageFiles
from inference.quantize import CalibrationError, calibration_set, quantize_int8
from utils import recipe
from utils.checkpoint import CheckpointError
from utils.cli import (
    DefaultsHelpFormatter,
    add_label_arguments,
    die,
    first_line,
    given_labels,
    output_folder_problem,
    parse_size,
    positive_int,
)
from utils.cpuinfo import int8_dot_product
from utils.files import atomic_file, write_error
from utils.labels import LabelSet, stored_form
from utils.transforms import MEAN, STD

PROG = "export.py"
REDUCE_RANGE = ("auto", "on", "off")  # --reduce-range; bench/ takes the same


class FinalMap(nn.Module):
    """The deployed graph: DFPnet's final map (``outputs[-1]``), optionally as probabilities or labels.

    The final map is already at the input size (DFPnet upsamples it before ``outc``), so no resize
    is added; the auxiliary heads' outputs are unused and the exporter drops them.
    """

    def __init__(self, model: nn.Module, output: str = "logits") -> None:
        super().__init__()
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {', '.join(OUTPUTS)}, got {output!r}")
        self.model = model
        self.output = output

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        logits = self.model(image)[-1]
        if self.output == "probs":
            return logits.softmax(dim=1)
        if self.output == "labels":
            return logits.argmax(dim=1)
        return logits


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        formatter_class=DefaultsHelpFormatter,
        prog=PROG,
        description="Export a DFPnet checkpoint to ONNX (final map "
        "only, InPlace-ABN folded into the convolutions) for onnxruntime.",
    )
    parser.add_argument(
        "--restore-from",
        default=recipe.EVAL_CHECKPOINT,
        help="checkpoint: the authors' .pth, our DFPnet_epoch_<e>.pth / best.pth, or a training-state file",
    )
    parser.add_argument("--out", default="dfpnet.onnx", metavar="FILE.onnx", help="the ONNX model to write")
    parser.add_argument(
        "--input-size",
        type=parse_size,
        default=None,
        metavar="H,W",
        help="example input traced and crop recorded in the metadata, which the runtimes then default "
        "to (H and W stay dynamic unless --static); default: the crop the checkpoint records, else "
        "the authors' 384,384",
    )
    add_label_arguments(parser, data_dir=False)
    parser.add_argument(
        "--output",
        choices=OUTPUTS,
        default="logits",
        help="logits (N x C x H x W, the last output of DFPNet.forward), probs (softmax) or "
        "labels (N x H x W argmax)",
    )
    parser.add_argument(
        "--opset",
        type=positive_int,
        default=recipe.ONNX_OPSET,
        help="ONNX opset (what the exporter, torch.export + onnxscript, writes natively; older ones are "
        "converted)",
    )
    parser.add_argument(
        "--static",
        action="store_true",
        help="fix batch 1 and the --input-size instead of dynamic batch, H and W",
    )
    parser.add_argument(
        "--no-check", action="store_true", help="skip the onnxruntime-vs-PyTorch check of the written model"
    )
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="float32",
        help="float32; bf16 (the float32 graph, run in bf16 by OpenVINO where the CPU has native bf16); "
        "int8 (static quantization calibrated on --data-dir; docs/deploy.md section 5)",
    )
    parser.add_argument(
        "--data-dir",
        default=recipe.DATA_DIR,
        help="dataset folder whose --calibration-split calibrates --precision int8",
    )
    parser.add_argument(
        "--calibration-split", default="train", help="the split of --data-dir that calibrates int8"
    )
    parser.add_argument(
        "--calibration-images",
        type=positive_int,
        default=recipe.CALIBRATION_IMAGES,
        metavar="N",
        help="calibration images, spread evenly over the split (all of it when smaller), prepared as "
        "the evaluation prepares them at --input-size",
    )
    parser.add_argument(
        "--reduce-range",
        choices=REDUCE_RANGE,
        default="auto",
        help="int8 weights in 7 bits (on), which cannot saturate on CPUs without VNNI (AVX2), or in 8 "
        "(off), more accurate on VNNI/AMX CPUs and only there; auto: on unless this CPU has VNNI "
        "(the runtime warns when an 8-bit model runs where it can saturate)",
    )
    parser.add_argument(
        "--bundle",
        default=None,
        metavar="DIR",
        help="write a torch-free deployment into the new folder DIR instead: the model (named as "
        "--out's file name), parse_images.py and the modules it needs, requirements.txt and a README "
        "(docs/deploy.md, section 3)",
    )
    return parser


def get_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = get_args_parser()
    return parser.parse_args(argv)


fail = functools.partial(die, PROG)


def metadata(args: argparse.Namespace, label_set: LabelSet) -> dict[str, str]:
    """What a deployment needs beside the weights, as ONNX metadata_props (string values). ``label_set``
    is the whole set (inference.onnx_infer reads it back); names, pairs and palette are also given on
    their own for other tools."""
    return {
        "model": "DFPnet (part parsing)",
        "output": args.output,
        "label_set": stored_form(label_set),
        "num_classes": str(label_set.num_classes),
        "class_names": json.dumps(list(label_set.names)),
        "flip_pairs": json.dumps([list(pair) for pair in label_set.flip_pairs]),
        "palette_rgb": json.dumps(label_set.colours().tolist()),
        "mean": json.dumps(list(MEAN)),
        "std": json.dumps(list(STD)),
        "channel_order": "BGR",
        "normalisation": "(x / 255 - mean) / std per channel of the BGR image, channels as they are",
        # Resolved from the checkpoint by export(); a caller's unresolved args get the authors' crop.
        "input_size": json.dumps(list(args.input_size or recipe.INPUT_SIZE)),
        "resize": "letterbox into the input size with the loader's affine warp (docs/deploy.md)",
        "checkpoint": os.path.basename(args.restore_from),
        "precision": args.precision,
    }


def export_onnx(
    module: nn.Module, example: torch.Tensor, path: str, *, opset: int, dynamic: bool, props: dict[str, str]
) -> None:
    """Export ``module`` with torch.export + onnxscript (``dynamo=True``) and add ``props`` as metadata."""
    dims = {0: torch.export.Dim.DYNAMIC, 2: torch.export.Dim.DYNAMIC, 3: torch.export.Dim.DYNAMIC}
    # The exporter narrates every step on stdout, logs that torchvision's ops are absent and warns
    # about opset conversion: none of it is for users.
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module,
            (example,),
            dynamo=True,
            opset_version=opset,
            input_names=["image"],
            output_names=[getattr(module, "output", "logits")],
            dynamic_shapes={"image": dims} if dynamic else None,
            verbose=False,
        )
    proto = program.model_proto
    for key, value in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.doc_string = "DFPnet inference graph written by export.py; see docs/deploy.md"
    onnx.save(proto, path)


def relative_error(got: np.ndarray, want: np.ndarray) -> float:
    """||got - want|| / ||want|| in float64."""
    want = want.astype(np.float64)
    return float(np.linalg.norm(got.astype(np.float64) - want) / max(np.linalg.norm(want), 1e-30))


def main(args: argparse.Namespace) -> None:
    given = given_labels(args, fail)
    if not args.bundle:
        export(args, given)
        return
    bundle = os.path.abspath(args.bundle)
    if os.path.exists(bundle) and (not os.path.isdir(bundle) or os.listdir(bundle)):
        fail(f"{args.bundle}: exists and is not an empty folder; --bundle writes a new one", 2)
    # Built beside its final place and renamed at the end: nothing half-written is left, whatever fails.
    staging = f"{bundle}.partial-{os.getpid()}"
    model_name = os.path.basename(args.out)
    args.out = os.path.join(staging, model_name)
    try:
        export(args, given, shown=os.path.join(args.bundle, model_name))
        try:
            write_bundle(staging, args.out)
            if os.path.isdir(bundle):
                os.rmdir(bundle)  # empty, checked above
            os.rename(staging, bundle)
        except OSError as exc:
            where = str(exc.filename or bundle).replace(staging, args.bundle)  # as it would have been
            fail(str(write_error(where, exc, "the bundle is not written")))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print(
        f"Bundle {args.bundle}: {model_name}, parse_images.py and the modules it needs, requirements.txt "
        f"and README.md; without PyTorch: pip install -r requirements.txt, then "
        f"python parse_images.py --onnx {model_name} --out parsed/ PICTURES"
    )


def export(args: argparse.Namespace, given: LabelSet | None, shown: str | None = None) -> None:
    """Write the ONNX model of ``args`` to ``args.out`` (checked against PyTorch unless --no-check);
    the line it prints names it ``shown`` (default ``args.out``)."""
    problem = output_folder_problem(os.path.dirname(os.path.abspath(args.out)))
    if os.path.isdir(args.out):
        example = os.path.join(args.out, "dfpnet.onnx")
        problem = f"{args.out}: is a folder; --out names the model file to write, e.g. {example}"
    if problem:
        fail(problem, 2)
    weights = read_network(args, fail)
    network_input_size(args, weights)
    label_set = network_label_set(args, weights, given, fail)
    try:
        model = load_model(weights, label_set.num_classes, torch.device("cpu"), fuse=True)
    except CheckpointError as exc:
        fail(str(exc), 2)
    del weights
    module = FinalMap(model, args.output).eval()
    # Batch 2, not 1: torch.export would take a batch of 1 for a constant.
    example = torch.randn(
        1 if args.static else 2, 3, *args.input_size, generator=torch.Generator().manual_seed(0)
    )

    calibration = None
    if args.precision == "int8":  # checked before the export: a missing folder should not wait a minute
        try:
            calibration = calibration_set(
                args.data_dir, args.calibration_split, args.calibration_images, args.input_size
            )
        except CalibrationError as exc:
            fail(str(exc), 2)
    target = shown or args.out  # the file as the user named it (not a --bundle's staging folder)
    try:
        with atomic_file(args.out) as tmp, contextlib.ExitStack() as scratch:
            # int8: the float32 model first, in a folder of its own beside the output (where the
            # quantizer also writes its copies, and which goes with them), then quantized into it.
            float_path = tmp
            if calibration is not None:
                folder = tempfile.TemporaryDirectory(prefix=".int8-", dir=os.path.dirname(tmp))
                float_path = os.path.join(scratch.enter_context(folder), "float32.onnx")
            try:
                export_onnx(
                    module,
                    example,
                    float_path,
                    opset=args.opset,
                    dynamic=not args.static,
                    props=metadata(args, label_set),
                )
            except OSError:
                raise
            except Exception as exc:  # noqa: BLE001 - the exporter raises many types; one line
                fail(f"{args.restore_from}: the ONNX export failed: {first_line(exc)}")
            if not args.no_check:
                check(module, float_path, example, args, label_set)
            if calibration is not None:
                quantize(float_path, tmp, calibration, args)
    except OSError as exc:  # a full disk, quota, size limit or read-only folder, at any write
        fail(str(write_error(target, exc)))
    size_mb = os.path.getsize(args.out) / 2**20
    print(
        f"Wrote {shown or args.out} ({size_mb:.1f} MiB, {args.precision}, opset {args.opset}, "
        f"output {args.output}, "
        f"{'static 1x3x{}x{}'.format(*args.input_size) if args.static else 'dynamic batch, H and W'}) "
        f"from {args.restore_from}; label set: {label_set.describe()}"
    )


def reduce_range(choice: str) -> bool:
    """--reduce-range as a bool: auto is on unless this CPU multiplies int8 without saturating (VNNI)."""
    return not int8_dot_product() if choice == "auto" else choice == "on"


def quantize(float_path: str, path: str, calibration, args: argparse.Namespace) -> None:
    """Quantize the float32 model at ``float_path`` into ``path`` (int8), then compare the two on a few
    calibration images and print how close they are."""
    bar = tqdm(total=len(calibration.paths), desc="calibrating int8", unit="img", leave=False)
    try:
        quantize_int8(
            float_path,
            path,
            calibration,
            reduce_range=reduce_range(args.reduce_range),
            on_image=bar.update,
        )
    except CalibrationError as exc:
        fail(str(exc), 2)
    except OSError:
        raise  # export() names the file
    except Exception as exc:  # noqa: BLE001 - the quantizer raises many types; one line for the user
        fail(f"{args.restore_from}: int8 quantization failed: {first_line(exc)}")
    finally:
        bar.close()
    if args.no_check:
        return
    try:
        reference, quantized = OnnxModel(float_path, runtime="onnxruntime"), OnnxModel(path)
    except OnnxModelError as exc:
        fail(f"{args.out}: the int8 model does not load: {exc}")
    files = ImageFiles(calibration.paths[:4], args.input_size)
    images = np.stack([files[i][0] for i in range(len(files))])
    step = 1 if args.static else len(images)  # a --static model takes one picture at a time
    want, got = (
        np.concatenate([run(images[i : i + step]) for i in range(0, len(images), step)])
        for run in (reference, quantized)
    )
    if got.shape != want.shape or not np.isfinite(got).all():
        fail(
            f"{args.out}: the int8 model's output is unusable (shape {got.shape}, or not finite); "
            "nothing written"
        )
    if args.output != "labels":
        want, got = want.argmax(1), got.argmax(1)
    print(
        f"int8 ({quantized.describe()}) vs float32 on {len(images)} calibration images: labels agree on "
        f"{100 * float((got == want).mean()):.2f}% of the pixels"
    )


def check(
    module: FinalMap, path: str, example: torch.Tensor, args: argparse.Namespace, label_set: LabelSet
) -> None:
    """Run the written model on ``example`` and compare with PyTorch; fail if they disagree."""
    try:  # the float32 graph exactly, whatever precision the metadata asks for
        session = OnnxModel(path, runtime="onnxruntime")
    except OnnxModelError as exc:
        fail(f"{args.out}: the exported model does not load: {exc}")
    if session.label_set is None or session.label_set.to_dict() != label_set.to_dict():
        fail(f"{args.out}: the exported model does not record the label set")
    with torch.inference_mode():
        want = module(example).numpy()
    got = session(example.numpy())
    if args.output == "labels":
        agreement = float((got == want).mean())
        print(
            f"Check on a random {args.input_size[0]}x{args.input_size[1]} input: labels agree on "
            f"{100 * agreement:.3f}% of the pixels"
        )
        ok = agreement >= 0.99
    else:
        err = relative_error(got, want)
        agreement = float((got.argmax(1) == want.argmax(1)).mean())
        print(
            f"Check on a random {args.input_size[0]}x{args.input_size[1]} input: onnxruntime vs PyTorch "
            f"relative error {err:.2e}, argmax agreement {100 * agreement:.3f}%"
        )
        ok = err < 1e-3  # argmax agreement is only informative: random inputs give near ties
    if not ok:
        fail(f"{args.out}: onnxruntime's output differs from PyTorch's; nothing written")


if __name__ == "__main__":
    main(get_arguments())
