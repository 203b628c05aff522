"""train.py end to end on tiny synthetic sets (CPU): learning, logs, checkpoints, resume, errors."""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import train
from training.schedule import poly_lr
from utils.labels import DOG

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    from dataset.synthetic import generate_dataset

    out = str(tmp_path_factory.mktemp("synthetic"))
    generate_dataset(out, 16, 4, 2, seed=0, min_size=48, max_size=96)
    return out


def _env(threads: int | None = None) -> dict[str, str]:
    """The test's environment; its torch threads (conftest's share of the cores) unless ``threads``."""
    env = dict(os.environ, PYTHONPATH=ROOT)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def _train(args: list[str], threads: int | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "train.py", *args],
        cwd=ROOT,
        env=_env(threads),
        capture_output=True,
        text=True,
        timeout=600,
    )


def _scalars(logdir: str, tag: str) -> dict[int, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(logdir, size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    return {e.step: e.value for e in events.Scalars(tag)}


def _tags(logdir: str) -> dict[str, list[str]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(logdir, size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    return events.Tags()


# ------------------------------------------------------------------------------------------
# A short real run
# ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_tiny_run_learns_logs_and_writes_checkpoints(data_dir, tmp_path, capsys):
    snap = str(tmp_path / "snap")
    missing = str(tmp_path / "no-such-resnet101.pth")
    # 16 images, batch 4: 4 iterations per epoch, 4 epochs = 16 iterations; default amp/channels-last.
    result = _train(
        [
            "--data-dir",
            data_dir,
            "--input-size",
            "64,64",
            "--batch-size",
            "4",
            "--epochs",
            "4",
            "--learning-rate",
            "1e-2",
            "--restore-from",
            missing,
            "--snapshot-dir",
            snap,
            "--workers",
            "0",
            "--log-every",
            "1",
            "--image-every",
            "8",
            "--eval-every",
            "2",
            "--snapshot-every",
            "2",
        ]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # A missing ImageNet file is loud, and training goes on from random weights.
    assert "FILE NOT FOUND" in result.stderr and "RANDOM" in result.stderr and missing in result.stderr
    epoch_lines = [line for line in result.stdout.splitlines() if line.startswith("epoch ")]
    assert len(epoch_lines) == 4 and epoch_lines[-1].startswith("epoch 4/4  iter 16/16")
    assert "val mIoU" in epoch_lines[1] and "val mIoU" in epoch_lines[3] and "val mIoU" not in epoch_lines[0]

    # Learning: the loss of the last iterations is well below that of the first (random weights: about
    # 5 x ln 8 = 10.4 or more).
    loss = _scalars(snap, "loss")
    assert sorted(loss) == list(range(1, 17))
    first = sum(loss[i] for i in range(1, 5)) / 4
    last = sum(loss[i] for i in range(13, 17)) / 4
    assert first > 9.5 and last < first - 3.0, (first, last)
    # The LR logged at step i is the one iteration i-1 ran with: the base LR first.
    lr = _scalars(snap, "learning_rate")
    assert lr[1] == pytest.approx(1e-2)
    for step in (1, 8, 16):
        assert lr[step] == pytest.approx(poly_lr(1e-2, step - 1, 16), rel=1e-6)

    tags = _tags(snap)
    assert {"loss", "learning_rate", "images_per_second"} <= set(tags["scalars"])
    assert {
        "Images",
        "Labels",
        "Preds",
        "val/prediction",
        "val/ground_truth",
        "val/confusion_matrix",
        "val/per_class_iou",
        "trainTest/confusion_matrix",
    } <= set(tags["images"])
    # add_scalars: one run per curve under <snapshot-dir>/<main tag>/<name>, the authors' tags and names.
    for name in ("Mean IU", "Pixel accuracy", "Mean accuracy", "Background", "tail"):
        values = _scalars(os.path.join(snap, "mIoUval", name), "mIoUval")
        assert sorted(values) == [2, 4], name
        assert all(0.0 <= v <= 100.0 for v in values.values())
    assert sorted(_scalars(os.path.join(snap, "mIoUtest", "Mean IU"), "mIoUtest")) == [2, 4]

    # Checkpoints: epoch snapshots at e % 2 == 0 and the last epoch, best and the training state.
    names = sorted(os.path.basename(p) for p in glob.glob(os.path.join(snap, "*.pth")))
    assert names == ["DFPnet_epoch_0.pth", "DFPnet_epoch_2.pth", "DFPnet_epoch_3.pth", "best.pth", "last.pth"]
    from networks.dfpnet import DFPNet
    from utils.checkpoint import load_model_weights, read_checkpoint

    model = DFPNet(num_classes=8)
    for name in names:
        load_model_weights(model, os.path.join(snap, name))
    snapshot = read_checkpoint(os.path.join(snap, "DFPnet_epoch_3.pth"))
    assert all(key.startswith("module.") for key in snapshot)  # the authors' format
    state = read_checkpoint(os.path.join(snap, "last.pth"))
    assert state["iteration"] == 16 and state["epoch"] == 4
    assert state["schedule"]["total_iters"] == 16 and state["schedule"]["iters_per_epoch"] == 4
    assert 0.0 <= state["best"]["mean_iou"] <= 100.0 and state["args"]["batch_size"] == 4
    assert {"python", "numpy", "torch"} <= set(state["rng"][0])
    assert torch.equal(state["model"]["outc.1.weight"], snapshot["module.outc.1.weight"])

    # Running it again resumes from last.pth, finds the run complete and does nothing.
    capsys.readouterr()
    code = train.run(
        [
            "--data-dir",
            data_dir,
            "--input-size",
            "64,64",
            "--batch-size",
            "4",
            "--epochs",
            "4",
            "--restore-from",
            "none",
            "--snapshot-dir",
            snap,
            "--workers",
            "0",
        ]
    )
    assert (
        code == 0 and "nothing to do: the training state is at iteration 16 of 16" in capsys.readouterr().out
    )


# ------------------------------------------------------------------------------------------
# Kill and resume
# ------------------------------------------------------------------------------------------

# 16 images, batch 4, 48x48: 4 iterations per epoch, 2 epochs. Deterministic CPU maths, one thread,
# no workers, float32: two runs with the same seed give bit-identical weights.
DETERMINISTIC = [
    "--input-size",
    "48,48",
    "--batch-size",
    "4",
    "--epochs",
    "2",
    "--learning-rate",
    "1e-2",
    "--restore-from",
    "none",
    "--workers",
    "0",
    "--amp",
    "off",
    "--deterministic",
    "--random-seed",
    "7",
    "--log-every",
    "1",
    "--val-datasets",
    "val",
    "--eval-every",
    "1",
]


@pytest.fixture(scope="module")
def whole_run(data_dir, tmp_path_factory) -> str:
    """The snapshot folder of the deterministic run, uninterrupted: what every interrupted run must equal."""
    whole = str(tmp_path_factory.mktemp("whole"))
    result = _train(
        ["--data-dir", data_dir, *DETERMINISTIC, "--snapshot-dir", whole, "--save-every", "0"], threads=1
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return whole


def _start(args: list[str], **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "train.py", *args],
        cwd=ROOT,
        env=_env(threads=1),
        text=True,
        stderr=subprocess.PIPE,
        **kwargs,
    )


def _wait_for(path: str, process: subprocess.Popen, contains: str = "") -> None:
    deadline = time.monotonic() + 300
    while process.poll() is None and time.monotonic() < deadline:
        if os.path.exists(path) and (not contains or contains in open(path).read()):
            return
        time.sleep(0.02)
    raise AssertionError(f"{path} did not appear (exit status {process.poll()})")


def _assert_same_weights(whole: str, resumed: str) -> None:
    a = torch.load(os.path.join(whole, "last.pth"), map_location="cpu", weights_only=True)
    b = torch.load(os.path.join(resumed, "last.pth"), map_location="cpu", weights_only=True)
    assert a["iteration"] == b["iteration"] == 8
    diff = max((a["model"][k].float() - b["model"][k].float()).abs().max().item() for k in a["model"])
    assert diff == 0.0
    for key in ("mean_iou", "epoch"):
        assert a["best"][key] == b["best"][key]


@pytest.mark.slow
def test_killed_refused_and_terminated_runs_resume_to_the_same_weights(data_dir, whole_run, tmp_path):
    """One folder through the ways a run ends early, each run resuming the one before:

    1. SIGKILL once iteration 3 (mid-epoch) is saved: the dead run's lock blocks nobody;
    2. the resuming run, paused (SIGSTOP) while it holds the folder: a second run is refused;
    3. the same run, continued and sent SIGTERM: it saves the step it is at and exits 143;
    4. a last run resumes from there to the end: the weights equal the uninterrupted run's exactly.
    """
    import socket

    common = ["--data-dir", data_dir, *DETERMINISTIC, "--save-every", "3"]
    cut = str(tmp_path / "cut")
    last, lock = os.path.join(cut, "last.pth"), os.path.join(cut, ".lock")

    # 1. SIGKILL as soon as the first save is on disk.
    process = _start(common + ["--snapshot-dir", cut], stdout=subprocess.DEVNULL)
    _wait_for(last, process)
    process.send_signal(signal.SIGKILL)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL, stderr[-3000:]
    killed = torch.load(last, map_location="cpu", weights_only=True)
    assert 3 <= killed["iteration"] < 8
    assert f"pid {process.pid} " in open(lock).read()  # left behind by the dead run

    # 2. The resuming run takes the folder (the dead run's lock is no obstacle) and is paused there.
    resumed = _start(common + ["--snapshot-dir", cut], stdout=subprocess.PIPE)
    _wait_for(lock, resumed, contains=f"pid {resumed.pid} ")
    resumed.send_signal(signal.SIGSTOP)
    try:
        intruder = _train(common + ["--snapshot-dir", cut], threads=1)
    finally:
        resumed.send_signal(signal.SIGCONT)
    assert intruder.returncode == 1
    assert intruder.stderr.strip() == (
        f"train.py: error: {cut} is in use by another training run (pid {resumed.pid} on host "
        f"{socket.gethostname()}); wait for it to end, stop it, or choose another --snapshot-dir"
    )
    assert "images" not in intruder.stdout  # refused before the dataset was even checked

    # 3. SIGTERM once it has started training again: it saves where it is and says so.
    line = resumed.stdout.readline()
    while line and not line.startswith("starting at "):
        line = resumed.stdout.readline()
    assert line.startswith(f"starting at epoch {killed['iteration'] // 4}, iteration {killed['iteration']} ")
    resumed.send_signal(signal.SIGTERM)
    _, stderr = resumed.communicate(timeout=120)
    assert resumed.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    stopped = torch.load(last, map_location="cpu", weights_only=True)
    message = stderr.strip().splitlines()[-1]
    assert message == (
        f"train.py: interrupted by SIGTERM; {last} holds iteration {stopped['iteration']}: "
        f"run the same command again to continue from there"
    )
    assert killed["iteration"] <= stopped["iteration"] < 8 and "Traceback" not in stderr

    # 4. To the end: bit-identical to the run that was never interrupted.
    final = _train(common + ["--snapshot-dir", cut], threads=1)
    assert final.returncode == 0, final.stderr[-3000:]
    assert f"iteration {stopped['iteration']} " in final.stdout
    _assert_same_weights(whole_run, cut)
    whole = torch.load(os.path.join(whole_run, "last.pth"), map_location="cpu", weights_only=True)
    moved = max(
        (whole["model"][k].float() - killed["model"][k].float()).abs().max().item() for k in whole["model"]
    )
    assert moved > 0  # the resumed runs did train
    # The LR continues on the same schedule across the resume boundaries. (A killed process may
    # not have written its last events: the TensorBoard writer writes from a queue.)
    lr_whole = _scalars(whole_run, "learning_rate")
    lr_cut = _scalars(cut, "learning_rate")
    assert sorted(lr_whole) == list(range(1, 9))
    assert set(range(stopped["iteration"] + 1, 9)) <= set(lr_cut) <= set(lr_whole)
    for step, value in lr_cut.items():
        assert value == pytest.approx(lr_whole[step], rel=1e-7), step


# ------------------------------------------------------------------------------------------
# Failures
# ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_non_finite_loss_stops_and_keeps_the_last_good_state(data_dir, tmp_path):
    snap = str(tmp_path / "snap")
    result = _train(
        [
            "--data-dir",
            data_dir,
            "--input-size",
            "48,48",
            "--batch-size",
            "4",
            "--epochs",
            "2",
            "--learning-rate",
            "1e30",
            "--restore-from",
            "none",
            "--snapshot-dir",
            snap,
            "--workers",
            "0",
            "--amp",
            "off",
            "--save-every",
            "1",
            "--val-datasets",
        ]
    )
    assert result.returncode == 1
    message = result.stderr.strip().splitlines()[-1]
    assert "non-finite loss in iteration" in message and "output " in message
    assert "Traceback" not in result.stderr
    failed = int(message.split("non-finite loss in iteration ")[1].split()[0])
    assert f"saved after iteration {failed - 1}) is the last good state" in message
    state = torch.load(os.path.join(snap, "last.pth"), map_location="cpu", weights_only=True)
    assert state["iteration"] == failed - 1
    assert all(torch.isfinite(v.float()).all() for v in state["model"].values())


def _run_inprocess(argv: list[str], capsys) -> tuple[int, str]:
    """train.run in this process: argparse errors raise SystemExit; returns (exit code, stderr)."""
    try:
        code = train.run(argv)
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--input-size", "0,5"], "argument --input-size"),
        (["--input-size", "64"], "argument --input-size"),
        (["--learning-rate", "-1e-3"], "argument --learning-rate"),
        (["--learning-rate", "nan"], "argument --learning-rate"),
        (["--amp", "fp8"], "argument --amp: invalid choice"),
        (["--epochs", "0"], "argument --epochs"),
        (["--batch-size", "-2"], "argument --batch-size"),
        (["--start-epoch", "6", "--epochs", "6"], "argument --start-epoch"),
        (["--weight-decay", "-1"], "argument --weight-decay"),
        (["--momentum", "1.5"], "argument --momentum"),
        (
            ["--batch-size", "17"],
            "argument --batch-size: 17 x 1 process(es) needs at least 17 training images",
        ),
        (["--resume", "/no/such/last.pth"], "argument --resume"),
        (["--amp", "fp16", "--device", "cpu"], "argument --amp: fp16 needs a CUDA device"),
        (["--device", "tpu"], "argument --device"),
    ],
)
def test_bad_values_exit_2_with_a_message(flags, message, data_dir, tmp_path, capsys):
    code, err = _run_inprocess(
        [
            "--data-dir",
            data_dir,
            "--snapshot-dir",
            str(tmp_path),
            "--input-size",
            "64,64",
            "--restore-from",
            "none",
            *flags,
        ],
        capsys,
    )
    assert code == 2
    assert message in err and "usage: train.py" in err


def test_missing_dataset_exits_1_before_training(tmp_path, capsys):
    code, err = _run_inprocess(
        ["--data-dir", str(tmp_path / "Dog"), "--snapshot-dir", str(tmp_path / "s")], capsys
    )
    assert code == 1
    assert "data directory missing" in err and str(tmp_path / "Dog") in err and "run.sh" in err
    assert not os.path.exists(tmp_path / "s")


def test_dataset_problem_is_reported_with_its_file(data_dir, tmp_path, capsys):
    import shutil

    import cv2
    import numpy as np

    broken = str(tmp_path / "data")
    shutil.copytree(data_dir, broken)
    first = open(os.path.join(broken, "train_id.txt")).read().split()[0]
    label_path = os.path.join(broken, "train_segmentations", first + ".png")
    label = cv2.imread(label_path, cv2.IMREAD_GRAYSCALE)
    cv2.imwrite(label_path, np.full_like(label, 9))  # id 9 does not exist with 8 classes
    code, err = _run_inprocess(["--data-dir", broken, "--snapshot-dir", str(tmp_path / "s")], capsys)
    assert code == 1 and "failed the dataset check" in err and label_path in err


def test_trainval_without_its_own_lists_trains_on_train_plus_val(data_dir):
    from torch.utils.data import ConcatDataset

    from training.config import setup
    from training.data import build_train_dataset, training_splits
    from training.flags import get_args_parser

    cfg = setup(
        get_args_parser().parse_args(["--data-dir", data_dir, "--input-size", "64,64", "--device", "cpu"])
    )
    assert training_splits(data_dir, "trainval") == ["train", "val"]
    assert training_splits(data_dir, "train") == ["train"]
    dataset = build_train_dataset(cfg, ["train", "val"], DOG)
    assert isinstance(dataset, ConcatDataset) and len(dataset) == 16 + 4
    image, label, _edge, _meta = dataset[len(dataset) - 1]  # a val image, augmented like training data
    assert image.shape == (3, 64, 64) and label.shape == (64, 64)


def test_checkpoint_of_another_network_exits_2(data_dir, tmp_path, capsys):
    # torchvision-like ResNet keys: a 7x7 stem and nothing of DFPnet's deep stem.
    other = str(tmp_path / "resnet101-torchvision.pth")
    torch.save(
        {
            "conv1.weight": torch.zeros(64, 3, 7, 7),
            "bn1.weight": torch.ones(64),
            "fc.weight": torch.zeros(1000, 2048),
        },
        other,
    )
    common = [
        "--data-dir",
        data_dir,
        "--snapshot-dir",
        str(tmp_path / "s"),
        "--input-size",
        "64,64",
        "--batch-size",
        "4",
        "--epochs",
        "1",
        "--workers",
        "0",
    ]
    code, err = _run_inprocess(common + ["--restore-from", other], capsys)
    assert code == 2
    line = err.strip().splitlines()[-1]
    assert line.startswith("train.py: error: ") and other in line and "deep-stem" in line
    assert "Traceback" not in err

    # --resume wants a training state: a weights-only file is refused with a hint.
    code, err = _run_inprocess(common + ["--restore-from", "none", "--resume", other], capsys)
    assert code == 2 and "not a training state" in err


def test_out_of_memory_prints_a_hint(data_dir, tmp_path, capsys, monkeypatch):
    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    import training.trainer

    monkeypatch.setattr(training.trainer, "train_one_epoch", out_of_memory)
    code, err = _run_inprocess(
        [
            "--data-dir",
            data_dir,
            "--snapshot-dir",
            str(tmp_path / "s"),
            "--input-size",
            "64,64",
            "--batch-size",
            "4",
            "--restore-from",
            "none",
            "--workers",
            "0",
        ],
        capsys,
    )
    assert code == 1
    assert "out of memory" in err and "--batch-size" in err and "--amp bf16" in err and "Traceback" not in err


# ------------------------------------------------------------------------------------------
# --time-budget
# ------------------------------------------------------------------------------------------


def test_plan_iterations_fits_steps_evaluations_and_saves_into_the_budget():
    from training.schedule import plan_iterations

    rules = {"iters_per_epoch": 10, "eval_every": 5, "snapshot_every": 99, "eval_s": 4.0, "save_s": 2.0}
    # 10 steps of 1 s per epoch, 3 done; a 2 s save per epoch end, 4 s per evaluation (+ 1 s best.pth)
    # after epochs 5, 10, ... and the last, snapshots (1 s) after epoch 0 and the last.
    # 15 epochs: 147 steps + 15 saves (30) + 3 evaluations x 5 + 2 snapshots x 1 = 194 s, 6 s short of
    # 200; one step more starts epoch 16 (epoch 15's end becomes a plain one: 2 s, the last end 8 s):
    # 148 + 46 + 8 = 202 s, only 2 s over, so that is the plan.
    assert plan_iterations(200.0, done=3, next_end=0, step_s=1.0, **rules) == (151, 202.0)
    assert plan_iterations(197.0, done=3, next_end=0, step_s=1.0, **rules) == (150, 194.0)
    # 5 s more: the run ends 4 steps into epoch 16 (evaluated, snapshotted): 151 steps, 15 ends before
    # it (30 s of saves, the evaluations after epochs 5, 10 and 15: 15 s, epoch 0's snapshot: 1 s) and
    # the last end (8 s) = 205 s.
    assert plan_iterations(205.0, done=3, next_end=0, step_s=1.0, **rules) == (154, 205.0)
    # Nothing fits: stop now, with the last epoch end (save, evaluation + best.pth, snapshot).
    assert plan_iterations(1.0, done=3, next_end=0, step_s=1.0, **rules) == (3, 8.0)
    # Re-planned at the end of epoch 1 (20 steps done, its end to come) when steps take 2 s: epoch 1's
    # end (2 s) and epoch 2 (20 s of steps, its end as the last: 8 s) fill 30 s.
    assert plan_iterations(30.0, done=20, next_end=1, step_s=2.0, **rules) == (30, 30.0)
    # 4 s less: 2 steps fewer.
    assert plan_iterations(26.0, done=20, next_end=1, step_s=2.0, **rules) == (28, 26.0)
    # Under one step and the last end left: epoch 1 ends the run.
    assert plan_iterations(9.0, done=20, next_end=1, step_s=2.0, **rules) == (20, 8.0)
    # Without evaluation splits the same time holds more steps: 164 steps, 16 ends (33 s), the last (3 s).
    assert plan_iterations(200.0, done=3, next_end=0, step_s=1.0, **{**rules, "eval_s": 0.0}) == (167, 200.0)


def test_time_budget_and_epochs_exclude_each_other(capsys):
    code, err = _run_inprocess(["--time-budget", "5", "--epochs", "3"], capsys)
    assert code == 2 and "argument --time-budget: not with --epochs" in err


@pytest.mark.slow
def test_time_budget_fixes_the_schedule_and_resume_keeps_it(data_dir, tmp_path, capsys):
    snap = str(tmp_path / "snap")
    common = [
        "--data-dir",
        data_dir,
        "--input-size",
        "48,48",
        "--batch-size",
        "4",
        "--learning-rate",
        "1e-2",
        "--restore-from",
        "none",
        "--snapshot-dir",
        snap,
        "--workers",
        "0",
        "--log-every",
        "1",
        "--val-datasets",
        "val",
        "--time-budget",
        "60",
    ]
    first = _train(common + ["--max-iters", "6"])
    assert first.returncode == 0, first.stderr[-3000:]
    plan = [line for line in first.stdout.splitlines() if line.startswith("--time-budget 60 min: ")]
    assert len(plan) == 1 and "(median of 1 timed)" in plan[0], first.stdout[-2000:]
    assert plan[0].endswith("(poly LR over them), planned again after every epoch")
    # Planned after the 3 timed steps, and again at the end of epoch 1 (iteration 4) from its wall time.
    planned = _scalars(snap, "planned_iterations")
    assert sorted(planned) == [3, 4]
    assert int(plan[0].split(" left: ")[1].split(" iterations")[0]) == planned[3]
    state = torch.load(os.path.join(snap, "last.pth"), map_location="cpu", weights_only=True)
    assert state["iteration"] == 6 and planned[4] > 8  # an hour holds far more than two 48x48 epochs
    # Stopped before its first evaluation: no best.pth, and the run says what to use instead.
    assert not os.path.exists(os.path.join(snap, "best.pth"))
    assert (
        f"no evaluation has run yet, so there is no {os.path.join(snap, 'best.pth')}: export.py, evaluate.py "
        f"and parse_images.py take {os.path.join(snap, 'last.pth')} as well"
    ) in first.stdout + first.stderr
    total = int(planned[4])
    assert state["schedule"]["total_iters"] == total and state["schedule"]["epochs"] == -(-total // 4)
    # The 3 timed steps ran at the base LR (where poly starts); then poly over the first plan, and
    # from the epoch end on over the second.
    lr = _scalars(snap, "learning_rate")
    assert [lr[i] for i in (1, 2, 3)] == pytest.approx([1e-2] * 3)
    assert lr[4] == pytest.approx(poly_lr(1e-2, 3, planned[3]), rel=1e-6)
    for step in (5, 6):
        assert lr[step] == pytest.approx(poly_lr(1e-2, step - 1, total), rel=1e-6)

    capsys.readouterr()
    code = train.run(common + ["--max-iters", "7"])  # resumed: the same schedule, not a new plan
    out = capsys.readouterr().out
    assert code == 0 and "--time-budget 60 min: " not in out and f"= {total} iterations" in out
    state = torch.load(os.path.join(snap, "last.pth"), map_location="cpu", weights_only=True)
    assert state["iteration"] == 7 and state["schedule"]["total_iters"] == total
    assert sorted(_scalars(snap, "planned_iterations")) == [3, 4]


def test_every_flag_reaches_the_run_configuration():
    """A flag added to training/flags.py without a TrainConfig field would be dropped silently."""
    from dataclasses import fields

    from training.config import TrainConfig
    from training.flags import IGNORED_FLAGS, get_args_parser

    flags = {action.dest for action in get_args_parser()._actions if action.dest != "help"}
    assert set(IGNORED_FLAGS) <= flags and not set(IGNORED_FLAGS) & {f.name for f in fields(TrainConfig)}
    flags -= set(IGNORED_FLAGS)
    assert flags and flags <= {f.name for f in fields(TrainConfig)}, flags - {
        f.name for f in fields(TrainConfig)
    }


def test_update_in_backward_is_refused_under_torchrun(data_dir, tmp_path, capsys, monkeypatch):
    """DDP averages the gradients after backward, too late for an update in backward: one line, exit 2,
    before any process group starts."""
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    argv = ["--data-dir", data_dir, "--snapshot-dir", str(tmp_path), "--input-size", "64,64"]
    code, err = _run_inprocess([*argv, "--restore-from", "none", "--update-in-backward"], capsys)
    assert code == 2
    assert "argument --update-in-backward: needs one process" in err
    assert os.listdir(tmp_path) == []
