"""Stopping a run cleanly on SIGINT / SIGTERM: finish the step, save, exit 128 + the signal."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from typing import Any

from training.distributed import launched_rank


class StopSignals:
    """SIGINT (Ctrl-C) and SIGTERM (job schedulers, ``docker stop``, ``kill``) as requests to stop.

    The first signal only records itself in ``signum``: the training loop finishes the step it
    is in (a step abandoned half-way could leave the weights half-updated), saves last.pth and
    exits 128 + signum. A second signal abandons the run at once (``KeyboardInterrupt``),
    except while a checkpoint is being written (:meth:`saving`), which it cannot cut short.
    Used as a context manager around the training loop; the previous handlers come back after.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, prog: str = "train.py") -> None:
        self.prog = prog
        self.signum = 0
        self._saving = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():  # Python's rule for handlers
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        if not self.signum:
            self.signum = signum
            if launched_rank() == 0:
                print(
                    f"\n{self.prog}: {signal.Signals(signum).name} received: stopping after this step "
                    f"(send it again to stop at once, without saving)",
                    file=sys.stderr,
                    flush=True,
                )
        elif not self._saving:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def saving(self):
        """A section no signal interrupts (a checkpoint write)."""
        self._saving = True
        try:
            yield
        finally:
            self._saving = False


def ignore_stop_signals(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: a worker leaves stopping to the main process.

    Schedulers signal every process of a job, and a worker that died of SIGTERM or quit on
    SIGINT would make the main process fail in the middle of its orderly stop.
    """
    for sig in StopSignals.SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
