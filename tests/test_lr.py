"""The poly LR schedule, the data order and the seeds that make a resumed run repeat an uninterrupted one."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from training.data import SeededSamples
from training.distributed import EpochShuffleSampler, derive_seed
from training.schedule import poly_lr
from training.snapshots import capture_rng_state, restore_rng_state


def test_poly_lr_values():
    base, total = 1e-3, 11000
    assert poly_lr(base, 0, total) == base  # the first step runs at the base LR
    assert poly_lr(base, total // 2, total) == pytest.approx(base * 0.5**0.9, rel=1e-12)
    assert poly_lr(base, 1, total) == pytest.approx(base * (1 - 1 / total) ** 0.9, rel=1e-12)
    last = poly_lr(base, total - 1, total)
    assert last == pytest.approx(base * (1 / total) ** 0.9, rel=1e-12) and last > 0
    assert poly_lr(base, total, total) == 0.0
    assert poly_lr(base, 10, 100, power=1.0) == pytest.approx(0.9e-3)
    with pytest.raises(ValueError):
        poly_lr(base, 0, 0)


def test_poly_lr_is_monotonic_and_ignores_where_the_run_restarted():
    total = 50
    lrs = [poly_lr(1e-2, it, total) for it in range(total)]
    assert all(a > b for a, b in zip(lrs, lrs[1:]))
    # The schedule is a function of the global step only: a run resumed at step 20 continues it.
    resumed = [poly_lr(1e-2, it, total) for it in range(20, total)]
    assert resumed == lrs[20:]


def test_sampler_order_depends_on_seed_and_epoch_only():
    a = EpochShuffleSampler(10, 2, seed=7)
    b = EpochShuffleSampler(10, 2, seed=7)
    a.set_epoch(3)
    b.set_epoch(3)
    assert list(a) == list(b)
    assert all(epoch == 3 for epoch, _ in a)
    a.set_epoch(4)
    assert [i for _, i in a] != [i for _, i in b]
    assert sorted(i for _, i in a) == list(range(10))


def test_sampler_skips_done_batches_and_drops_the_incomplete_one():
    s = EpochShuffleSampler(11, 3, seed=0)  # 3 full batches, 2 samples dropped
    assert s.batches_per_epoch == 3
    s.set_epoch(2)
    full = [i for _, i in s]
    assert len(full) == len(s) == 9 and len(set(full)) == 9
    s.set_epoch(2, skip_batches=2)
    assert [i for _, i in s] == full[6:] and len(s) == 3


def test_sampler_splits_batches_across_ranks_like_one_process():
    single = EpochShuffleSampler(10, 2, seed=1)  # one process, batch 2
    ranks = [EpochShuffleSampler(10, 1, seed=1, rank=r, world_size=2) for r in range(2)]  # two, batch 1
    for s in [single, *ranks]:
        s.set_epoch(5)
    one = [i for _, i in single]
    two = [[i for _, i in r] for r in ranks]
    assert len(two[0]) == len(two[1]) == 5  # same number of steps on every rank
    assert [x for pair in zip(*two) for x in pair] == one  # step k holds the same two samples


class _Draws(torch.utils.data.Dataset):
    """Returns the random numbers an augmenting dataset would draw (Python and numpy generators)."""

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int):
        return index, random.random(), float(np.random.randn())


def test_seeded_samples_reproduce_augmentation_and_leave_global_state():
    data = SeededSamples(_Draws(), seed=3)
    random.seed(0)
    np.random.seed(0)
    before = (random.random(), float(np.random.rand()))
    random.seed(0)
    np.random.seed(0)
    first = data[(1, 2)]
    assert data[(1, 2)] == first  # same (epoch, index): same draws
    assert data[(2, 2)] != first  # another epoch: other draws
    assert (random.random(), float(np.random.rand())) == before  # global generators untouched


def test_derive_seed_is_stable():
    assert derive_seed(1234, "order", 0) == derive_seed(1234, "order", 0)
    assert derive_seed(1234, "order", 0) != derive_seed(1234, "order", 1)
    assert 0 <= derive_seed(5) < 2**63


def test_rng_state_round_trip_through_weights_only_checkpoint(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    state = capture_rng_state()
    expected = (random.random(), float(np.random.randn()), torch.rand(3).tolist())
    path = tmp_path / "rng.pth"
    torch.save({"rng": [state]}, path)
    loaded = torch.load(path, weights_only=True)["rng"][0]
    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    restore_rng_state(loaded)
    assert (random.random(), float(np.random.randn()), torch.rand(3).tolist()) == expected
