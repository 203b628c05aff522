"""Faults end a run loudly and at once: one line naming the file and the cause, a documented exit
status, the process gone within seconds of the fault (DataLoader workers included), the previous
version of every file intact, no temporary file.

Disk faults are real: a small tmpfs (ENOSPC) or a read-only bind mount (EROFS) in a user and mount
namespace of the test's own (``unshare -Urm``), RLIMIT_FSIZE with SIGXFSZ ignored (EFBIG), a
folder without write permission (EACCES; as root, from a user namespace that holds no capability
over the folder). A test skips, saying why, where this machine cannot make the fault. The faults
that stay injected (tests/faults/sitecustomize.py) are those a test cannot cause from outside at a
chosen moment: a DataLoader worker killed, a picture gone bad between two reads, a rank that dies,
an evaluation that raises; each says why it is realistic.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path

import pytest
import torch

from tests.scripts import Timed, allow_writes, refusing
from utils.checkpoint import read_checkpoint

ROOT = Path(__file__).resolve().parents[1]
FAULTS = ROOT / "tests" / "faults"
EXIT_WITHIN_S = 15.0  # from the fault to the process gone, whatever start-up and training took


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    from dataset.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("faults") / "data"
    generate_dataset(str(root), 12, 4, 0, seed=5, min_size=40, max_size=56)
    return str(root)


# A short run: 32x32 crops, batch 2, 3 epochs from scratch, float32, last.pth at each epoch end.
RUN = [
    "--input-size",
    "32,32",
    "--batch-size",
    "2",
    "--epochs",
    "3",
    "--restore-from",
    "none",
    "--amp",
    "off",
]


def train_env(fault: str = "", stamp: Path | None = None, **env: str) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=f"{FAULTS}{os.pathsep}{ROOT}", **env)
    env.pop("DFPNET_DEBUG", None)
    if fault:
        env["DFPNET_TEST_FAULT"] = fault
    if stamp is not None:
        env["DFPNET_TEST_FAULT_STAMP"] = str(stamp)
    return env


def train_argv(data_dir: str, snapshots: Path, *extra: str, launcher: tuple[str, ...] = ()) -> list[str]:
    argv = [sys.executable, *launcher, str(ROOT / "train.py"), "--data-dir", data_dir]
    return argv + ["--snapshot-dir", str(snapshots), *RUN, "--save-every", "0", *extra]


def launch(data_dir: str, snapshots: Path, fault: str, *extra: str, launcher: tuple[str, ...] = (), **env):
    """train.py (under ``launcher``, e.g. torchrun) with ``fault`` injected: the finished process and
    the seconds from the fault (as tests/faults/sitecustomize.py stamped it) to the process's end."""
    stamp = snapshots.parent / f"{snapshots.name}.fault-stamp"
    run = Timed(train_argv(data_dir, snapshots, *extra, launcher=launcher), train_env(fault, stamp, **env))
    assert stamp.exists(), f"the fault {fault} never fired:\n{run.stderr[-3000:]}"
    return run, run.ended - float(stamp.read_text())


def train(data_dir: str, snapshots: Path, fault: str, *extra: str) -> tuple[int, str, float]:
    """train.py with ``fault`` injected: exit status, stderr, seconds from the fault to the end."""
    run, seconds = launch(data_dir, snapshots, fault, *extra)
    return run.returncode, run.stderr, seconds


# torch's own log records ("W1207 19:17:38.838000 14196 .../profiler.py:858] ..."): a worker killed while
# torch lazily imported its profiler made torch log that import's traceback, once in two suite runs.
_TORCH_LOG = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ \S+:\d+\] ")


def error_line(stderr: str) -> str:
    """The run's last line, which must be its one error line (no traceback of ours anywhere)."""
    ours = "\n".join(line for line in stderr.splitlines() if not _TORCH_LOG.match(line))
    assert "Traceback" not in ours, ours[-3000:]
    line = stderr.strip().splitlines()[-1]
    assert line.startswith("train.py: error: "), stderr[-3000:]
    return line


def no_temporary_files(folder: Path) -> None:
    assert [p.name for p in folder.iterdir() if p.name.endswith(".tmp")] == []


