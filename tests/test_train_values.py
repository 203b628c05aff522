"""Values users depend on when training, checked by value (test_train.py covers the run's files, logs,
kills and errors): the weights with DataLoader workers, what best.pth holds, the resume rules when the
run's shape changes, the initial weights --restore-from gives, the documented recipe, run.sh's flags and
the input normalisation.

Every run is train.run() in this process on a tiny synthetic set: 32x32 crops, float32.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import stat
import subprocess
import sys

import numpy as np
import pytest
import torch

import train
from dataset.layout import read_id_list, split_paths
from utils.checkpoint import read_checkpoint, save_atomic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEED = 7
LR = 1e-2
POWER = 0.9  # docs/reference.md section 6: lr = base * (1 - it / total) ** 0.9
# Flags of every run: a 32x32 crop, float32, deterministic kernels, only val evaluated.
COMMON = [
    "--input-size",
    "32,32",
    "--amp",
    "off",
    "--deterministic",
    "--random-seed",
    str(SEED),
    "--val-datasets",
    "val",
]
# 8 training images, batch 4: 2 iterations per epoch, 3 epochs = 6 iterations.
SHAPE = ["--batch-size", "4", "--epochs", "3"]


@pytest.fixture(autouse=True)
def _restore_determinism():
    """train.py --deterministic switches torch's deterministic mode on for the whole process: put it back."""
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    yield
    torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


def _drop_checkpoints(folder) -> None:
    """The .pth files of a passed test (about 0.5 GB per last.pth) need not wait for pytest's cleanup."""
    for dirpath, _, names in os.walk(folder):
        for name in names:
            if name.endswith(".pth"):
                os.unlink(os.path.join(dirpath, name))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    from dataset.synthetic import generate_dataset

    out = str(tmp_path_factory.mktemp("synthetic"))
    generate_dataset(out, 8, 4, 0, seed=0, min_size=32, max_size=48)
    return out


def _train(data_dir, snap, *flags, shape=SHAPE, lr=LR, restore_from="none") -> tuple[int, str, str]:
    """train.py on the shared data with the common flags, the run's shape and learning rate, into ``snap``."""
    argv = ["--data-dir", data_dir, *COMMON, *shape, "--learning-rate", lr, "--restore-from", restore_from]
    return _run([*argv, "--snapshot-dir", snap, *flags])


