"""export.py --precision int8 from the command line: bad input and static shapes. A file of its own
so that the suite's workers (one file each at a time) run it beside tests/test_quantize.py's exports.
"""

from __future__ import annotations

import os
import re
import shutil
import sys

import pytest

import export
import parse_images
from inference.onnx_infer import OnnxModel
from tests import scripts
from tests.scripts import run_main
from tests.test_quantize import SIZE, _val, make_checkpoint, make_data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("quantize_cli") / "data"
    make_data(root)
    return root


@pytest.fixture(scope="module")
def checkpoint(data, tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "model.pth"
    make_checkpoint(data, path)
    return path


def int8_argv(checkpoint, out, data, *more: str) -> list[str]:
    """export.py's arguments for an int8 export of ``checkpoint`` to ``out`` calibrated on ``data``."""
    model = ["--restore-from", str(checkpoint), "--out", str(out)]
    return [*model, "--precision", "int8", "--data-dir", str(data), *more]


@pytest.mark.slow
def test_static_shapes_quantize_too(checkpoint, data, tmp_path, capsys):
    path = tmp_path / "static.onnx"
    argv = int8_argv(checkpoint, path, data, "--input-size", "32,32", "--static", "--calibration-images", "2")
    code, out, err = run_main(export, argv, capsys)  # with the checks, which feed one picture at a time
    assert code == 0, err
    model = OnnxModel(str(path), runtime="onnxruntime")
    assert model.fixed == (1, 32, 32) and model.precision == "int8"
    assert model(_val(data)[:1, :, :32, :32]).shape == (1, 8, 32, 32)
    assert "static 1x3x32x32" in out
    assert re.search(r"vs float32 on 2 calibration images: labels agree on [0-9.]+% of the pixels", out)


@pytest.mark.slow
def test_a_full_disk_while_quantizing_is_one_line(checkpoint, data, tmp_path):
    """The output folder on a file system that holds the float32 model but not the quantizer's copy
    of it, which onnx's shape inference truncates without an error (read back as "Wire format was
    corrupt"): the same one line as any failed write, and nothing left behind."""
    out, seen = tmp_path / "out", tmp_path / "seen"
    out.mkdir()
    seen.mkdir()
    room = int(1.1 * os.path.getsize(checkpoint))  # the float32 model is about the checkpoint's size
    prefix, _ = scripts.refusing("ENOSPC", out, size=str(room))
    # After export.py, still in the namespace (the tmpfs goes with it): what it left there.
    prefix[prefix.index("-c") + 1] = (
        'mount -t tmpfs -o size="$1" tmpfs "$0" && shift && "$@"; rc=$?; ls -A "$0" > "$SEEN/left"; exit $rc'
    )
    env = dict(os.environ, SEEN=str(seen))
    argv = int8_argv(checkpoint, out / "int8.onnx", data, "--input-size", SIZE, "--calibration-images", "2")
    run = scripts.Timed([*prefix, sys.executable, os.path.join(ROOT, "export.py"), *argv, "--no-check"], env)
    assert run.returncode == 1, run.stderr[-3000:]
    assert "Traceback" not in run.stderr
    line = run.stderr.strip().splitlines()[-1].split("\r")[-1].strip()  # after the progress bar
    assert line == (
        f"export.py: error: {out / 'int8.onnx'}: could not be written: No space left on device (ENOSPC); "
        "nothing was written"
    )
    assert run.seconds_after("could not be written") < 15
    assert "calibrating int8" in run.stderr  # the float32 model was written: the quantizer failed
    assert (seen / "left").read_text() == ""  # no model, no float32 copy, no scratch folder


def test_int8_without_a_dataset_fails_before_exporting(checkpoint, tmp_path, capsys):
    out_path = tmp_path / "int8.onnx"
    missing = tmp_path / "no_such_data"
    code, out, err = run_main(export, int8_argv(checkpoint, out_path, missing), capsys)
    assert code == 2 and err.count("\n") == 1
    assert f"{missing}: no such dataset folder" in err and not out_path.exists()
    assert os.listdir(tmp_path) == []


def test_unreadable_calibration_image_fails_with_its_name(checkpoint, data, tmp_path, capsys):
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    first = open(copy / "train_id.txt").read().split()[0]
    bad = copy / "train_images" / f"{first}.jpg"
    bad.write_bytes(b"not a picture")
    out_path = tmp_path / "out" / "int8.onnx"
    argv = int8_argv(checkpoint, out_path, copy, "--input-size", SIZE, "--calibration-images", "2")
    code, out, err = run_main(export, [*argv, "--no-check"], capsys)
    assert code == 2 and str(bad) in err and "OpenCV cannot read it" in err
    assert err.strip().count("\n") == 0
    assert not out_path.parent.exists() or os.listdir(out_path.parent) == []  # checked before exporting


def test_runtime_flag_needs_an_onnx_model(checkpoint, data, tmp_path, capsys):
    code, out, err = run_main(
        parse_images,
        [
            "--restore-from",
            str(checkpoint),
            "--runtime",
            "openvino",
            "--out",
            str(tmp_path / "o"),
            str(data / "val_images"),
        ],
        capsys,
    )
    assert code == 2 and "--runtime openvino: applies to --onnx models only" in err
