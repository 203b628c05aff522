"""Running a script's ``main`` in the test process (no interpreter start-up), as the CLI tests do; and
running one in a process whose output folder really refuses writes (:func:`refusing`)."""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from types import ModuleType

import pytest

RUN_LIMIT_S = 300  # a whole faulty run, on the slowest CPU: only a hang comes near it


def run_main(module: ModuleType, argv: list[str], capsys) -> tuple[int, str, str]:
    """``module.main(module.get_arguments(argv))``: exit code (argparse's and ``die``'s included),
    stdout, stderr."""
    try:
        code = module.main(module.get_arguments(argv)) or 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def run_call(fn, capsys) -> tuple[int, str, str]:
    """``fn()`` (a script's entry point with its arguments bound): exit code, stdout, stderr."""
    try:
        code = fn() or 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


# ------------------------------------------------------------------------------------------
# Making a folder refuse writes, for real
# ------------------------------------------------------------------------------------------

UNSHARE = shutil.which("unshare")
_probe: dict[str, str | None] = {}


def _namespace_problem() -> str | None:
    """Why this machine cannot mount a tmpfs in a namespace of its own (None if it can)."""
    if "mount" not in _probe:
        if UNSHARE is None:
            _probe["mount"] = "unshare(1) is not installed"
        else:
            done = subprocess.run(
                [UNSHARE, "-Urm", "sh", "-c", 'mount -t tmpfs -o size=64k tmpfs "$0"', "/tmp"],
                capture_output=True,
                text=True,
            )
            _probe["mount"] = (
                None
                if done.returncode == 0
                else f"no user and mount namespace here (unshare -Urm: {done.stderr.strip()[:200]})"
            )
    return _probe["mount"]


def refusing(kind: str, folder: Path, size: str = "100k", fsize: int = 32 * 1024):
    """``(prefix, preexec_fn)``: a command run as ``[*prefix, *argv]`` with ``preexec_fn`` finds
    ``folder`` refusing writes as ``kind`` does on a real machine. ENOSPC: a tmpfs of ``size``
    mounted there (empty: the process writes its own previous versions). EROFS: ``folder`` bound
    read-only. EACCES: ``folder`` and the folders in it without write permission (the test gives it
    back with :func:`allow_writes`). EFBIG: every
    file of the process is limited to ``fsize`` bytes. EDQUOT cannot be made here: tmpfs quotas
    need a kernel built with them, and a quota-enabled file system needs root outside a namespace."""
    if kind in ("ENOSPC", "EROFS"):
        problem = _namespace_problem()
        if problem:
            pytest.skip(f"{kind} needs a tmpfs or bind mount of the test's own: {problem}")
        if kind == "ENOSPC":
            script = 'mount -t tmpfs -o size="$1" tmpfs "$0" && shift && exec "$@"'
            return [UNSHARE, "-Urm", "sh", "-c", script, str(folder), size], None
        script = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"'
        return [UNSHARE, "-Urm", "sh", "-c", script, str(folder)], None
    if kind == "EACCES":
        for here, _, _ in os.walk(folder):
            os.chmod(here, 0o555)
        if os.geteuid() != 0:
            return [], None
        # Root ignores permissions; in a user namespace of its own it holds no capability over the
        # folder, and the owner's bits (r-x) apply.
        if UNSHARE is None or subprocess.run([UNSHARE, "-U", "true"]).returncode != 0:
            pytest.skip("EACCES as root needs a user namespace (unshare -U), unavailable here")
        return [UNSHARE, "-U"], None
    if kind == "EDQUOT":
        pytest.skip(
            "EDQUOT needs a file system with quotas: tmpfs has them only in kernels built with "
            "CONFIG_TMPFS_QUOTA, any other needs root outside a namespace; the errno reaches the "
            "same one line as ENOSPC (utils.files.WriteError names any errno)"
        )
    assert kind == "EFBIG", kind

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    return [], limit


class Timed:
    """A process whose output lines are timed as they come, so that a test can bound the time from
    the line that reports a fault to the process's end."""

    def __init__(self, argv: list[str], env: dict[str, str], preexec_fn=None, cwd: str | None = None) -> None:
        self.lines: list[tuple[float, str]] = []
        self.proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            preexec_fn=preexec_fn,
            cwd=cwd,
        )
        self.out: list[str] = []
        self.err: list[str] = []
        readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self.out), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, self.err), daemon=True),
        ]
        for reader in readers:
            reader.start()
        try:
            self.returncode = self.proc.wait(timeout=RUN_LIMIT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        self.ended = time.time()
        for reader in readers:
            reader.join(timeout=10)
        self.stdout, self.stderr = "".join(self.out), "".join(self.err)

    def _read(self, stream, into: list[str]) -> None:
        for line in stream:
            self.lines.append((time.time(), line))
            into.append(line)

    def seconds_after(self, text: str) -> float:
        """Seconds from the first line holding ``text`` to the process's end."""
        when = next(t for t, line in self.lines if text in line)
        return self.ended - when


def allow_writes(folder: Path) -> None:
    """Undo :func:`refusing`'s EACCES, so that pytest can remove the folder."""
    for here, _, _ in os.walk(folder):
        os.chmod(here, 0o755)