def _run(argv: list[str]) -> tuple[int, str, str]:
    """train.run(argv) in this process: (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = train.run([str(a) for a in argv])
        except SystemExit as exc:
            code = exc.code
    return code, out.getvalue(), err.getvalue()


def _warnings(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("train.py: warning: ")]


def _weights(path) -> dict[str, torch.Tensor]:
    """The model tensors of any of train.py's files, without the authors' ``module.`` prefix."""
    obj = read_checkpoint(path)
    state = obj["model"] if "model" in obj else obj
    return {k.removeprefix("module."): v for k, v in state.items()}


def _assert_equal_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)
    for key in a:
        assert a[key].dtype == b[key].dtype, key
        assert torch.equal(a[key], b[key]), (key, (a[key].double() - b[key].double()).abs().max().item())


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()


def _poly(base: float, iteration: int, total: int) -> float:
    return base * (1 - iteration / total) ** POWER


@pytest.fixture(scope="module")
def interrupted(data_dir, tmp_path_factory):
    """last.pth of a run stopped by --max-iters 3, mid-epoch 1 (2 iterations per epoch), without workers."""
    snap = tmp_path_factory.mktemp("workers0")
    code, out, err = _train(data_dir, snap, "--workers", "0", "--max-iters", "3")
    assert code == 0, err[-3000:]
    yield snap / "last.pth"
    _drop_checkpoints(snap)


# ------------------------------------------------------------------------------------------
# 1. DataLoader workers do not change what is learnt
# ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_default_workers_learn_the_same_weights_as_no_workers(data_dir, interrupted, tmp_path):
    from utils import recipe

    snap = tmp_path / "snap"
    code, out, err = _train(data_dir, snap, "--max-iters", "3")  # no --workers: the default
    assert code == 0, err[-3000:]
    with_workers, without = read_checkpoint(snap / "last.pth"), read_checkpoint(interrupted)
    assert with_workers["args"]["workers"] == recipe.WORKERS > 0 and without["args"]["workers"] == 0
    assert with_workers["iteration"] == without["iteration"] == 3
    # Every tensor, exactly: augmentation is seeded per sample, not per worker.
    _assert_equal_tensors(_weights(snap / "last.pth"), _weights(interrupted))
    _assert_equal_tensors(
        _weights(snap / "DFPnet_epoch_0.pth"), _weights(interrupted.parent / "DFPnet_epoch_0.pth")
    )
    # Not vacuous: the third step (the one after DFPnet_epoch_0.pth) changed the weights.
    after_2, after_3 = _weights(snap / "DFPnet_epoch_0.pth"), _weights(snap / "last.pth")
    assert max(_max_diff(after_2[k], after_3[k]) for k in after_3 if after_3[k].is_floating_point()) > 0
    _drop_checkpoints(tmp_path)


@pytest.mark.slow
def test_memory_lean_flags_learn_the_same_weights(data_dir, interrupted, tmp_path):
    """train.py --activation-checkpointing all --update-in-backward (backbone and heads recomputed in
    backward, each parameter updated as soon as its gradient is complete): the same three steps
    give the same weights and momentum, bit for bit, as the run that keeps every activation and
    updates after backward."""
    snap = tmp_path / "snap"
    flags = (
        "--workers",
        "0",
        "--max-iters",
        "3",
        "--activation-checkpointing",
        "all",
        "--update-in-backward",
    )
    code, out, err = _train(data_dir, snap, *flags)
    assert code == 0, err[-3000:]
    assert "activation checkpointing all, SGD update in backward" in out
    state = read_checkpoint(snap / "last.pth")
    assert state["iteration"] == 3 and state["args"]["activation_checkpointing"] == "all"
    assert state["args"]["update_in_backward"] is True
    _assert_equal_tensors(_weights(snap / "last.pth"), _weights(interrupted))
    momentum = {str(k): v["momentum_buffer"] for k, v in state["optimizer"]["state"].items()}
    plain = read_checkpoint(interrupted)["optimizer"]["state"]
    _assert_equal_tensors(momentum, {str(k): v["momentum_buffer"] for k, v in plain.items()})
    assert len(momentum) == len(state["optimizer"]["param_groups"][0]["params"]) > 300
    _drop_checkpoints(tmp_path)


@pytest.mark.slow
def test_update_in_backward_under_bf16_autocast_learns_what_plain_sgd_learns(data_dir, tmp_path):
    """The same under bf16 autocast, the default on CPUs with native bf16: autocast casts each weight
    to bf16 once per forward and caches the copy, and the recomputation in backward casts again, so
    an update made inside backward must reach neither a copy the step still uses nor a recomputed
    layer. Three steps each way, weights and momentum compared bit for bit."""
    runs = {}
    lean = ("--activation-checkpointing", "all", "--update-in-backward")  # as the memory-lean run is
    for name, extra in [("plain", ()), ("in_backward", lean)]:
        snap = tmp_path / name
        code, out, err = _train(data_dir, snap, "--workers", "0", "--max-iters", "3", "--amp", "bf16", *extra)
        assert code == 0, err[-3000:]
        assert "amp bf16" in out and ("SGD update in backward" in out) == bool(extra), out[-2000:]
        runs[name] = read_checkpoint(snap / "last.pth")
    plain, in_backward = runs["plain"], runs["in_backward"]
    assert plain["iteration"] == in_backward["iteration"] == 3
    _assert_equal_tensors(in_backward["model"], plain["model"])
    momentum = {str(k): v["momentum_buffer"] for k, v in in_backward["optimizer"]["state"].items()}
    _assert_equal_tensors(
        momentum, {str(k): v["momentum_buffer"] for k, v in plain["optimizer"]["state"].items()}
    )
    # Not vacuous: the steps moved the weights away from the first step's.
    first = _weights(tmp_path / "plain" / "DFPnet_epoch_0.pth")
    assert any(not torch.equal(first[k], plain["model"][k]) for k in first if first[k].is_floating_point())
    _drop_checkpoints(tmp_path)


# ------------------------------------------------------------------------------------------
# 2. best.pth holds the weights of the best val mean IU
# ------------------------------------------------------------------------------------------


def _evaluate(data_dir: str, checkpoint, channels_last: bool, metrics, save_path=None) -> float:
    """evaluate.py (in this process) on val with the settings of the run's evaluation; its mean IU."""
    import evaluate

    argv = [
        "--data-dir",
        data_dir,
        "--dataset",
        "val",
        "--restore-from",
        str(checkpoint),
        "--input-size",
        "32,32",
        "--workers",
        "0",
        "--device",
        "cpu",
        "--amp",
        "off",
        "--no-fuse",
        "--channels-last" if channels_last else "--no-channels-last",
        "--no-progress",
        "--metrics-out",
        str(metrics),
    ]
    if save_path is not None:
        argv += ["--save-path", str(save_path)]
    with contextlib.redirect_stdout(io.StringIO()):
        evaluate.main(evaluate.get_arguments(argv))
    with open(metrics) as f:
        return json.load(f)["mean_iou"]


