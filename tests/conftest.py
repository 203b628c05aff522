"""Shared test set-up: CPU only, deterministic, and small."""
from __future__ import annotations

import os

import pytest
import torch

# Two cores here: keep each test process from oversubscribing them.
torch.set_num_threads(min(2, os.cpu_count() or 1))


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