@pytest.mark.slow
def test_a_full_disk_stops_training_in_one_line_and_keeps_the_previous_last_pth(data_dir, tmp_path):
    """The snapshot folder is a 900 MiB tmpfs: epoch 0 writes DFPnet_epoch_0.pth (~234 MiB) and
    last.pth (~467 MiB, weights and momentum); epoch 1's last.pth fills the disk part-way. The line
    names the file, the errno and that the previous version is kept; that version still loads."""
    snapshots, out = tmp_path / "snap", tmp_path / "out"
    snapshots.mkdir()
    out.mkdir()
    prefix, _ = refusing("ENOSPC", snapshots, size="900m")
    # After train.py, still in the namespace (the tmpfs goes with it): when it ended, what it left.
    script = (
        'mount -t tmpfs -o size="$1" tmpfs "$0" && shift && "$@"; rc=$?; date +%s.%N > "$OUT/ended"; '
        'cp "$SNAP/last.pth" "$OUT/"; ls -A "$SNAP" > "$OUT/listing"; exit $rc'
    )
    prefix[prefix.index("-c") + 1] = script
    env = train_env(SNAP=str(snapshots), OUT=str(out))
    run = Timed([*prefix, *train_argv(data_dir, snapshots, "--val-datasets")], env)
    line = error_line(run.stderr)
    assert run.returncode == 1, run.stderr[-3000:]
    assert line == (
        f"train.py: error: {snapshots / 'last.pth'}: could not be written: No space left on device (ENOSPC); "
        f"its previous version is kept"
    )
    fault = next(t for t, text in run.lines if "could not be written" in text)
    assert float((out / "ended").read_text()) - fault < EXIT_WITHIN_S
    assert read_checkpoint(out / "last.pth")["iteration"] == 6  # the end of epoch 0, whole
    left = (out / "listing").read_text().split()
    assert "DFPnet_epoch_0.pth" in left and not [n for n in left if n.endswith(".tmp")], left


@pytest.mark.slow
def test_a_file_size_limit_stops_training_in_one_line_and_leaves_no_partial_file(data_dir, tmp_path):
    """RLIMIT_FSIZE of 300 MiB: the epoch snapshot (~234 MiB) fits, the first last.pth (~467 MiB)
    does not (EFBIG); nothing of it is left. Works where namespaces are not allowed."""
    snapshots = tmp_path / "snap"
    _, limit = refusing("EFBIG", snapshots, fsize=300 * 2**20)
    run = Timed(train_argv(data_dir, snapshots, "--val-datasets"), train_env(), preexec_fn=limit)
    line = error_line(run.stderr)
    assert run.returncode == 1, run.stderr[-3000:]
    assert line == (
        f"train.py: error: {snapshots / 'last.pth'}: could not be written: File too large (EFBIG); "
        f"nothing was written"
    )
    assert run.seconds_after("could not be written") < EXIT_WITHIN_S
    assert (snapshots / "DFPnet_epoch_0.pth").is_file() and not (snapshots / "last.pth").exists()
    no_temporary_files(snapshots)


# ------------------------------------------------------------------------------------------
# Every other writer, in one process per kind of refusal (tests/faults/writers.py)
# ------------------------------------------------------------------------------------------

ERRNO_TEXT = {
    "ENOSPC": "No space left on device (ENOSPC)",
    "EFBIG": "File too large (EFBIG)",
    "EROFS": "Read-only file system (EROFS)",
    "EACCES": "Permission denied (EACCES)",
    "EDQUOT": "Disk quota exceeded (EDQUOT)",
}
# writer -> (the file it writes in its folder, the exception it raises)
FILE_WRITERS = {
    "checkpoint": ("best.pth", "SaveError"),
    "metrics_json": ("metrics.json", "WriteError"),
    "picture": ("a_label.png", "WriteError"),
    "figure": ("confusion_matrix.png", "WriteError"),
    "onnx_model": ("model.onnx", "WriteError"),
    "tune_cache": ("tune.json", "WriteError"),
    "annotations": ("labelstudio.json", "WriteError"),
}