@pytest.mark.slow
def test_best_pth_holds_the_weights_of_the_best_val_score(data_dir, tmp_path):
    # The val labels are made to be what the first epoch's weights predict, so epoch 0 is right on
    # every pixel and every later epoch scores less: the best epoch is the first, never the last, by
    # construction. A best.pth holding the last epoch's weights (or any other epoch's) then fails.
    flags = ["--workers", "0", "--eval-every", "1", "--snapshot-every", "1"]
    lr = "0.1"  # large steps: later epochs predict visibly differently from the first
    code, _, err = _train(
        data_dir, tmp_path / "first", *flags, shape=("--batch-size", "8", "--epochs", "1"), lr=lr
    )
    assert code == 0, err[-3000:]
    first = tmp_path / "first" / "DFPnet_epoch_0.pth"
    channels_last = read_checkpoint(tmp_path / "first" / "last.pth")["args"]["channels_last"]
    predicted = tmp_path / "predicted"
    _evaluate(data_dir, first, channels_last, tmp_path / "first.json", save_path=predicted)
    relabelled = str(tmp_path / "relabelled")
    shutil.copytree(data_dir, relabelled)
    val = split_paths(relabelled, "val")
    for image_id in read_id_list(val.id_list):
        shutil.copyfile(predicted / f"{image_id}_label.png", os.path.join(val.label_dir, f"{image_id}.png"))

    snap = tmp_path / "snap"
    code, out, err = _train(relabelled, snap, *flags, shape=("--batch-size", "8", "--epochs", "3"), lr=lr)
    assert code == 0, err[-3000:]
    # Same seed, same first step: the 3-epoch run's first epoch is the 1-epoch run's, bit for bit.
    _assert_equal_tensors(_weights(snap / "DFPnet_epoch_0.pth"), _weights(first))
    lines = re.findall(r"^epoch (\d+)/3 .*val mIoU ([0-9.]+).*$", out, re.M)
    printed = {int(epoch) - 1: float(score) for epoch, score in lines}
    assert sorted(printed) == [0, 1, 2], out[-3000:]

    # evaluate.py, with the run's evaluation settings, on the snapshot of every epoch: the scores printed.
    scores = {
        epoch: _evaluate(
            relabelled, snap / f"DFPnet_epoch_{epoch}.pth", channels_last, tmp_path / f"{epoch}.json"
        )
        for epoch in printed
    }
    for epoch, score in scores.items():
        assert score == pytest.approx(printed[epoch], abs=0.005 + 1e-9), epoch  # printed with 2 decimals
    # Epoch 0 is right on every pixel (classes absent from val count 0, so its mean IU is under 100).
    assert json.loads((tmp_path / "0.json").read_text())["pixel_accuracy"] == 100.0
    assert scores[0] > max(scores[1], scores[2]), scores

    best = read_checkpoint(snap / "last.pth")["best"]
    assert best["split"] == "val" and best["epoch"] == 0
    assert best["mean_iou"] == pytest.approx(scores[0], abs=1e-9)
    marked = [int(e) - 1 for e in re.findall(r"^epoch (\d+)/3 .*\(best\)$", out, re.M)]
    assert marked == [0]  # no later epoch claimed to be the best
    # best.pth scores the best of them, is the first epoch's snapshot tensor for tensor, and not the last.
    best_score = _evaluate(relabelled, snap / "best.pth", channels_last, tmp_path / "best.json")
    assert best_score == pytest.approx(scores[0], abs=1e-9)
    _assert_equal_tensors(_weights(snap / "best.pth"), _weights(snap / "DFPnet_epoch_0.pth"))
    weights_last, weights_best = _weights(snap / "last.pth"), _weights(snap / "best.pth")
    assert any(not torch.equal(weights_last[k], weights_best[k]) for k in weights_last)
    _drop_checkpoints(tmp_path)


# ------------------------------------------------------------------------------------------
# 3. Resuming with another batch size, number of epochs or process count
# ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_resume_with_another_batch_size_starts_the_epoch_over(data_dir, interrupted, tmp_path):
    saved = read_checkpoint(interrupted)
    assert saved["iteration"] == 3 and saved["epoch"] == 1 and saved["schedule"]["iters_per_epoch"] == 2
    snap = tmp_path / "snap"
    # Batch 2: 4 iterations per epoch, 12 in all; one step after the resume.
    code, out, err = _train(
        data_dir,
        snap,
        "--workers",
        "0",
        "--resume",
        interrupted,
        "--max-iters",
        "5",
        shape=("--batch-size", "2", "--epochs", "3"),
    )
    assert code == 0, err[-3000:]
    warned = [w for w in _warnings(err) if "iterations per epoch" in w]
    assert len(warned) == 1, err[-3000:]
    assert str(interrupted) in warned[0] and "saved with 2 iterations per epoch" in warned[0]
    assert "this run has 4" in warned[0] and "epoch 1 starts over" in warned[0]
    # Epoch 1 from its first batch: iteration 1 x 4.
    assert f"starting at epoch 1, iteration 4 (lr {_poly(LR, 4, 12):.3e})" in out, out[-3000:]
    state = read_checkpoint(snap / "last.pth")
    assert state["iteration"] == 5 and state["epoch"] == 1
    assert state["schedule"]["iters_per_epoch"] == 4 and state["schedule"]["total_iters"] == 12
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(_poly(LR, 4, 12), rel=1e-12)
    _drop_checkpoints(tmp_path)


