"""DFPnet through onnxruntime, without PyTorch: a model written by export.py, and the test-time
flip and scales of ``inference.predict`` in numpy.

Imports only numpy, onnxruntime and the project's torch-free modules (``utils.labels``,
``utils.transforms``), so ``parse_images.py --onnx`` runs where PyTorch is not installed; the
letterbox, normalisation, warp back and pictures around it are those of ``inference.pipeline``.

    model = OnnxModel("dfpnet.onnx")        # model.label_set: the set export.py recorded
    labels = model.predict_labels(images)   # N x 3 x h x w float32 crops -> N x h x w uint8

The arithmetic follows ``inference.predict.predict_probs`` step by step: the final map resized to the
crop (bilinear, ``align_corners=True``; a no-op for DFPnet, whose final map is at the input size),
softmax, the mirrored prediction flipped back with left/right channels swapped, the scales averaged;
a single plain pass takes the argmax of the logits.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from inference.pipeline import check_scales, scaled_size
from utils.cli import RUNTIMES, first_line
from utils.cpuinfo import int8_dot_product, native_bf16
from utils.labels import IGNORE_LABEL, LabelSet, LabelSetError, from_stored_form
from utils.transforms import MEAN, STD

OUTPUTS = ("logits", "probs", "labels")


class OnnxModelError(Exception):
    """An ONNX model could not be used; the message is one line naming the file and the problem."""


# What export.py writes (metadata "precision"): float32 weights; float32 weights run in bf16 where
# the CPU has it natively; int8 QDQ weights and activations (static, calibrated).
PRECISIONS = ("float32", "bf16", "int8")
DEPLOY_REQUIREMENTS = "requirements-deploy.txt, or a bundle's requirements.txt"  # the runtimes' pins


class _Port(NamedTuple):
    name: str
    shape: list  # ints, or names/None for dynamic dimensions (as onnxruntime gives them)


class _OrtSession:
    """An onnxruntime CPU session: the float32 reference runtime."""

    name = "onnxruntime"

    def __init__(self, path: str, threads: int | None) -> None:
        try:
            import onnxruntime as ort  # only here: evaluate.py and parse_images.py load it with --onnx alone
        except ImportError:
            raise OnnxModelError(
                f"{path}: onnxruntime is not installed (pip install -r {DEPLOY_REQUIREMENTS})"
            ) from None
        self.version = ort.__version__
        options = ort.SessionOptions()
        options.log_severity_level = 3  # warnings about unused initialisers are not for users
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types for every bad file
            raise OnnxModelError(
                f"{path}: not an ONNX model onnxruntime can load: {first_line(exc)}"
            ) from None
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        self.inputs = [_Port(i.name, list(i.shape)) for i in self.session.get_inputs()]
        self.outputs = [_Port(o.name, list(o.shape)) for o in self.session.get_outputs()]

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return self.session.run([self.outputs[0].name], {self.inputs[0].name: images})[0]


def openvino_available() -> bool:
    return importlib.util.find_spec("openvino") is not None


class _OpenVinoSession:
    """An OpenVINO CPU model: int8 QDQ models as int8 kernels, bf16 where the CPU has it natively.

    The constructor reads the file (metadata and ports); ``compile`` makes it runnable at
    ``precision`` (OpenVINO's inference precision hint: "f32" keeps float32 layers float32, which
    is not its default on CPUs with native bf16).
    """

    name = "openvino"

    def __init__(self, path: str, threads: int | None) -> None:
        import openvino as ov  # optional: only for --runtime openvino, or auto with int8/bf16 models

        self.version = ov.get_version().split("-")[0]
        self.threads = threads
        self.core = ov.Core()
        try:
            self.model = self.core.read_model(path)
        except Exception as exc:  # noqa: BLE001 - OpenVINO raises RuntimeError with pages of text
            raise OnnxModelError(f"{path}: not an ONNX model OpenVINO can read: {first_line(exc)}") from None
        info = self.model.get_rt_info()
        framework = info["framework"] if "framework" in info else {}
        self.metadata = {key: str(value.value) for key, value in dict(framework).items()}
        self.inputs = [_Port(p.get_any_name(), _ov_shape(p)) for p in self.model.inputs]
        self.outputs = [_Port(p.get_any_name(), _ov_shape(p)) for p in self.model.outputs]
        self.path = path

    def compile(self, precision: str) -> None:
        config = {
            "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
            "PERFORMANCE_HINT": "LATENCY",
        }
        if self.threads:
            config["INFERENCE_NUM_THREADS"] = self.threads
        try:
            compiled = self.core.compile_model(self.model, "CPU", config)
        except Exception as exc:  # noqa: BLE001
            raise OnnxModelError(f"{self.path}: OpenVINO cannot compile it: {first_line(exc)}") from None
        self.request = compiled.create_infer_request()
        del self.model  # the compiled model holds what it needs

    def __call__(self, images: np.ndarray) -> np.ndarray:
        # The request's output tensor is reused by the next call: copy it out.
        return np.array(self.request.infer({0: images})[0], copy=True)


def _ov_shape(port) -> list:
    return [d.get_length() if d.is_static else None for d in port.get_partial_shape()]


def choose_runtime(
    precision: str, runtime: str, *, openvino: bool, bf16: bool, int8_dot: bool, reduced: bool
) -> tuple[str, str, str]:
    """(runtime, precision it runs at, a note for the user or "") for a model of ``precision``.

    ``auto``: onnxruntime for float32 (the reference), OpenVINO for bf16 and int8 where installed
    (bench/RESULTS.md section 15: its int8 and bf16 kernels are the fast ones). bf16 needs OpenVINO
    and native bf16; otherwise the float32 weights run in float32, and the note says why.
    """
    if runtime == "auto":
        runtime = "openvino" if precision != "float32" and openvino else "onnxruntime"
    note = ""
    run = precision
    if precision == "bf16" and runtime == "onnxruntime":
        run, note = (
            "float32",
            "onnxruntime has no bf16 CPU kernels, so it runs in float32 (OpenVINO runs bf16)",
        )
    elif precision == "bf16" and not bf16:
        run, note = "float32", "this CPU has no native bf16, so it runs in float32"
    elif precision == "int8" and not int8_dot and not reduced:
        note = (
            "its int8 weights use the full 8-bit range, which can saturate on a CPU without VNNI "
            "like this one; export.py --reduce-range on avoids that"
        )
    return runtime, run, note


def _axis(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # align_corners=True: output pixel i samples input position i * (n_in - 1) / (n_out - 1).
    step = (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
    src = np.arange(n_out, dtype=np.float32) * np.float32(step)
    low = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    high = np.minimum(low + 1, n_in - 1)
    return low, high, (src - low).astype(np.float32)


def resize_bilinear(x: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """``F.interpolate(x, size, mode="bilinear", align_corners=True)`` for an N x C x H x W array."""
    size = (int(size[0]), int(size[1]))
    if tuple(x.shape[-2:]) == size:
        return x
    y0, y1, fy = _axis(x.shape[-2], size[0])
    x0, x1, fx = _axis(x.shape[-1], size[1])
    rows = x[..., y0, :] * (1 - fy)[:, None] + x[..., y1, :] * fy[:, None]
    return (rows[..., x0] * (1 - fx) + rows[..., x1] * fx).astype(np.float32, copy=False)


def softmax(x: np.ndarray, axis: int = 1) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


class OnnxModel:
    """An export.py model in an onnxruntime CPU session.

    Args:
        path: the .onnx file.
        threads: onnxruntime intra-op threads (default: its choice, one per physical core).

    ``label_set`` is the label set recorded in the metadata (None for a model written before
    label sets were recorded) and ``num_classes`` its class count (None when unknown).
    Raises ``OnnxModelError`` (one line naming the file) for a missing file, a file onnxruntime
    cannot load, or a model whose input, output, label set or normalisation is not usable.
    """

    def __init__(self, path: str, *, threads: int | None = None, runtime: str = "auto") -> None:
        if runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
        self.path = path
        if not os.path.isfile(path):
            raise OnnxModelError(f"{path}: ONNX model file not found")
        if os.path.getsize(path) == 0:
            raise OnnxModelError(f"{path}: ONNX model file is empty")
        if runtime == "openvino" and not openvino_available():
            missing = f"openvino is not installed (pip install -r {DEPLOY_REQUIREMENTS})"
            raise OnnxModelError(f"{path}: --runtime openvino, but {missing}")
        # onnxruntime reads the file first (float32, the default export, runs there); OpenVINO opens it
        # only when asked, or when the recorded precision is one it runs faster.
        session = _OpenVinoSession(path, threads) if runtime == "openvino" else _OrtSession(path, threads)
        self.metadata = session.metadata
        self.precision = self.metadata.get("precision", "float32")
        if self.precision not in PRECISIONS:
            raise OnnxModelError(f"{path}: unknown precision {self.precision!r} in its metadata")
        self.runtime, self.run_precision, self.note = choose_runtime(
            self.precision,
            runtime,
            openvino=openvino_available(),
            bf16=native_bf16(),
            int8_dot=int8_dot_product(),
            reduced=self.metadata.get("reduce_range", "true") == "true",
        )
        if self.runtime != session.name:
            session = _OpenVinoSession(path, threads)
        if isinstance(session, _OpenVinoSession):
            session.compile(self.run_precision)
        self.session = session
        inputs, outputs = self.session.inputs, self.session.outputs
        if len(inputs) != 1 or len(inputs[0].shape) != 4 or inputs[0].shape[1] not in (3, "3"):
            shapes = ", ".join(f"{i.name} {i.shape}" for i in inputs)
            raise OnnxModelError(f"{path}: expected one N x 3 x H x W image input, the model takes {shapes}")
        self.input_name = inputs[0].name
        # The batch, H and W an export.py --static model is fixed to (None where dynamic).
        self.fixed = tuple(
            d if isinstance(d, int) else None for d in (inputs[0].shape[0], *inputs[0].shape[2:])
        )
        self.output_name = outputs[0].name
        self.output = self.metadata.get("output", "labels" if len(outputs[0].shape) == 3 else "logits")
        if self.output not in OUTPUTS:
            raise OnnxModelError(f"{path}: unknown output kind {self.output!r} in its metadata")
        self.label_set: LabelSet | None = None
        size = re.fullmatch(r"\[([1-9]\d*), ?([1-9]\d*)\]", self.metadata.get("input_size", ""))  # [H, W]
        self.input_size = (int(size[1]), int(size[2])) if size else None
        if "label_set" in self.metadata:
            try:
                self.label_set = from_stored_form(self.metadata["label_set"], f"the ONNX model {path}")
            except LabelSetError as exc:
                raise OnnxModelError(f"{path}: its recorded label set is unusable: {exc}") from None
        count = self.metadata.get("num_classes", "")
        channels = outputs[0].shape[1] if self.output != "labels" and len(outputs[0].shape) == 4 else None
        self.num_classes = int(count) if count.isdigit() else channels if isinstance(channels, int) else None
        if self.label_set is not None and self.num_classes not in (None, self.label_set.num_classes):
            raise OnnxModelError(
                f"{path}: its metadata says {self.num_classes} classes but records a label "
                f"set of {self.label_set.num_classes}"
            )
        for key, ours in (("mean", MEAN), ("std", STD)):
            if key in self.metadata and not np.allclose(json.loads(self.metadata[key]), ours):
                raise OnnxModelError(
                    f"{path}: expects inputs normalised with {key} {self.metadata[key]}, "
                    f"this code normalises with {list(ours)}"
                )
        if self.metadata.get("channel_order", "BGR") != "BGR":
            raise OnnxModelError(
                f"{path}: expects {self.metadata['channel_order']} images, this code feeds BGR"
            )

    def unusable_with(
        self,
        *,
        batch_size: int,
        input_size: Sequence[int],
        flip: bool,
        scales: Sequence[float],
        min_confidence: float | None = None,
    ) -> str | None:
        """Why this model cannot run these settings (one line naming the file), or None if it can:
        a labels output has no probabilities, and a --static model takes one batch size and crop."""
        averaging = flip or tuple(scales) != (1.0,)
        if self.output == "labels" and (averaging or min_confidence is not None):
            return (
                f"{self.path} outputs labels (export.py --output labels): --flip, --scales and "
                f"--min-confidence need probabilities; export with --output logits or probs, or drop them"
            )
        batch, height, width = self.fixed
        wanted = (batch_size * (2 if flip else 1), *input_size)  # a flip runs the mirrors in the same batch
        rescaled = tuple(scales) != (1.0,) and self.fixed[1:] != (None, None)
        if rescaled or any(f is not None and f != w for f, w in zip(self.fixed, wanted)):
            fixed = "x".join("N" if d is None else str(d) for d in self.fixed)
            return (
                f"{self.path} is fixed to input {fixed} (export.py --static): it runs only "
                f"--batch-size {batch or 'N'} --input-size {height},{width} without --flip or --scales; "
                f"export it without --static for other settings"
            )
        return None

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """The model's output for N x 3 x H x W float32 ``images`` (logits, probabilities or labels)."""
        return self.session(np.ascontiguousarray(images, dtype=np.float32))

    def describe(self) -> str:
        """The runtime, its version and the precision run, e.g. ``openvino 2026.4.1, cpu, int8``."""
        text = f"{self.runtime} {self.session.version}, cpu, {self.run_precision}"
        if self.precision == "int8" and "calibration" in self.metadata:
            try:
                calibration = json.loads(self.metadata["calibration"])
                text += f" (calibrated on {calibration['images']} {calibration['split']} images)"
            except (ValueError, TypeError, KeyError):
                text += " (calibration not recorded)"
        elif self.run_precision != self.precision:
            text += f" (a {self.precision} model)"
        return text

    def _probs(self, images: np.ndarray, crop: Sequence[int]) -> np.ndarray:
        if self.output == "labels":
            raise ValueError(
                f"{self.path} outputs labels: flip and scales need logits or probs "
                f"(export.py --output logits)"
            )
        out = resize_bilinear(self(images).astype(np.float32, copy=False), crop)
        return out if self.output == "probs" else softmax(out)

    def _flip_permutation(self, label_set: LabelSet | None, num_classes: int) -> list[int]:
        label_set = label_set or self.label_set
        if label_set is None:
            raise ValueError(
                f"{self.path} records no label set: flip testing needs its left/right pairs "
                f"(give them with --labels)"
            )
        if label_set.num_classes != num_classes:
            raise ValueError(
                f"{self.path} predicts {num_classes} classes, the label set has {label_set.num_classes}"
            )
        return label_set.flip_permutation()

    def predict_probs(
        self,
        images: np.ndarray,
        *,
        flip: bool = False,
        scales: Sequence[float] = (1.0,),
        label_set: LabelSet | None = None,
    ) -> np.ndarray:
        """Class probabilities ``N x C x h x w`` at the crop size, averaged over ``flip`` and ``scales``
        exactly as ``inference.predict.predict_probs`` averages them; a flip swaps the left/right
        channels of ``label_set`` (default: the model's own)."""
        if images.ndim != 4:
            raise ValueError(f"expected N x 3 x H x W images, got shape {tuple(images.shape)}")
        scales = check_scales(scales)
        crop = tuple(images.shape[-2:])
        n = images.shape[0]
        total = None
        for scale in scales:
            x = images if scale == 1.0 else resize_bilinear(images, scaled_size(crop, scale))
            if flip:  # one run for both, as on PyTorch
                x = np.concatenate([x, x[..., ::-1]])
            probs = self._probs(x, crop)
            if flip:
                perm = self._flip_permutation(label_set, probs.shape[1])
                probs = 0.5 * (probs[:n] + probs[n:, perm][..., ::-1])
            total = probs if total is None else total + probs
        return total / len(scales)

    def predict_labels(
        self,
        images: np.ndarray,
        *,
        flip: bool = False,
        scales: Sequence[float] = (1.0,),
        label_set: LabelSet | None = None,
        min_confidence: float | None = None,
    ) -> np.ndarray:
        """``N x h x w`` uint8 class ids at the crop size (``label_set``: see :meth:`predict_probs`);
        ``min_confidence``: pixels whose winning probability is below it are 255 (unlabelled)."""
        if min_confidence is None and not flip and check_scales(scales) == (1.0,):
            out = self(images)
            if self.output == "labels":
                return resize_labels(out, images.shape[-2:])
            logits = resize_bilinear(out.astype(np.float32, copy=False), images.shape[-2:])
            return logits.argmax(1).astype(np.uint8)
        probs = self.predict_probs(images, flip=flip, scales=scales, label_set=label_set)
        labels = probs.argmax(1).astype(np.uint8)
        if min_confidence is not None:
            labels[probs.max(1) < min_confidence] = IGNORE_LABEL
        return labels


def resize_labels(labels: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """A labels-output model's N x H x W ids as uint8 (its maps are at the input size already)."""
    if tuple(labels.shape[-2:]) != tuple(size):
        raise ValueError(
            f"the model returned {labels.shape[-2]}x{labels.shape[-1]} labels for {size[0]}x{size[1]} inputs"
        )
    return labels.astype(np.uint8)
