"""The run's TensorBoard event files, which a full disk must neither hang nor silently empty.

TensorBoard's writer (``torch.utils.tensorboard``) writes from a thread of its own; when a write
fails (disk full, quota, file too large) the thread ends, and the next call in the run raises the
thread's OSError. :class:`Curves` turns that into one warning naming the file and the cause, then
drops every later call: the curves stop, training goes on (its next save fails with its own error
if the disk stays full). tensorboardX, used before, blocked the run for ever on that case: its
thread died and the next call waited on a full queue.
"""

from __future__ import annotations

import errno
import glob
import os
import threading
from typing import Any, Callable

from torch.utils.tensorboard import SummaryWriter


def _quiet_writer_threads() -> None:
    """Leave the writer thread's OSError to :class:`Curves`, which reports it in one line, instead of
    the traceback ``threading.excepthook`` prints; everything else goes on to the previous hook."""
    previous = threading.excepthook
    if getattr(previous, "dfpnet_curves", False):
        return

    def hook(args: Any) -> None:
        if isinstance(args.exc_value, OSError) and type(args.thread).__name__ == "_AsyncWriterThread":
            return
        previous(args)

    hook.dfpnet_curves = True  # type: ignore[attr-defined]
    threading.excepthook = hook


class Curves:
    """A ``SummaryWriter`` whose failures end the curves, not the run (see the module docstring).
    ``add_*`` are the writer's; ``add_scalars`` keeps tensorboardX's layout."""

    def __init__(self, logdir: str, purge_step: int | None, warn: Callable[[str], None]) -> None:
        self.logdir, self.warn = logdir, warn
        self.failed = False
        _quiet_writer_threads()
        self.purge_step = purge_step
        self._writer: SummaryWriter | None = SummaryWriter(log_dir=logdir, purge_step=purge_step)
        self._runs: dict[tuple[str, str], SummaryWriter] = {}  # add_scalars' curves
        self.last_step: int | None = None

    def _event_file(self, exc: OSError) -> str:
        if exc.filename:
            return str(exc.filename)
        files = sorted(glob.glob(os.path.join(self.logdir, "**", "events.out.tfevents.*"), recursive=True))
        return (
            max(files, key=os.path.getmtime) if files else os.path.join(self.logdir, "events.out.tfevents.*")
        )

    def _fail(self, exc: OSError) -> None:
        self.failed, writer, self._writer = True, self._writer, None
        name = errno.errorcode.get(exc.errno or 0, "an OS error")
        after = f" after step {self.last_step}" if self.last_step is not None else ""
        self.warn(
            f"{self._event_file(exc)}: could not be written: {exc.strerror or exc} ({name}); the "
            f"TensorBoard curves stop here{after}, training goes on"
        )
        for open_writer in [writer, *self._runs.values()]:
            try:
                open_writer.close()  # a writer whose thread is gone: close only releases the files
            except OSError:
                pass
        self._runs = {}

    def _call_on(self, writer: SummaryWriter, name: str) -> None:
        if self._writer is None:
            return
        try:
            getattr(writer, name)()
        except OSError as exc:
            self._fail(exc)

    def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        if self._writer is None:
            return None
        try:
            result = getattr(self._writer, name)(*args, **kwargs)
        except OSError as exc:
            self._fail(exc)
            return None
        step = kwargs.get("global_step", args[2] if name.startswith("add_") and len(args) > 2 else None)
        if isinstance(step, int):
            self.last_step = step
        return result

    def __getattr__(self, name: str) -> Callable[..., Any]:
        if not name.startswith("add_"):
            raise AttributeError(name)
        return lambda *args, **kwargs: self._call(name, *args, **kwargs)

    def add_scalars(self, main_tag: str, values: dict[str, float], step: int) -> None:
        """One run per curve, ``<logdir>/<main_tag>/<name>``, all on one chart ``main_tag``: the layout
        tensorboardX wrote (torch's own add_scalars names the folders ``<main_tag>_<name>``)."""
        if self._writer is None:
            return
        try:
            for name, value in values.items():
                run = self._runs.get((main_tag, name))
                if run is None:
                    folder = os.path.join(self.logdir, main_tag, name)
                    run = SummaryWriter(log_dir=folder, purge_step=self.purge_step)
                    self._runs[main_tag, name] = run
                run.add_scalar(main_tag, value, step)
        except OSError as exc:
            self._fail(exc)
            return
        self.last_step = step

    def flush(self) -> None:
        for run in self._runs.values():
            self._call_on(run, "flush")
        self._call("flush")

    def close(self) -> None:
        for run in self._runs.values():
            self._call_on(run, "close")
        self._call("close")
        self._writer, self._runs = None, {}
