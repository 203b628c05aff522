"""Fault injection for tests/test_faults.py: Python imports this module at start-up when its folder is
on PYTHONPATH, and DFPNET_TEST_FAULT says what to break (never set outside those tests):

- ``image:N``: from the N-th ``cv2.imread`` on, reading a picture fails as for a truncated file;
- ``kill_worker:N``: a DataLoader worker kills itself (SIGKILL) when it loads its N-th sample;
- ``eval``: the evaluation during training raises;
- ``rank:R:N``: under torchrun, the process of rank R raises in its N-th training step.

Full disks, quotas and read-only folders are not injected: tests/test_faults.py makes them real
(a small tmpfs, RLIMIT_FSIZE, a read-only bind mount). Each injection writes the time it fired
(``time.time()``) into the file DFPNET_TEST_FAULT_STAMP names, if any, so that a test can bound
the time from the fault to the exit, whatever the start-up cost.
"""

import os
import signal
import time

_kind, _, _arg = os.environ.get("DFPNET_TEST_FAULT", "").partition(":")


def _counter(n: int):
    calls = [0]

    def due() -> bool:
        calls[0] += 1
        if calls[0] >= n:
            _stamp()
            return True
        return False

    return due


def _stamp() -> None:
    """Record when the fault fires (the first time only: a later one changes nothing)."""
    path = os.environ.get("DFPNET_TEST_FAULT_STAMP")
    if path and not os.path.exists(path):
        with open(path, "w") as f:
            f.write(f"{time.time()!r}\n")


if _kind == "image":
    import cv2

    _due, _real_imread = _counter(int(_arg)), cv2.imread

    def _imread(path, *args, **kwargs):
        return None if _due() else _real_imread(path, *args, **kwargs)

    cv2.imread = _imread
elif _kind == "kill_worker":
    import torch.utils.data

    _due = _counter(int(_arg))
    _real_getitem = None

    def _patch():
        import dataset.datasets as datasets

        real = datasets.CartoonDataSet.__getitem__

        def getitem(self, index):
            if torch.utils.data.get_worker_info() is not None and _due():
                os.kill(os.getpid(), signal.SIGKILL)
            return real(self, index)

        datasets.CartoonDataSet.__getitem__ = getitem

    import builtins

    _real_import = builtins.__import__

    def _import(name, *args, **kwargs):
        module = _real_import(name, *args, **kwargs)
        if name == "dataset.datasets" and not getattr(builtins, "_dfpnet_patched", False):
            builtins._dfpnet_patched = True
            _patch()
        return module

    builtins.__import__ = _import
elif _kind == "eval":
    import builtins

    _real_import = builtins.__import__

    def _import(name, *args, **kwargs):
        module = _real_import(name, *args, **kwargs)
        if name == "training.evaluation" and not getattr(builtins, "_dfpnet_patched", False):
            builtins._dfpnet_patched = True

            def fail(*a, **k):
                _stamp()
                raise RuntimeError("injected evaluation failure")

            module.evaluate_model = fail
        return module

    builtins.__import__ = _import
elif _kind == "rank":
    import builtins

    _rank, _, _n = _arg.partition(":")
    _real_import = builtins.__import__

    def _import(name, *args, **kwargs):
        module = _real_import(name, *args, **kwargs)
        if name == "training.trainer" and not getattr(builtins, "_dfpnet_patched", False):
            builtins._dfpnet_patched = True
            real_step, due = module.train_one_epoch, _counter(int(_n))

            def train_one_epoch(*a, on_step=None, **k):
                def step(info):
                    if os.environ.get("RANK") == _rank and due():
                        raise RuntimeError(f"injected failure on rank {_rank}")
                    if on_step is not None:
                        on_step(info)

                return real_step(*a, on_step=step, **k)

            module.train_one_epoch = train_one_epoch
        return module

    builtins.__import__ = _import
