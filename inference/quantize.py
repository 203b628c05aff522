"""Post-training static int8 quantization of an export.py model (``export.py --precision int8``).

onnxruntime's quantizer writes a QDQ model (QuantizeLinear/DequantizeLinear pairs around each
quantized op) that both onnxruntime and OpenVINO run with int8 kernels:

- weights int8, symmetric, one scale per output channel; 7-bit (``reduce_range``) by default, so
  that CPUs without VNNI, whose u8 x s8 products are summed pairwise in 16 bits, cannot saturate;
- activations uint8, asymmetric, one scale per tensor, from the minimum and maximum each tensor
  reaches over the calibration images;
- left in float: the first convolution (three input channels: little to gain, the image's
  detail to lose) and the output block at the full input size (the last upsampling, ``outc``'s
  two convolutions, and what export.py appends: softmax, argmax); everything else is quantized.
  bench/RESULTS.md section 15 measures the alternatives: with 7-bit weights this lowers the mean
  IU loss for a small part of int8's time.

Calibration images are prepared exactly as the evaluation prepares them (``inference.pipeline``'s
letterbox and normalisation) from a split of a dataset folder. Torch-free.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import onnx

from dataset.layout import read_id_list, split_paths
from inference.pipeline import ImageFiles
from utils.files import claim_space


class CalibrationError(Exception):
    """The calibration images cannot be read; one line naming the file or folder and the problem."""


@dataclass(frozen=True)
class Calibration:
    """Which images calibrate the ranges, recorded in the model's metadata."""

    data_dir: str
    split: str
    paths: tuple[str, ...]
    input_size: tuple[int, int]

    def record(self, reduce_range: bool, float_nodes: Sequence[str]) -> dict:
        return {
            "images": len(self.paths),
            "split": self.split,
            "data_dir": os.path.basename(os.path.normpath(self.data_dir)),
            "input_size": list(self.input_size),
            "method": "minmax",
            "weights": f"int8 symmetric per channel ({7 if reduce_range else 8}-bit range)",
            "activations": "uint8 asymmetric per tensor",
            "float_nodes": list(float_nodes),
        }


def calibration_set(data_dir: str, split: str, count: int, input_size: Sequence[int]) -> Calibration:
    """``count`` images of ``split`` under ``data_dir`` spread evenly over its id list (all of them when
    it has fewer). Raises ``CalibrationError`` for a missing folder or id list, or a missing or
    unreadable image."""
    if not os.path.isdir(data_dir):
        raise CalibrationError(f"{data_dir}: no such dataset folder (calibration needs --data-dir)")
    paths = split_paths(data_dir, split)
    if not os.path.isfile(paths.id_list):
        raise CalibrationError(f"{paths.id_list}: no such id list (calibration split {split!r})")
    ids = read_id_list(paths.id_list)
    if not ids:
        raise CalibrationError(f"{paths.id_list}: no image ids")
    step = len(ids) / min(count, len(ids))
    chosen = [ids[int(i * step)] for i in range(min(count, len(ids)))]
    files = tuple(paths.image(name) for name in chosen)
    for path in files:  # all read now, before a minute of export: a bad file should not wait for it
        if not os.path.isfile(path):
            raise CalibrationError(f"{path}: calibration image not found (listed in {paths.id_list})")
        if cv2.imread(path, cv2.IMREAD_COLOR) is None:
            raise CalibrationError(
                f"{path}: OpenCV cannot read it as an image (unreadable, truncated or an unknown format)"
            )
    return Calibration(data_dir, split, files, (int(input_size[0]), int(input_size[1])))


