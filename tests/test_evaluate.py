"""evaluate.py, parse_images.py and run_evaluate.sh from outside: outputs, one clear error per bad input."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import stat
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from torch import nn

import evaluate
from inference.model import network_input_size
from tests import scripts
from utils import recipe
from utils.device import default_amp
from utils.labels import DOG

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METRIC_KEYS = {
    "mean_iou",
    "pixel_accuracy",
    "mean_accuracy",
    "per_class_iou",
    "confusion_matrix",
    "num_images",
    "checkpoint",
    "dataset",
    "input_size",
    "flip",
    "scales",
    "truncate_centers",
    "amp",
}


@pytest.fixture()
def data(tmp_path):
    """A fresh 3-image synthetic val split (the bad-input tests damage it)."""
    from dataset.synthetic import generate_dataset

    generate_dataset(str(tmp_path / "data"), 0, 3, 0, seed=0, min_size=40, max_size=90)
    return tmp_path / "data"


@pytest.fixture(scope="module")
def dfpnet_checkpoint(tmp_path_factory):
    """A checkpoint as train.py writes DFPnet_epoch_<e>.pth: the model's state_dict via save_atomic."""
    from networks.dfpnet import DFPNet
    from utils.checkpoint import save_atomic

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "DFPnet_epoch_5.pth"
    save_atomic(DFPNet(num_classes=8).state_dict(), path)
    return path


def run_main(argv: list[str], capsys) -> tuple[int, str, str]:
    """evaluate.py in this process (no interpreter start-up): exit code, stdout, stderr."""
    return scripts.run_main(evaluate, argv, capsys)


def run_script(args: list[str], timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env
    )


# ---------------------------------------------------------------------------------------------
# bad inputs: a clear line, a non-zero exit, no metrics file
# ---------------------------------------------------------------------------------------------


def _fails(argv, capsys, tmp_path, code, *needles, checkpoint=None):
    metrics = tmp_path / "metrics.json"
    network = ["--restore-from", str(checkpoint)] if checkpoint else []
    got, out, err = run_main(
        [
            "--device",
            "cpu",
            "--workers",
            "0",
            "--no-progress",
            *network,
            *argv,
            "--metrics-out",
            str(metrics),
        ],
        capsys,
    )
    assert got == code, (out, err)
    for needle in needles:
        assert needle in err, err
    assert "Traceback" not in err
    assert not metrics.exists()
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".metrics")]  # no temp file left either
    return err


def test_missing_dataset_dir(tmp_path, capsys):
    missing = str(tmp_path / "no_such_dir")
    _fails(["--data-dir", missing], capsys, tmp_path, 1, missing, "not found")


def test_wrong_split(data, tmp_path, capsys):
    err = _fails(["--data-dir", str(data), "--dataset", "test"], capsys, tmp_path, 1, "test_id.txt", "val")
    assert "splits there: val" in err


def test_training_split_is_refused(data, tmp_path, capsys):
    from dataset.synthetic import generate_dataset

    generate_dataset(str(data), 2, 0, 0, seed=1, min_size=40, max_size=60)
    _fails(["--data-dir", str(data), "--dataset", "train"], capsys, tmp_path, 1, "augmentation")


def test_unreadable_image(data, dfpnet_checkpoint, tmp_path, capsys):
    image = data / "val_images" / "syn_00001.jpg"
    image.write_bytes(b"this is not a jpeg")
    _fails(["--data-dir", str(data)], capsys, tmp_path, 1, "syn_00001.jpg", checkpoint=dfpnet_checkpoint)


def test_ground_truth_of_a_different_size(data, dfpnet_checkpoint, tmp_path, capsys):
    label = data / "val_segmentations" / "syn_00002.png"
    gt = cv2.imread(str(label), cv2.IMREAD_UNCHANGED)
    cv2.imwrite(str(label), np.zeros((gt.shape[0] + 3, gt.shape[1]), np.uint8))
    _fails(["--data-dir", str(data)], capsys, tmp_path, 1, "syn_00002.png", checkpoint=dfpnet_checkpoint)


