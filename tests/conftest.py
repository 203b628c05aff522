"""Shared test set-up: CPU only, deterministic, and small."""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest
import torch


def _threads() -> int:
    """Torch threads for this test process and the processes it starts: the cores shared among
    pytest-xdist's workers (tests/run.sh starts one per core), at most 2 (the CI machine's count),
    so that no test oversubscribes the cores its neighbours are using."""
    cores = os.cpu_count() or 1
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    return max(1, min(2, cores // max(1, workers)))


THREADS = _threads()
torch.set_num_threads(THREADS)
os.environ["OMP_NUM_THREADS"] = str(THREADS)  # for the train.py / evaluate.py / bench processes tests start
# train.py --tune's cache: never the user's own (~/.cache/dfpnet) from a test.
os.environ["DFPNET_CACHE_DIR"] = os.path.join(
    os.environ.get("TMPDIR", "/tmp"),
    f"dfpnet-test-cache-{os.getpid()}-{os.environ.get('PYTEST_XDIST_WORKER', 'main')}",
)


def pytest_collection_modifyitems(config, items) -> None:
    """Slow (end-to-end) tests first: under pytest-xdist (tests/run.sh: one file per worker at a
    time) the files with long tests then start at once instead of leaving one worker busy at the
    end while the others idle. The order is otherwise kept."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(scope="module", autouse=True)
def _free_module_folders(request, tmp_path_factory):
    """Removes the folders a test file's shared fixtures made (trained runs, exports, data sets:
    full-size checkpoints, up to a GB a file) once its last test has passed, as pyproject.toml's
    retention policy does for each test's own tmp_path. Without it a run holds every file's
    folders until its end; with xdist's --dist loadfile a worker runs one file at a time, so the
    folders new in its base folder since the file began are that file's. A file with a failure
    keeps them for a look."""
    base = tmp_path_factory.getbasetemp()
    before, failed = set(base.iterdir()), request.session.testsfailed
    yield
    if request.session.testsfailed > failed:
        return
    for path in set(base.iterdir()) - before:
        if path.is_symlink():  # mktemp's "<name>current" link to the newest "<name>N"
            path.unlink()
        else:
            shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def _private_folders(tmp_path_factory):
    """train.py --tune's cache, torch.compile's (inductor's) and the temporary folder, for the tests
    and the processes they start: never the user's own, none that another run filled, and gone with
    pytest's folders (torchrun's and multiprocessing's leftovers, onnxruntime's quantization files).
    Inductor's entries from a run under ATEN_CPU_CAPABILITY=avx2 broke a native run's compiled
    layers and the other way round (utils.device.compile_model)."""
    os.environ["DFPNET_CACHE_DIR"] = str(tmp_path_factory.mktemp("tune-cache"))
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(tmp_path_factory.mktemp("inductor-cache"))
    os.environ["TMPDIR"] = str(tmp_path_factory.mktemp("tmp"))
    tempfile.tempdir = None  # gettempdir() reads TMPDIR again


@pytest.fixture(scope="session")
def reference_keys() -> dict[str, tuple[int, ...]]:
    """Keys and shapes of the authors' checkpoints (tests/data/dfpnet_state_dict.tsv)."""
    here = os.path.dirname(__file__)
    path = os.path.join(here, "data", "dfpnet_state_dict.tsv")
    keys: dict[str, tuple[int, ...]] = {}
    with open(path) as f:
        for line in f:
            if line.startswith("#") or not line.strip():
                continue
            name, shape = line.rstrip("\n").split("\t")
            keys[name] = tuple(int(s) for s in shape.split("x"))
    return keys