@pytest.mark.slow
def test_resume_with_more_epochs_stretches_the_lr_schedule(data_dir, interrupted, tmp_path):
    snap = tmp_path / "snap"
    # 4 epochs instead of 3: 8 iterations in all instead of 6; one step after the resume.
    code, out, err = _train(
        data_dir,
        snap,
        "--workers",
        "0",
        "--resume",
        interrupted,
        "--max-iters",
        "4",
        shape=("--batch-size", "4", "--epochs", "4"),
    )
    assert code == 0, err[-3000:]
    warned = _warnings(err)
    assert len(warned) == 1, err[-3000:]
    assert "6 iterations in all" in warned[0] and "this one has 8" in warned[0]
    assert "LR schedule is stretched" in warned[0] and "starts over" not in warned[0]
    expected = _poly(LR, 3, 8)  # the next step (iteration 3) on the new total, not _poly(LR, 3, 6)
    assert f"starting at epoch 1, iteration 3 (lr {expected:.3e})" in out, out[-3000:]
    state = read_checkpoint(snap / "last.pth")
    assert state["iteration"] == 4 and state["schedule"]["total_iters"] == 8
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(expected, rel=1e-12)
    assert expected != pytest.approx(_poly(LR, 3, 6), rel=1e-3)
    _drop_checkpoints(tmp_path)


@pytest.mark.slow
def test_resume_with_another_process_count_warns_about_the_random_states(data_dir, interrupted, tmp_path):
    state = read_checkpoint(interrupted)
    assert len(state["rng"]) == 1
    state["rng"] = [state["rng"][0], state["rng"][0]]  # as if saved by 2 processes
    state["world_size"] = 2
    two = tmp_path / "two-processes.pth"
    save_atomic(state, two)
    del state
    snap = tmp_path / "snap"
    code, out, err = _train(data_dir, snap, "--workers", "0", "--resume", two, "--max-iters", "3")
    assert code == 0, err[-3000:]
    warned = _warnings(err)
    assert len(warned) == 1, err[-3000:]
    assert str(two) in warned[0] and "random states of 2 process(es), this run has 1" in warned[0]
    assert "starting at epoch 1, iteration 3 " in out, out[-3000:]
    resumed = read_checkpoint(snap / "last.pth")
    assert resumed["iteration"] == 3 and resumed["world_size"] == len(resumed["rng"]) == 1
    _assert_equal_tensors(_weights(snap / "last.pth"), _weights(interrupted))
    _drop_checkpoints(tmp_path)


# ------------------------------------------------------------------------------------------
# 4. --restore-from: fine-tuning from a DFPnet checkpoint, ImageNet backbone
# ------------------------------------------------------------------------------------------

# At this learning rate one step moves no weight by 1e-6: last.pth holds the initial weights (the
# parameters; BatchNorm's running statistics move with any training step).
TINY_LR = 1e-12
INIT_RUN = ("--workers", "0", "--max-iters", "1")  # one step at TINY_LR


def _dfpnet(seed: int):
    from networks.dfpnet import DFPNet

    torch.manual_seed(seed)
    return DFPNet(num_classes=8)


def _setup_line(out: str) -> str:
    lines = [line for line in out.splitlines() if line.startswith("DFPnet: ")]
    assert len(lines) == 1, out[-3000:]
    return lines[0]


@pytest.mark.slow
def test_restore_from_a_dfpnet_checkpoint_starts_from_all_its_weights(data_dir, tmp_path):
    from utils.checkpoint import with_label_set
    from utils.labels import DOG

    donor = _dfpnet(99)  # PyTorch's default initialisation, another seed than the run's
    checkpoint = tmp_path / "dfpnet-dog.pth"
    save_atomic(with_label_set(donor.state_dict(), DOG), checkpoint)
    snap = tmp_path / "snap"
    code, out, err = _train(data_dir, snap, *INIT_RUN, restore_from=checkpoint, lr=TINY_LR)
    assert code == 0, err[-3000:]
    assert re.fullmatch(
        rf"DFPnet: [0-9.]+ M parameters, all weights from {re.escape(str(checkpoint))}", _setup_line(out)
    )
    trained = _weights(snap / "last.pth")
    params = dict(donor.named_parameters())
    assert len(params) > 300
    for name, param in params.items():
        assert _max_diff(trained[name], param.detach()) <= 1e-6, name