@pytest.mark.parametrize("scales", ["", "a,b", "0", "1,-1", "nan"])
def test_bad_scales(data, tmp_path, capsys, scales):
    _fails(["--data-dir", str(data), f"--scales={scales}"], capsys, tmp_path, 2, "--scales", repr(scales))


@pytest.mark.parametrize("size", ["0,5", "5", "a,b", "3,4,5", "-2,8"])
def test_bad_input_size(data, tmp_path, capsys, size):
    _fails(["--data-dir", str(data), f"--input-size={size}"], capsys, tmp_path, 2, "--input-size", repr(size))


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["--batch-size", "0"], "--batch-size"),
        (["--workers", "-1"], "--workers"),
        (["--num-classes", "x"], "--num-classes"),
        (["--amp", "fp8"], "--amp"),
        (["--ignore-label", "3"], "--ignore-label"),
        (["--device", "gpu0"], "gpu0"),
    ],
)
def test_other_nonsense_values(data, dfpnet_checkpoint, tmp_path, capsys, argv, needle):
    _fails(["--data-dir", str(data), *argv], capsys, tmp_path, 2, needle, checkpoint=dfpnet_checkpoint)


def test_missing_checkpoint(data, tmp_path, capsys):
    missing = str(tmp_path / "none.pth")
    _fails(["--data-dir", str(data), "--restore-from", missing], capsys, tmp_path, 2, missing, "not found")


def test_checkpoint_of_another_network(data, tmp_path, capsys):
    from utils.checkpoint import save_atomic

    other = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    path = tmp_path / "other.pth"
    save_atomic(other.state_dict(), path)
    err = _fails(
        ["--data-dir", str(data), "--restore-from", str(path), "--input-size", "32,32"],
        capsys,
        tmp_path,
        2,
        str(path),
        "missing keys",
        "unexpected keys",
        "0.weight",
    )
    assert len(err.strip().splitlines()) == 1  # one line


