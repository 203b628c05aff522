"""The snapshot folder's lock and the stop signals, in-process; train.py's use of them is in test_train.py."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import pytest

from training.signals import StopSignals
from training.snapshots import LOCK_NAME, SnapshotDirBusy, SnapshotLock

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_a_held_folder_refuses_a_second_lock_and_names_the_holder(tmp_path):
    folder = str(tmp_path / "snap")
    with SnapshotLock(folder):
        (tmp_path / "snap" / "last.pth").write_bytes(b"x")
        with pytest.raises(SnapshotDirBusy) as refused:
            SnapshotLock(folder).acquire()
        assert str(refused.value).startswith(
            f"{folder} is in use by another training run (pid {os.getpid()} on host {socket.gethostname()})"
        )
        # The refused attempt did not wipe the holder's note.
        assert open(os.path.join(folder, LOCK_NAME)).read().startswith(f"pid {os.getpid()} ")
    with SnapshotLock(folder):  # released: free again, and the folder with its files stays
        pass
    assert sorted(os.listdir(folder)) == [LOCK_NAME, "last.pth"]


def test_a_folder_the_lock_created_for_nothing_is_removed(tmp_path):
    folder = tmp_path / "new" / "snap"
    with SnapshotLock(str(folder)):
        assert folder.is_dir()
    assert not folder.exists()


def test_a_lock_left_by_a_killed_process_blocks_nobody(tmp_path):
    folder = str(tmp_path)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from training.snapshots import SnapshotLock; "
            f"SnapshotLock({folder!r}).acquire(); print('held', flush=True); time.sleep(60)",
        ],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=ROOT),
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(SnapshotDirBusy, match=f"pid {holder.pid} "):
        SnapshotLock(folder).acquire()
    holder.kill()
    holder.wait(timeout=30)
    with SnapshotLock(folder):
        assert f"pid {os.getpid()} " in open(os.path.join(folder, LOCK_NAME)).read()


def test_first_signal_is_recorded_second_abandons_except_while_saving():
    previous = signal.getsignal(signal.SIGTERM)
    with StopSignals() as signals:
        os.kill(os.getpid(), signal.SIGTERM)
        assert signals.signum == signal.SIGTERM  # recorded, nothing raised
        with signals.saving():
            os.kill(os.getpid(), signal.SIGINT)  # a second signal during a save waits for it
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
        assert signals.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is previous


@pytest.mark.slow
def test_torchrun_ranks_all_exit_when_the_folder_is_taken(tmp_path):
    # Rank 0 is refused; rank 1 must learn it and exit too instead of waiting in a collective.
    snap = str(tmp_path / "snap")
    with SnapshotLock(snap):
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                "--nproc_per_node=2",
                "train.py",
                "--data-dir",
                str(tmp_path / "no-data"),
                "--snapshot-dir",
                snap,
                "--device",
                "cpu",
            ],
            cwd=ROOT,
            env=dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1"),
            capture_output=True,
            text=True,
            timeout=180,
        )
    assert result.returncode != 0
    refusals = [
        line for line in result.stderr.splitlines() if f"{snap} is in use by another training run" in line
    ]
    assert len(refusals) == 1, result.stderr[-3000:]  # rank 0 says why; both exited
    assert "data directory missing" not in result.stderr