@pytest.mark.slow
def test_restore_from_imagenet_initialises_the_backbone_only(data_dir, tmp_path):
    donor = _dfpnet(99)
    prefixes = donor.backbone_prefixes()
    generator = torch.Generator().manual_seed(3)

    def uniform(t: torch.Tensor, low: float, high: float) -> torch.Tensor:
        return torch.rand(t.shape, generator=generator) * (high - low) + low

    # A deep-stem ImageNet ResNet-101 file: the backbone's names and shapes, random values (BatchNorm's
    # too, which a fresh network has at 1 and 0), and an ImageNet classifier, which must be skipped.
    fake: dict[str, torch.Tensor] = {}
    for key, value in donor.state_dict().items():
        if not key.startswith(prefixes) or key.endswith("num_batches_tracked"):
            continue
        if value.dim() == 4:
            fake[key] = value.clone()
        elif key.endswith(("weight", "running_var")):
            fake[key] = uniform(value, 0.5, 1.5)
        else:
            fake[key] = uniform(value, -0.1, 0.1)
    backbone_tensors = len(fake)
    fake["fc.weight"] = uniform(torch.empty(1000, 2048), -0.01, 0.01)
    fake["fc.bias"] = torch.zeros(1000)
    imagenet = tmp_path / "resnet101-imagenet.pth"
    torch.save(fake, imagenet)

    snap = tmp_path / "snap"
    code, out, err = _train(data_dir, snap, *INIT_RUN, restore_from=imagenet, lr=TINY_LR)
    assert code == 0, err[-3000:]
    assert _setup_line(out).endswith(
        f", ImageNet backbone from {imagenet} ({backbone_tensors} of {backbone_tensors} tensors)"
    ), out[-3000:]

    trained = _weights(snap / "last.pth")
    # The rest keeps PyTorch's default initialisation under --random-seed (the authors' recipe).
    reference = dict(_dfpnet(SEED).named_parameters())
    backbone = [name for name in reference if name.startswith(prefixes)]
    decoder = [name for name in reference if not name.startswith(prefixes)]
    assert len(backbone) > 200 and len(decoder) > 50
    for name in backbone:
        assert _max_diff(trained[name], fake[name]) <= 1e-6, name
        assert not torch.equal(fake[name], reference[name].detach()), name  # the file did change it
    for name in decoder:
        assert _max_diff(trained[name], reference[name].detach()) <= 1e-6, name


# ------------------------------------------------------------------------------------------
# 5. The recipe's defaults are the documented ones
# ------------------------------------------------------------------------------------------


def _doc_section(number: str) -> str:
    with open(os.path.join(ROOT, "docs", "reference.md"), encoding="utf-8") as f:
        text = f.read()
    match = re.search(rf"^#+ {re.escape(number)} .*?(?=^#+ \d)", text, re.M | re.S)
    assert match, f"docs/reference.md has no section {number}"
    return " ".join(match.group(0).split())  # one line: the values may be wrapped anywhere


NUMBER = r"([0-9]+(?:\.[0-9]+)?(?:e-?[0-9]+)?)"


def _find(pattern: str, text: str) -> tuple[str, ...]:
    match = re.search(pattern, text)
    assert match, f"docs/reference.md section 6 no longer says {pattern!r}"
    return match.groups()


