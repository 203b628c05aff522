"""Faults end a training run loudly and at once: one line, a documented exit status, the process gone
within seconds (DataLoader workers included), the last good checkpoint intact, no temporary file.

Each fault is provoked in a real train.py process with the default two DataLoader workers, through
tests/faults/sitecustomize.py (see its docstring): before these fixes a failed save printed a
traceback and the process never exited, its workers ignoring the SIGTERM of the interpreter's exit.
"""

from __future__ import annotations

import errno
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from utils.checkpoint import read_checkpoint

ROOT = Path(__file__).resolve().parents[1]
FAULTS = ROOT / "tests" / "faults"
EXIT_WITHIN_S = 60.0  # generous for a run this short; a hang would never end


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


def launch(
    data_dir: str, snapshots: Path, fault: str, *extra: str, launcher: tuple[str, ...] = (), **env: str
):
    """train.py (under ``launcher``, e.g. torchrun) with ``fault`` injected: the finished process and
    the seconds until it was gone."""
    argv = [sys.executable, *launcher, str(ROOT / "train.py"), "--data-dir", data_dir]
    argv += ["--snapshot-dir", str(snapshots), *RUN, "--save-every", "0", *extra]
    env = dict(os.environ, DFPNET_TEST_FAULT=fault, PYTHONPATH=f"{FAULTS}{os.pathsep}{ROOT}", **env)
    env.pop("DFPNET_DEBUG", None)
    start = time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
    return done, time.monotonic() - start


def train(data_dir: str, snapshots: Path, fault: str, *extra: str) -> tuple[int, str, float]:
    """train.py with ``fault`` injected: exit status, stderr, seconds until the process was gone."""
    done, seconds = launch(data_dir, snapshots, fault, *extra)
    return done.returncode, done.stderr, seconds


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
def test_a_failed_save_is_one_line_and_keeps_the_previous_checkpoint(data_dir, tmp_path):
    """The third save (last.pth after epoch 2; no evaluation splits) hits a full disk."""
    snapshots = tmp_path / "snap"
    code, err, seconds = train(data_dir, snapshots, "save:3:ENOSPC", "--val-datasets")
    line = error_line(err)
    assert code == 1 and seconds < EXIT_WITHIN_S, (code, seconds)
    last = snapshots / "last.pth"
    assert (
        f"{last}: could not be written: " in line
        and "(ENOSPC)" in line
        and "previous version is kept" in line
    )
    assert read_checkpoint(last)["iteration"] == 6  # the end of epoch 1, whole
    no_temporary_files(snapshots)


@pytest.mark.parametrize("name", ["ENOSPC", "EDQUOT", "EROFS", "EACCES"])
def test_every_unwritable_case_names_the_file_and_the_errno(tmp_path, monkeypatch, name):
    import training.snapshots as snapshots_module
    from training.snapshots import SaveError, Snapshots
    from utils.labels import DOG

    code = getattr(errno, name)

    def refuse(obj, path):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(snapshots_module, "save_atomic", refuse)
    folder = Snapshots(str(tmp_path), DOG)
    with pytest.raises(SaveError) as caught:
        folder.save_best(torch.nn.Linear(1, 1))
    assert str(caught.value) == (
        f"{folder.best_path}: could not be written: {os.strerror(code)} ({name}); nothing was written"
    )


@pytest.mark.slow
def test_a_picture_gone_bad_mid_run_saves_the_last_step_and_names_the_file(data_dir, tmp_path):
    """Each worker's 13th picture read fails as a truncated file would (after the start-up check)."""
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
    snapshots = tmp_path / "snap"
    code, err, seconds = train(data_dir, snapshots, fault, "--eval-every", "1")
    line = error_line(err)
    assert code == 1 and seconds < EXIT_WITHIN_S, (code, seconds)
    assert said in line, line
    no_temporary_files(snapshots)


@pytest.mark.slow
def test_under_torchrun_a_failing_rank_ends_the_others(data_dir, tmp_path):
    """Rank 1 raises in its second step: both processes end with one error line each (rank 0's
    all-reduce sees its peer gone), torchrun exits non-zero, all within the bound."""
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


def test_too_little_free_space_is_warned_before_training(tmp_path, monkeypatch):
    """The next saves need last.pth (weights + momentum) and one more copy of the weights beside it."""
    import shutil

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
