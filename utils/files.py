"""The one way outputs are written: atomically, so a reader (or a resumed run) sees the old file or the
whole new one, never half of one, even if the process is killed or the disk fills mid-write.

``atomic_file`` is used for checkpoints (``utils.checkpoint.save_atomic``), ONNX models
(export.py) and metrics files (``write_json_atomic``). No torch here.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def _fsync(path: str | os.PathLike, *, folder: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if folder else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class WriteError(OSError):
    """A file could not be written (disk full, quota, file too large, read-only, permission). Its
    message is one line naming the file, the cause with its errno name, and what is left there,
    e.g. ``out/a.png: could not be written: No space left on device (ENOSPC); nothing was written``."""

    def __init__(self, code: int | None, strerror: str, filename: str | None = None, left: str = "") -> None:
        super().__init__(code, strerror, filename)
        self.left = left

    def __str__(self) -> str:
        name = errno.errorcode.get(self.errno or 0, "an OS error")
        left = f"; {self.left}" if self.left else ""
        return f"{self.filename}: could not be written: {self.strerror} ({name}){left}"


def write_error(path: str | os.PathLike, exc: OSError, left: str | None = None) -> WriteError:
    """``exc`` as a :class:`WriteError` naming ``path``; ``left`` says what is there now (default: the
    previous version if ``path`` is a file, else nothing)."""
    if isinstance(exc, WriteError):  # named again, as the caller shows the file
        return WriteError(exc.errno, exc.strerror, str(path), exc.left if left is None else left)
    if left is None:
        left = "its previous version is kept" if os.path.isfile(path) else "nothing was written"
    return WriteError(exc.errno, exc.strerror or str(exc), str(path), left)


class FdWriter:
    """A file-like ``write`` over a descriptor that writes every byte or raises OSError, and keeps the
    OSError: ``torch.save`` to a path, or through a Python file object whose write fails part-way,
    reports a full disk as a RuntimeError ("unexpected pos ...", "iostream error") with no errno."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        done = 0
        try:
            while done < len(view):
                done += os.write(self.fd, view[done:])
        except OSError as exc:
            self.error = self.error or exc
            raise
        return done

    def flush(self) -> None:
        pass


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, *, durable: bool = True) -> Iterator[str]:
    """Yields a temporary path beside ``path`` for the block to write.

    If the block ends without an exception, the temporary file is renamed over ``path``; with
    ``durable`` it is first flushed to disk (fsync) and the folder's entry after, so that a power
    cut after the return cannot bring the old file back or leave an empty one (pictures, of which a
    run writes many, skip that). On any exception (``SystemExit`` included) the temporary file is
    removed and ``path`` is left as it was. A failed write raises :class:`WriteError` naming ``path``.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:  # a read-only or full folder
        raise write_error(path, exc) from None
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    replaced = False
    try:
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; outputs should read like any file
        yield tmp
        if durable:
            _fsync(tmp)
        os.replace(tmp, path)
        replaced = True
        if durable:
            _fsync(path.parent, folder=True)
    except OSError as exc:
        if exc.filename is not None and not str(exc.filename).startswith((tmp, str(path))):
            raise  # another file the block wrote: its own error
        left = "the new version is in place but may not be on disk yet" if replaced else None
        raise write_error(path, exc, left) from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def claim_space(folder: str | os.PathLike, nbytes: int) -> None:
    """Raise the OSError (ENOSPC, EDQUOT, EFBIG, EROFS, EACCES) that writing a file of ``nbytes`` bytes
    into ``folder`` would meet, by reserving the blocks (``posix_fallocate``: nothing is written) in
    a file removed at once. For writers that do not report a failed write themselves: onnx's C++
    shape inference, for one, leaves a truncated file on a full disk, which then reads as a corrupt
    model."""
    fd, path = tempfile.mkstemp(prefix=".space-", suffix=".tmp", dir=folder)
    try:
        os.posix_fallocate(fd, 0, max(nbytes, 1))
    finally:
        os.close(fd)
        os.unlink(path)


def write_bytes_atomic(data: bytes, path: str | os.PathLike, *, durable: bool = False) -> None:
    """``data`` into ``path`` through :func:`atomic_file` (not flushed to disk unless ``durable``)."""
    with atomic_file(path, durable=durable) as tmp, open(tmp, "wb") as f:
        f.write(data)


def read_json(path: str, what: str = "file") -> Any:
    """A JSON file's content; ValueError with one line naming ``path`` (``what`` it is, for the words):
    not found, unreadable, or not valid JSON (with the line and column)."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise ValueError(f"{path}: {what} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot read the {what}: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"{path}: not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        ) from None


def write_json_atomic(obj: Any, path: str | os.PathLike) -> None:
    """``obj`` as indented JSON (and a final newline) through :func:`atomic_file`."""
    with atomic_file(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")