def test_recipe_defaults_are_those_of_docs_reference_section_6():
    from training.config import setup
    from training.flags import get_args_parser
    from training.schedule import evaluation_due, snapshot_due
    from utils import recipe
    from utils.labels import DOG

    doc = _doc_section("6.")
    height, width = map(int, _find(r"(\d+)x(\d+) crops", doc))
    (batch,) = map(int, _find(r"batch (\d+)", doc))
    (classes,) = map(int, _find(r"(\d+) classes", doc))
    (epochs,) = map(int, _find(r"(\d+) epochs", doc))
    (data_dir,) = _find(r"data in `([^`]+)`", doc)
    (momentum,) = map(float, _find(rf"momentum {NUMBER}", doc))
    (weight_decay,) = map(float, _find(rf"weight decay {NUMBER}", doc))
    (base_lr,) = map(float, _find(rf"base learning rate {NUMBER}", doc))
    (imagenet,) = _find(r"`([^`]*resnet101-imagenet\.pth)`", doc)
    (power,) = map(float, _find(rf"\(1 - it / total\) \*\* {NUMBER}", doc))
    (snapshot_every,) = map(int, _find(r"when `e % (\d+) == 0`", doc))
    (released,) = map(int, _find(r"`DFPnet_epoch_(\d+)\.pth`", doc[doc.index("released file") :]))
    log_every, image_every = map(int, _find(r"every (\d+) iterations, image grids .*? every (\d+);", doc))
    eval_every, eval_late, late_from = map(
        int, _find(r"every (\d+) epochs \(every (\d+) past epoch (\d+)\)", doc)
    )
    assert (height, width, batch, classes, epochs) == (384, 384, 12, 8, 500)  # the documented recipe itself
    assert (momentum, weight_decay, base_lr, power, snapshot_every) == (0.9, 5e-4, 1e-3, 0.9, 99)

    args = get_args_parser().parse_args([])
    assert args.input_size == (height, width) == recipe.INPUT_SIZE
    assert args.batch_size == batch == recipe.BATCH_SIZE
    assert args.learning_rate == base_lr == recipe.LEARNING_RATE
    assert args.momentum == momentum == recipe.MOMENTUM
    assert args.weight_decay == weight_decay == recipe.WEIGHT_DECAY
    assert args.power == power == recipe.POWER
    assert args.snapshot_every == snapshot_every == recipe.SNAPSHOT_EVERY
    assert args.log_every == log_every == recipe.LOG_EVERY
    assert args.image_every == image_every == recipe.IMAGE_EVERY
    assert os.path.normpath(args.data_dir) == os.path.normpath(data_dir)
    assert os.path.normpath(args.restore_from) == os.path.normpath(imagenet)
    assert args.labels is None and args.num_classes is None and DOG.num_classes == classes  # the Dog set
    assert setup(get_args_parser().parse_args(["--device", "cpu"])).epochs == epochs == recipe.EPOCHS
    # The cadences those numbers give over the authors' 500 epochs (e counted from 0).
    assert [e for e in range(epochs) if snapshot_due(e, epochs, args.snapshot_every)] == [
        e for e in range(epochs) if e % snapshot_every == 0
    ] + [epochs - 1]
    assert released == max(e for e in range(epochs) if e % snapshot_every == 0)
    assert os.path.basename(recipe.EVAL_CHECKPOINT) == f"DFPnet_epoch_{released}.pth"
    long_run = late_from + 100
    assert [e for e in range(long_run) if evaluation_due(e, long_run, args.eval_every)] == (
        [e for e in range(late_from) if (e + 1) % eval_every == 0]
        + [e for e in range(late_from, long_run) if (e + 1) % eval_late == 0 or e == long_run - 1]
    )


# ------------------------------------------------------------------------------------------
# 6. run.sh passes the settings of its environment to train.py
# ------------------------------------------------------------------------------------------

RUN_SETTINGS = (
    "DATA_DIR",
    "INPUT_SIZE",
    "BATCH_SIZE",
    "LEARNING_RATE",
    "WEIGHT_DECAY",
    "EPOCHS",
    "LABELS",
    "NUM_CLASSES",
    "RESTORE_FROM",
    "SNAPSHOT_DIR",
    "GPU",
    "NPROC",
    "EXTRA_ARGS",
    "DEMO_MINUTES",
)


@pytest.fixture
def fake_checkout(tmp_path):
    """run.sh, utils/env.sh and utils/recipe.py, copied as they are, beside a .venv whose up-to-date stamp
    makes env.sh export its bin/python: a stand-in that records its arguments (one JSON list a call) and
    exits 0, except that it answers `-m utils.recipe NAME` (run.sh's look-ups) with the real interpreter."""
    for name in ("run.sh", *REQUIREMENT_FILES, "utils/env.sh", "utils/recipe.py"):
        os.makedirs(os.path.dirname(tmp_path / name), exist_ok=True)
        shutil.copy2(os.path.join(ROOT, name), tmp_path / name)
    venv_bin = tmp_path / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    # env.sh's stamp: sha256 of requirements.txt + utils/env.sh, 16 hex digits.
    with (
        open(os.path.join(ROOT, "requirements.txt"), "rb") as a,
        open(os.path.join(ROOT, "utils", "env.sh"), "rb") as b,
    ):
        stamp = hashlib.sha256(a.read() + b.read()).hexdigest()[:16]
    (tmp_path / ".venv" / ".dfpnet-stamp").write_text(stamp + "\n")
    python = venv_bin / "python"
    python.write_text(
        f"#!{sys.executable}\nimport json, os, sys\n"
        f"with open(os.environ['FAKE_PYTHON_LOG'], 'a') as f:\n"
        f"    f.write(json.dumps(sys.argv[1:]) + '\\n')\n"
        f"if sys.argv[1:3] == ['-m', 'utils.recipe']:\n"
        f"    os.execv({sys.executable!r}, [{sys.executable!r}, *sys.argv[1:]])\n"
    )
    python.chmod(python.stat().st_mode | stat.S_IXUSR)
    (tmp_path / "data").mkdir()
    return tmp_path