# ---------------------------------------------------------------------------------------------
# end to end with a checkpoint saved the way training saves it
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_evaluate_end_to_end(data, dfpnet_checkpoint, tmp_path):
    metrics, pictures = tmp_path / "out" / "metrics.json", tmp_path / "pics"
    proc = run_script(
        [
            "evaluate.py",
            "--data-dir",
            str(data),
            "--restore-from",
            str(dfpnet_checkpoint),
            "--input-size",
            "64,64",
            "--device",
            "cpu",
            "--workers",
            "0",
            "--metrics-out",
            str(metrics),
            "--save-path",
            str(pictures),
        ]
    )
    assert proc.returncode == 0, proc.stderr
    for name in DOG.names:
        assert name in proc.stdout
    assert "Mean IU" in proc.stdout and "Pixel accuracy" in proc.stdout and "images/s" in proc.stdout

    result = json.loads(metrics.read_text())
    assert METRIC_KEYS <= set(result)
    assert list(result["per_class_iou"]) == list(DOG.names)
    assert result["num_images"] == 3 and result["dataset"] == "val"
    assert result["checkpoint"] == str(dfpnet_checkpoint)
    assert result["input_size"] == [64, 64] and result["scales"] == [1.0]
    assert result["flip"] is False and result["truncate_centers"] is False
    # Float32 unless asked (exact scores), whatever the CPU runs fastest.
    assert result["amp"] == "off" and result["channels_last"] is True
    mat = np.array(result["confusion_matrix"])
    ids = (data / "val_id.txt").read_text().split()
    labels = {i: cv2.imread(str(data / "val_segmentations" / f"{i}.png"), cv2.IMREAD_UNCHANGED) for i in ids}
    assert mat.shape == (8, 8) and mat.sum() == sum(int((gt != 255).sum()) for gt in labels.values())
    tp, gt_n, pred_n = np.diag(mat), mat.sum(1), mat.sum(0)
    assert result["mean_iou"] == pytest.approx(100 * np.mean(tp / np.maximum(1, gt_n + pred_n - tp)))

    for i in ids:
        h, w = cv2.imread(str(data / "val_images" / f"{i}.jpg")).shape[:2]
        label = cv2.imread(str(pictures / f"{i}_label.png"), cv2.IMREAD_UNCHANGED)
        assert label.shape == (h, w) and label.max() < 8
        assert cv2.imread(str(pictures / f"{i}_color.png")).shape == (h, w, 3)
        assert cv2.imread(str(pictures / f"{i}_overlay.jpg")).shape == (h, w, 3)
    for figure in ("confusion_matrix.png", "per_class_iou.png"):
        assert cv2.imread(str(pictures / figure)) is not None

    # The options change the settings recorded (and still run): flip, two scales, authors' centers.
    proc = run_script(
        [
            "evaluate.py",
            "--data-dir",
            str(data),
            "--restore-from",
            str(dfpnet_checkpoint),
            "--input-size",
            "48,40",
            "--device",
            "cpu",
            "--workers",
            "1",
            "--batch-size",
            "2",
            "--flip",
            "--scales",
            "0.75,1",
            "--truncate-centers",
            "--amp",
            "bf16",
            "--no-progress",
            "--metrics-out",
            str(metrics),
        ]
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(metrics.read_text())
    settings = [result[k] for k in ("flip", "scales", "truncate_centers", "amp", "input_size")]
    assert settings == [True, [0.75, 1.0], True, "bf16", [48, 40]]


@pytest.mark.slow
def test_every_checkpoint_format_loads_the_same_weights(dfpnet_checkpoint, tmp_path):
    from inference.model import load_model
    from utils.checkpoint import read_weights, save_atomic

    state = torch.load(dfpnet_checkpoint, map_location="cpu", weights_only=True)
    formats = {
        "authors": {f"module.{k}": v for k, v in state.items()},  # saved from DataParallel
        "training_state": {"model": state, "epoch": 7, "optimizer": {}},
    }
    for name, obj in formats.items():
        save_atomic(obj, tmp_path / f"{name}.pth")
        model = load_model(read_weights(tmp_path / f"{name}.pth"), 8, torch.device("cpu"))
        assert not model.training
        loaded = model.state_dict()
        for key in ("conv1.weight", "layer3.22.conv2.weight", "outc.2.weight", "outc.2.bias"):
            assert torch.equal(loaded[key], state[key]), (name, key)
        del model, loaded


@pytest.mark.slow
def test_checkpoint_error_from_the_command_line_is_one_line(data, tmp_path):
    bad = tmp_path / "garbage.pth"
    bad.write_bytes(b"not a checkpoint")
    proc = run_script(
        [
            "evaluate.py",
            "--data-dir",
            str(data),
            "--restore-from",
            str(bad),
            "--device",
            "cpu",
            "--metrics-out",
            str(tmp_path / "m.json"),
        ]
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and str(bad) in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "m.json").exists()


# ---------------------------------------------------------------------------------------------
# outputs that cannot be written: real failing writes (a file size limit), one line, exit 1
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    "script,fsize,args,failing",
    [
        # pictures first: each of them is over 100 bytes
        ("evaluate.py", 100, ["--dataset", "val", "--save-path", "{out}"], "{out}/syn_00000_label.png"),
        # the metrics last, after every picture was scored
        (
            "evaluate.py",
            1000,
            ["--dataset", "val", "--metrics-out", "{out}/metrics.json"],
            "{out}/metrics.json",
        ),
        ("parse_images.py", 100, ["--out", "{out}", "{data}/val_images"], "{out}/syn_00000_label.png"),
        # the 234 MiB model over a 1 MiB limit, as on a full disk
        ("export.py", 2**20, ["--out", "{out}/dfpnet.onnx", "--static", "--no-check"], "{out}/dfpnet.onnx"),
        # --bundle: the file named as it would be in the bundle, whose staging folder is gone
        ("export.py", 2**20, ["--static", "--no-check", "--bundle", "{out}/b"], "{out}/b/dfpnet.onnx"),
    ],
)
def test_an_output_that_cannot_be_written_is_one_line_and_exit_1(
    data, dfpnet_checkpoint, tmp_path, script, fsize, args, failing
):
    out = tmp_path / "out"
    _, limit = scripts.refusing("EFBIG", out, fsize=fsize)
    fill = {"out": str(out), "data": str(data)}
    argv = [sys.executable, os.path.join(ROOT, script), "--restore-from", str(dfpnet_checkpoint)]
    argv += ["--input-size", "64,64", *[a.format(**fill) for a in args]]
    if script != "export.py":
        argv += ["--device", "cpu", "--workers", "0", "--no-progress"]
        argv += ["--data-dir", str(data)] if script == "evaluate.py" else []
    run = scripts.Timed(argv, dict(os.environ), preexec_fn=limit, cwd=ROOT)
    assert run.returncode == 1, run.stderr[-3000:]
    assert "Traceback" not in run.stderr
    assert run.stderr.strip().splitlines()[-1] == (
        f"{script}: error: {failing.format(**fill)}: could not be written: File too large (EFBIG); "
        f"nothing was written"
    )
    left = os.listdir(out) if out.is_dir() else []
    assert not [p for p in left if p.endswith(".tmp") or ".partial-" in p], left


