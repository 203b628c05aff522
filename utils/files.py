"""The one way outputs are written: atomically, so a reader (or a resumed run) sees the old file or the
whole new one, never half of one, even if the process is killed or the disk fills mid-write.

``atomic_file`` is used for checkpoints (``utils.checkpoint.save_atomic``), ONNX models
(export.py) and metrics files (``write_json_atomic``). No torch here.
"""

from __future__ import annotations

import contextlib
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


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[str]:
    """Yields a temporary path beside ``path`` for the block to write.

    If the block ends without an exception, the temporary file is flushed to disk (fsync), renamed
    over ``path`` and the folder's entry flushed too, so that a power cut after the return cannot
    bring the old file back or leave an empty one. On any exception (``SystemExit`` included) the
    temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; outputs should read like any file
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
        _fsync(path.parent, folder=True)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


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