@pytest.fixture(scope="module")
def writer_source(tmp_path_factory) -> Path:
    """Pictures no PNG can shrink (256x256 noise): a Dog-layout folder for dataset.browse and a
    LabelMe export for dataset.convert, whose outputs are then hundreds of KiB each."""
    import cv2
    import numpy as np

    root = tmp_path_factory.mktemp("writer_source")
    noise = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    label = np.zeros((256, 256), np.uint8)
    label[64:192, 64:192] = 1
    data, labelme = root / "data", root / "labelme"
    for folder in (data / "train_images", data / "train_segmentations", labelme):
        folder.mkdir(parents=True)
    (data / "train_id.txt").write_text("a\n")
    cv2.imwrite(str(data / "train_images" / "a.png"), noise)
    cv2.imwrite(str(data / "train_segmentations" / "a.png"), label)
    cv2.imwrite(str(labelme / "a.png"), noise)
    shape = {"label": "head", "points": [[64, 64], [192, 64], [192, 192], [64, 192]], "shape_type": "polygon"}
    (labelme / "a.json").write_text(json.dumps({"shapes": [shape], "imagePath": "a.png"}))
    return root


@pytest.mark.parametrize("kind", ["ENOSPC", "EFBIG", "EROFS", "EACCES", "EDQUOT"])
def test_every_writer_names_the_file_and_the_errno_and_keeps_the_previous_version(
    kind, writer_source, tmp_path
):
    folder = tmp_path / "out"
    folder.mkdir()
    read_only = kind in ("EROFS", "EACCES")
    if read_only:  # nothing can be written there: the previous versions are the test's
        for name, (file, _) in FILE_WRITERS.items():
            (folder / name).mkdir()
            (folder / name / file).write_bytes(b"previous version")
        (folder / "annotations" / "labels.json").write_bytes(b"previous version")
    prefix, preexec = refusing(kind, folder)
    try:
        run = Timed(
            [*prefix, sys.executable, str(FAULTS / "writers.py"), str(folder), kind, str(writer_source)],
            dict(os.environ, PYTHONPATH=str(ROOT)),
            preexec_fn=preexec,
        )
    finally:
        allow_writes(folder)
    assert run.returncode == 0, run.stderr[-3000:]
    results = {r["writer"]: r for r in map(json.loads, run.out)}
    text = ERRNO_TEXT[kind]
    for name, (file, error) in FILE_WRITERS.items():
        got = results[name]
        path = folder / name / file
        if name == "annotations":  # labels.json first (small: it fails only where nothing can be written)
            path = folder / name / "labels.json" if read_only else path
            file = ["labels.json", "labelstudio.json"]
        assert (
            got["error"] == f"{error}: {path}: could not be written: {text}; its previous version is kept"
        ), got
        files = file if isinstance(file, list) else [file]
        assert got["intact"] and got["files"] == files, got  # the previous version, nothing else

    if kind in ("ENOSPC", "EFBIG"):  # the curves end in one line; the run would go on
        (warning,) = results["tensorboard"]["warnings"]
        assert re.fullmatch(
            rf"{re.escape(str(folder / 'tensorboard'))}/events\.out\.tfevents\.\S+: could not be written: "
            rf"{re.escape(text)}; the TensorBoard curves stop here after step \d+, training goes on",
            warning,
        ), warning

    browse, convert = results["browse"], results["convert"]
    assert browse["exit"] == 1 and convert["exit"] == 1, (browse, convert)
    assert convert["files"] == [], convert  # no temporary folder, no half-converted one
    if kind in ("ENOSPC", "EFBIG"):
        assert browse["error"] == (
            f"python -m dataset.browse: error: {folder / 'browse' / 'a.png'}: could not be written: {text}; "
            f"nothing was written"
        )
        assert browse["files"] == [], browse
        assert re.fullmatch(
            rf"python -m dataset\.convert: error: {re.escape(str(folder / 'convert' / 'out'))}/\S+: "
            rf"could not be written: {re.escape(text)}; nothing was written",
            convert["error"],
        ), convert
    else:  # checked before any work
        assert browse["error"] == (
            f"python -m dataset.browse: error: {folder / 'browse'}: cannot create the output folder: {text}"
        )
        assert convert["error"] == (
            f"python -m dataset.convert: error: {folder / 'convert' / 'out'}: could not be written: {text}; "
            f"nothing was written"
        )


@pytest.mark.slow
def test_a_picture_gone_bad_mid_run_saves_the_last_step_and_names_the_file(data_dir, tmp_path):
    """Each worker's 13th picture read fails as a truncated file would (after the start-up check).
    Injected because the test cannot truncate a file between two given reads of a worker; a sync
    tool or a second process rewriting the data folder does exactly that."""
    snapshots = tmp_path / "snap"
    code, err, seconds = train(data_dir, snapshots, "image:13", "--val-datasets")
    line = error_line(err)
    assert code == 1 and seconds < EXIT_WITHIN_S, (code, seconds)
    assert "cannot decode" in line and data_dir in line, line
    state = read_checkpoint(snapshots / "last.pth")
    assert state["iteration"] >= 6 and f"holds iteration {state['iteration']}" in line, line
    no_temporary_files(snapshots)