@pytest.mark.slow
def test_parse_images(data, dfpnet_checkpoint, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    image = cv2.imread(str(data / "val_images" / "syn_00000.jpg"))
    cv2.imwrite(str(folder / "a.png"), image)
    cv2.imwrite(str(folder / "b.webp"), cv2.resize(image, (71, 33)))
    cv2.imwrite(str(folder / "c.bmp"), image[:, :, 0])  # grey
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    out = tmp_path / "parsed"
    proc = run_script(
        [
            "parse_images.py",
            "--restore-from",
            str(dfpnet_checkpoint),
            "--out",
            str(out),
            "--input-size",
            "64,64",
            "--device",
            "cpu",
            "--workers",
            "0",
            "--no-progress",
            str(folder),
            str(data / "val_images" / "syn_00001.jpg"),
        ]
    )
    assert proc.returncode == 1  # one file failed
    assert "broken.jpg" in proc.stderr and "Traceback" not in proc.stderr
    expected = {
        "a": image.shape[:2],
        "b": (33, 71),
        "c": image.shape[:2],
        "syn_00001": cv2.imread(str(data / "val_images" / "syn_00001.jpg")).shape[:2],
    }
    for stem, size in expected.items():
        assert cv2.imread(str(out / f"{stem}_label.png"), cv2.IMREAD_UNCHANGED).shape == size
        assert cv2.imread(str(out / f"{stem}_color.png")).shape == (*size, 3)
        assert cv2.imread(str(out / f"{stem}_overlay.jpg")).shape == (*size, 3)
    assert not (out / "broken_label.png").exists()
    assert "Parsed 4 of 5 images" in proc.stdout
    # Pictures keep the fastest precision (unlike evaluate.py's exact float32) and say which it was.
    assert f"device cpu, amp {default_amp(torch.device('cpu'))})" in proc.stdout


# ---------------------------------------------------------------------------------------------
# run_evaluate.sh, with a stand-in interpreter that records what it is asked to run
# ---------------------------------------------------------------------------------------------


@pytest.fixture()
def script_copy(tmp_path):
    """run_evaluate.sh in an empty repo whose utils/env.sh points PYTHON at a recorder."""
    repo = tmp_path / "repo"
    (repo / "utils").mkdir(parents=True)
    shutil.copy(os.path.join(ROOT, "run_evaluate.sh"), repo / "run_evaluate.sh")
    log = tmp_path / "calls.txt"
    recorder = repo / "fake_python"
    # The recipe's values come from the real module; everything else is recorded, not run.
    recorder.write_text(
        f"#!/usr/bin/env bash\n"
        f'if [ "$2" = utils.recipe ]; then PYTHONPATH="{ROOT}" exec "{sys.executable}" "$@"; fi\n'
        f'echo "$*" >> "{log}"\n'
        'if [ "$1" = -m ]; then mkdir -p "$4" && touch "$4/val_id.txt"; fi\n'
    )
    recorder.chmod(recorder.stat().st_mode | stat.S_IEXEC)
    (repo / "utils" / "env.sh").write_text(f'export PYTHON="{recorder}"\n')
    return repo, log


def _run_sh(repo, **env):
    full = {
        k: v
        for k, v in os.environ.items()
        if k
        not in (
            "DATA_DIR",
            "DATASET",
            "RESTORE_FROM",
            "INPUT_SIZE",
            "SAVE_PATH",
            "EXTRA_ARGS",
            "DEVICE",
            "AMP",
            "NUM_CLASSES",
            "BATCH_SIZE",
            "WORKERS",
            "METRICS_OUT",
        )
    }
    full.update(env)
    return subprocess.run(
        ["bash", str(repo / "run_evaluate.sh")], capture_output=True, text=True, env=full, timeout=60
    )


def test_run_evaluate_sh_authors_settings_and_overrides(script_copy):
    repo, log = script_copy
    data = repo / "dataset" / "Cartoon_sketches" / "Dog"
    data.mkdir(parents=True)
    (data / "val_id.txt").write_text("x\n")
    proc = _run_sh(repo)
    assert proc.returncode == 0, proc.stderr
    call = log.read_text().split()
    assert call[0] == "evaluate.py"
    pairs = dict(zip(call[1::2], call[2::2]))
    # The dataset is found where the recipe says; every other setting is left to evaluate.py's
    # defaults, which are the recipe's.
    assert pairs == {
        "--data-dir": "./dataset/Cartoon_sketches/Dog/",
        "--dataset": "val",
        "--metrics-out": "./outputs/eval/metrics.json",
    }
    defaults = evaluate.get_arguments([])
    # No --input-size: the crop the checkpoint records, and the authors' files record none: 384x384.
    assert defaults.input_size is None and (defaults.labels, defaults.num_classes) == (None, None)
    authors = argparse.Namespace(input_size=None)
    assert network_input_size(authors, argparse.Namespace(input_size=None)) == (384, 384)
    assert defaults.restore_from == "./snapshots/DFPnet_epoch_495.pth"
    log.unlink()
    proc = _run_sh(
        repo,
        INPUT_SIZE="64,64",
        RESTORE_FROM="x.pth",
        DEVICE="cpu",
        SAVE_PATH="pics",
        EXTRA_ARGS="--flip --scales 0.75,1",
    )
    assert proc.returncode == 0, proc.stderr
    call = log.read_text().split()
    for flag, value in [
        ("--input-size", "64,64"),
        ("--restore-from", "x.pth"),
        ("--device", "cpu"),
        ("--save-path", "pics"),
        ("--scales", "0.75,1"),
    ]:
        assert call[call.index(flag) + 1] == value
    assert "--flip" in call


def test_run_evaluate_sh_demo_needs_the_demo_snapshot(script_copy):
    repo, log = script_copy
    proc = _run_sh(repo)
    assert proc.returncode == 1
    assert "synthetic demo" in proc.stdout and "run ./run.sh first" in proc.stderr
    assert not log.exists()


def test_run_evaluate_sh_demo(script_copy):
    repo, log = script_copy
    (repo / "snapshots" / "demo").mkdir(parents=True)
    (repo / "snapshots" / "demo" / "best.pth").write_bytes(b"")
    proc = _run_sh(repo, DATA_DIR=str(repo / "nothing_here"))
    assert proc.returncode == 0, proc.stderr
    assert "nothing_here" in proc.stdout and "synthetic demo" in proc.stdout
    generate, run = log.read_text().splitlines()
    assert generate == (
        f"-m dataset.synthetic --out {recipe.DEMO_DATA_DIR} --train 96 --val 24 --trainTest 12 --seed 0"
    )
    call = run.split()
    for flag, value in [
        ("--data-dir", recipe.DEMO_DATA_DIR),
        ("--restore-from", "./snapshots/demo/best.pth"),
        ("--input-size", "128,128"),
        ("--save-path", "./outputs/eval_demo/"),
        ("--metrics-out", "./outputs/eval_demo/metrics.json"),
    ]:
        assert call[call.index(flag) + 1] == value