def float_nodes(model: onnx.ModelProto) -> list[str]:
    """The nodes left in float: the first convolution, and the output block from the last Resize on
    (DFPnet's upsampling to the input size and ``outc``: a 3x3 convolution, leaky ReLU and the 1x1
    classifier, at the full input size, where the argmax is decided); everything after the last
    convolution when the graph has no Resize."""
    nodes = list(model.graph.node)
    convs = [i for i, node in enumerate(nodes) if node.op_type == "Conv"]
    resizes = [i for i, node in enumerate(nodes) if node.op_type == "Resize" and i < convs[-1]]
    start = resizes[-1] if resizes else convs[-1]
    return ([nodes[convs[0]].name] if convs[0] < start else []) + [node.name for node in nodes[start:]]


def quantize_int8(
    src: str,
    dst: str,
    calibration: Calibration,
    *,
    reduce_range: bool = True,
    on_image: Callable[[], None] | None = None,
) -> dict:
    """Write the static int8 QDQ model of the float32 model ``src`` to ``dst``; return the record of its
    calibration (also in ``dst``'s metadata as ``calibration``, with ``precision`` int8 and
    ``reduce_range``, beside the metadata ``src`` records, which the quantizer carries over).
    ``on_image`` is called once per calibration image. The quantizer's scratch files go to src's
    folder (give it one of its own) and are left to the caller to remove.
    Raises ``CalibrationError`` for an unreadable image, OSError for a write that failed."""
    from onnxruntime.quantization import (  # heavy: only export.py --precision int8 needs it
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    # The quantizer writes copies of the model (shape-inferred, augmented for calibration; one at a
    # time) beside ``src`` and in the temporary folder, the shape-inferred one through C++ that
    # truncates it on a full disk without an error. They all go to src's folder, where the space for
    # the largest is claimed first, and again after a failure that was not an OSError (a truncated
    # copy reads as "Wire format was corrupt"): a full disk then raises as one.
    scratch = os.path.dirname(os.path.abspath(src))
    copy_bytes = os.path.getsize(src) + 2**20  # the augmented model adds a few outputs
    claim_space(scratch, copy_bytes)
    images = ImageFiles(calibration.paths, calibration.input_size)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.index = 0

        def get_next(self) -> dict[str, np.ndarray] | None:
            if self.index >= len(images):
                return None
            image, meta = images[self.index]
            if meta["error"]:
                raise CalibrationError(f"{meta['path']}: {meta['error']}")
            self.index += 1
            if on_image:
                on_image()
            return {"image": image[None]}

    model = onnx.load(src, load_external_data=False)
    keep = float_nodes(model)
    del model
    # The quantizer logs advice about pre-processing (which does not apply to dynamic shapes) at
    # WARNING, on the root logger: quiet it for the call only, not for the caller's process.
    root = logging.getLogger()
    level, tempdir = root.level, tempfile.tempdir
    root.setLevel(logging.ERROR)
    tempfile.tempdir = scratch
    try:
        quantize_static(
            src,
            dst,
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            reduce_range=reduce_range,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=keep,
            # MinMax keeps two numbers per tensor and image (the graph is augmented with ReduceMin and
            # ReduceMax), so hundreds of images fit in memory. (CalibMaxIntermediateOutputs would
            # bound it, but onnxruntime 1.32 discards the batches it is meant to merge.)
            calibrate_method=CalibrationMethod.MinMax,
        )
    except Exception as exc:
        if not isinstance(exc, (OSError, CalibrationError)):  # a truncated copy: was it the disk?
            claim_space(scratch, copy_bytes)
        raise
    finally:
        root.setLevel(level)
        tempfile.tempdir = tempdir
    record = calibration.record(reduce_range, keep)
    quantized = onnx.load(dst)
    props = {"precision": "int8", "reduce_range": json.dumps(reduce_range)}
    props["calibration"] = json.dumps(record)
    set_metadata(quantized, props)
    onnx.save(quantized, dst)
    return record


def set_metadata(model: onnx.ModelProto, props: dict[str, str]) -> None:
    """Add or replace ``props`` in the model's metadata_props."""
    kept = [(p.key, p.value) for p in model.metadata_props if p.key not in props]
    del model.metadata_props[:]
    for key, value in [*kept, *props.items()]:
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