@pytest.mark.slow
@pytest.mark.parametrize(
    "fault,said", [("kill_worker:4", "DataLoader worker"), ("eval", "injected evaluation failure")]
)
def test_a_dead_worker_or_a_failed_evaluation_ends_the_run_at_once(data_dir, tmp_path, fault, said):
    """A worker SIGKILLs itself at its 4th sample: what the kernel's OOM killer does to the largest
    process, a worker, under memory pressure. The evaluation raises: what any bug or a picture gone
    bad in the evaluation split does; injected because no outside act makes it fail on cue."""
    snapshots = tmp_path / "snap"
    code, err, seconds = train(data_dir, snapshots, fault, "--eval-every", "1")
    line = error_line(err)
    assert code == 1 and seconds < EXIT_WITHIN_S, (code, seconds)
    assert said in line, line
    no_temporary_files(snapshots)


@pytest.mark.slow
def test_under_torchrun_a_failing_rank_ends_the_others(data_dir, tmp_path):
    """Rank 1 raises in its second step: both processes end with one error line each (rank 0's
    all-reduce sees its peer gone), torchrun exits non-zero, all within the bound. Injected: one
    rank of several failing alone is what a bad picture, a memory error or a bug on one machine
    does, and only code inside the rank can choose the step."""
    torchrun = ("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2")
    done, seconds = launch(
        data_dir,
        tmp_path / "snap",
        "rank:1:2",
        "--workers",
        "0",
        "--val-datasets",
        launcher=torchrun,
        OMP_NUM_THREADS="1",
    )
    ours = [line for line in (done.stdout + done.stderr).splitlines() if line.startswith("train.py: error: ")]
    assert done.returncode != 0 and seconds < EXIT_WITHIN_S, (done.returncode, seconds)
    assert len(ours) == 2 and any("injected failure on rank 1" in line for line in ours), ours


@pytest.mark.slow
def test_a_real_run_on_a_small_disk_warns_before_training(data_dir, tmp_path):
    """A 600 MiB tmpfs holds one last.pth (~467 MiB) but not the ~701 MiB the next saves need: the
    run warns at its start, and its one step is saved."""
    snapshots = tmp_path / "snap"
    snapshots.mkdir()
    prefix, _ = refusing("ENOSPC", snapshots, size="600m")
    run = Timed(
        [*prefix, *train_argv(data_dir, snapshots, "--val-datasets", "--max-iters", "1")], train_env()
    )
    assert run.returncode == 0, run.stderr[-3000:]
    warning = next((line for line in run.err if "MiB free, the next saves need about" in line), None)
    assert warning is not None and warning.startswith(f"train.py: warning: {snapshots}: "), run.stderr[-3000:]
    free, need = (int(x) for x in re.findall(r"(\d+) MiB", warning)[:2])
    assert free <= 600 < need, warning


def test_too_little_free_space_is_warned_before_training(tmp_path, monkeypatch):
    """The next saves need last.pth (weights + momentum) and one more copy of the weights beside it."""

    import training.snapshots as snapshots_module
    from training.snapshots import Snapshots
    from utils.labels import DOG

    model = torch.nn.Linear(1000, 1000)  # float32: 1000 x 1000 + 1000 values, all trainable
    need = 3 * (1000 * 1000 + 1000) * 4
    folder = Snapshots(str(tmp_path), DOG)
    usage = shutil.disk_usage(tmp_path)
    for free, warned in [(need, False), (need - 1, True)]:
        monkeypatch.setattr(
            snapshots_module.shutil, "disk_usage", lambda path, f=free: usage._replace(free=f)
        )
        warning = folder.space_warning(model)
        assert (warning is not None) == warned, (free, warning)
    assert warning == (
        f"{tmp_path}: {(need - 1) / 2**20:.0f} MiB free, the next saves need about "
        f"{need / 2**20:.0f} MiB (last.pth, then best.pth or an epoch snapshot): a full disk "
        f"would stop the run at its save"
    )