def _run_sh(checkout, **settings: str) -> list[list[str]]:
    """run.sh of the fake checkout with these settings (and no others); the calls its python got."""
    return _run_sh_printing(checkout, **settings)[0]


def _run_sh_printing(checkout, **settings: str) -> tuple[list[list[str]], str]:
    """:func:`_run_sh`, and what run.sh printed."""
    log = checkout / "calls.jsonl"
    env = {k: v for k, v in os.environ.items() if k not in RUN_SETTINGS}
    env.update(settings, FAKE_PYTHON_LOG=str(log))
    result = subprocess.run(
        ["bash", str(checkout / "run.sh")], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "[setup]" not in result.stderr  # the stamp was current: no venv set up, nothing downloaded
    with open(log) as f:
        return [json.loads(line) for line in f], result.stdout


REQUIREMENT_FILES = ("requirements.txt", "requirements-deploy.txt", "requirements-dev.txt")


def test_env_sh_installs_the_sets_a_command_names_once(fake_checkout):
    """run.sh needs the runtime only (its stamp is current: nothing installed); tests/run.sh names
    requirements-dev.txt, installed once and then found by its stamp; a changed requirement file
    installs it again."""
    log = fake_checkout / "calls.jsonl"
    env = dict(os.environ, FAKE_PYTHON_LOG=str(log))

    def source(sets: str) -> tuple[list[list[str]], str]:
        log.unlink(missing_ok=True)
        script = f'DFPNET_REQUIREMENTS="{sets}" source utils/env.sh && echo "$PYTHON"'
        done = subprocess.run(
            ["bash", "-c", script], cwd=fake_checkout, env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
        return calls, done.stderr

    calls, err = source("")
    assert calls == [] and err == ""  # the runtime's stamp is current
    dev = str(fake_checkout / "requirements-dev.txt")
    calls, err = source("requirements-dev.txt")
    assert calls == [["-m", "pip", "install", "-q", "-r", dev]], calls
    assert f"[setup] installing requirements-dev.txt into {fake_checkout / '.venv'}" in err
    assert source("requirements-dev.txt")[0] == []  # installed: its stamp now says so
    with open(fake_checkout / "requirements-deploy.txt", "a") as f:
        f.write("# a changed pin\n")
    assert source("requirements-dev.txt")[0] == [["-m", "pip", "install", "-q", "-r", dev]]
    # The sets are by purpose: dev takes the other two, and no package is pinned in two files.
    with open(os.path.join(ROOT, "requirements-dev.txt")) as f:
        includes = [line.split()[1] for line in f if line.startswith("-r ")]
    assert includes == ["requirements.txt", "requirements-deploy.txt"]
    packages = {}
    for name in REQUIREMENT_FILES:
        with open(os.path.join(ROOT, name)) as f:
            packages[name] = [re.split(r"[<>=~ ]", line)[0] for line in f if line[:1].isalpha()]
    every = sum(packages.values(), [])
    assert len(every) == len(set(every)), every
    assert {"torch", "opencv-python-headless", "tensorboard"} <= set(packages["requirements.txt"])
    assert {"onnx", "onnxruntime", "openvino"} <= set(packages["requirements-deploy.txt"])
    assert {"pytest", "ruff", "pycocotools"} <= set(packages["requirements-dev.txt"])


def test_run_sh_passes_each_setting_as_its_flag(fake_checkout):
    from training.flags import get_args_parser

    settings = dict(
        DATA_DIR="./data",
        INPUT_SIZE="256,320",
        BATCH_SIZE="8",
        LEARNING_RATE="2e-3",
        WEIGHT_DECAY="1e-4",
        EPOCHS="40",
        LABELS="lip",
        NUM_CLASSES="20",
        RESTORE_FROM="/w/a b.pth",
        SNAPSHOT_DIR="/s/out",
        GPU="0,1",
        EXTRA_ARGS="--amp bf16  --workers 8",
    )
    calls = _run_sh(fake_checkout, **settings)
    flags = [
        "--data-dir",
        "./data",
        "--input-size",
        "256,320",
        "--batch-size",
        "8",
        "--learning-rate",
        "2e-3",
        "--weight-decay",
        "1e-4",
        "--epochs",
        "40",
        "--labels",
        "lip",
        "--num-classes",
        "20",
        "--restore-from",
        "/w/a b.pth",
        "--snapshot-dir",
        "/s/out",
        "--gpu",
        "0,1",
        "--amp",
        "bf16",
        "--workers",
        "8",
    ]
    assert calls == [["train.py", *flags]]
    args = get_args_parser().parse_args(calls[0][1:])  # flags train.py knows, with the values given
    assert (args.input_size, args.batch_size, args.learning_rate, args.weight_decay, args.epochs) == (
        (256, 320),
        8,
        2e-3,
        1e-4,
        40,
    )
    assert (
        args.labels,
        args.num_classes,
        args.restore_from,
        args.snapshot_dir,
        args.gpu,
        args.amp,
        args.workers,
    ) == ("lip", 20, "/w/a b.pth", "/s/out", "0,1", "bf16", 8)

    # Unset settings pass nothing: train.py's defaults, the recipe's.
    (fake_checkout / "calls.jsonl").unlink()
    assert _run_sh(fake_checkout, DATA_DIR="./data") == [["train.py", "--data-dir", "./data"]]

    # NPROC > 1: torchrun on this machine, the same flags after train.py.
    (fake_checkout / "calls.jsonl").unlink()
    assert _run_sh(fake_checkout, DATA_DIR="./data", BATCH_SIZE="6", NPROC="3") == [
        [
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=3",
            "train.py",
            "--data-dir",
            "./data",
            "--batch-size",
            "6",
        ]
    ]


def test_run_sh_without_a_dataset_trains_the_demo(fake_checkout):
    from dataset.synthetic import get_args_parser as synthetic_parser
    from training.flags import check_args, get_args_parser
    from utils import recipe

    calls = _run_sh(fake_checkout, DATA_DIR="./no-such-dataset", DEMO_MINUTES="2", EXTRA_ARGS="--workers 1")
    calls = [call for call in calls if call[:2] != ["-m", "utils.recipe"]]  # its look-ups
    assert [call[:2] for call in calls] == [["-m", "dataset.synthetic"], ["train.py", "--data-dir"]]
    generated = synthetic_parser().parse_args(calls[0][2:])  # first a set where the demo reads it
    assert generated.out == recipe.DEMO_DATA_DIR and generated.train > 0 and generated.val > 0
    parser = get_args_parser()
    args = parser.parse_args(calls[1][1:])
    check_args(parser, args)
    assert args.data_dir == generated.out and args.restore_from == "none"
    assert args.time_budget == 2 and args.epochs is None  # DEMO_MINUTES
    assert args.snapshot_dir == "./snapshots/demo" and args.workers == 1  # EXTRA_ARGS comes last and wins

    # The README's example settings are not the demo's: it says so rather than drop them silently.
    calls, printed = _run_sh_printing(fake_checkout, DATA_DIR="./no-such-dataset", BATCH_SIZE="8", NPROC="4")
    assert "and ignores BATCH_SIZE=8 NPROC=4; EXTRA_ARGS and DEMO_MINUTES still apply." in printed, printed
    train = [call for call in calls if call[0] == "train.py"][-1]  # the log keeps the earlier run's calls
    assert train[train.index("--batch-size") + 1] == "4" and "torch.distributed.run" not in calls[-1]
    _, printed = _run_sh_printing(fake_checkout, DATA_DIR="./no-such-dataset", NPROC="1")
    assert "ignores" not in printed


# ------------------------------------------------------------------------------------------
# 7. Input normalisation, from the ImageNet constants written out here
# ------------------------------------------------------------------------------------------

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def test_normalisation_applies_the_imagenet_constants_to_b_g_r_as_they_are():
    from dataset.datasets import normalize_image
    from utils.transforms import normalize_array

    doc = _doc_section("3.5")
    numbers = [tuple(map(float, group.split(", "))) for group in re.findall(r"\(([0-9., ]+)\)", doc)]
    assert numbers[:2] == [IMAGENET_MEAN, IMAGENET_STD]
    assert "BGR" in doc

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(5, 7, 3), dtype=np.uint8)  # H x W x (B, G, R), as cv2 reads
    image[0, 0] = (255, 0, 0)  # pure blue
    image[0, 1] = (0, 0, 255)  # pure red
    want = np.empty((3, 5, 7))
    for c in range(3):  # channel c of the array gets mean[c] and std[c]: no swap to RGB
        want[c] = (image[:, :, c].astype(np.float64) / 255.0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]
    array = normalize_array(image)
    tensor = normalize_image(image)
    assert array.shape == (3, 5, 7) and array.dtype == np.float32
    assert tuple(tensor.shape) == (3, 5, 7) and tensor.dtype == torch.float32
    np.testing.assert_allclose(array, want, rtol=0, atol=1e-6)
    np.testing.assert_allclose(tensor.numpy(), want, rtol=0, atol=1e-6)
    assert array[0, 0, 0] == pytest.approx((1.0 - 0.485) / 0.229, abs=1e-6)  # blue in channel 0
    assert array[2, 0, 1] == pytest.approx((1.0 - 0.406) / 0.225, abs=1e-6)  # red in channel 2
