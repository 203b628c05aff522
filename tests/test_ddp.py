"""DistributedDataParallel on the CPU (gloo): N processes with batch B equal one process with batch N x B.

Synchronised InPlace-ABN makes this exact up to float rounding: batch statistics are those of
the whole batch. ASPP's Dropout2d draws per-process masks, so it is switched off here. Labels
hold no ignore pixels, so the mean of the per-process losses is the loss of the whole batch.

At random initialisation, on 48x48 crops and two images, the 101-layer network is chaotic:
in float64 a 1e-13 relative change of the input changes the weight update by 7e-10 after one
step, 4e-6 after two and 2e-2 after three (float32 rounding alone already changes the stem's
gradients by ~10%). So the steps run in float64 and the test takes two of them; every process
uses the pure-PyTorch InPlace-ABN (the one that synchronises CPU tensors over gloo).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from utils.labels import DOG

STEPS = 2
SIZE = 48
LR = 1e-2


def _model() -> torch.nn.Module:
    from networks.dfpnet import DFPNet

    torch.manual_seed(0)
    model = DFPNet(num_classes=8)
    model.layer5.bottleneck[2].p = 0.0  # Dropout2d(0.1): per-process masks cannot match
    model.layer5_pred3x3.requires_grad_(False)  # unused in forward, frozen as train.py does
    for module in model.modules():
        if hasattr(module, "backend"):
            module.backend = "pure"
    return model


def _batches() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    images = torch.randn(STEPS, 2, 3, SIZE, SIZE, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 8, (STEPS, 2, SIZE, SIZE), generator=g)
    return images, labels


def _train_and_evaluate(rank: int, world: int, out_dir: str, data_dir: str) -> None:
    from dataset.datasets import CartoonDataSet, default_transform
    from inference.predict import evaluate_model, make_eval_loader
    from training.step import train_step

    model = _model().double()
    trained = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    optimizer = torch.optim.SGD(
        [p for p in model.parameters() if p.requires_grad], lr=LR, momentum=0.9, weight_decay=5e-4
    )
    images, labels = _batches()
    per_rank = 2 // world
    losses = []
    for step in range(STEPS):
        part = slice(rank * per_rank, (rank + 1) * per_rank)
        values, _ = train_step(
            trained, optimizer, images[step, part], labels[step, part], lr=LR, iteration=step
        )
        losses.append(values)
    torch.save(model.state_dict(), os.path.join(out_dir, f"weights_{world}_{rank}.pt"))

    # Evaluation: the same (initial) weights everywhere; one shard per process, matrices summed.
    val = CartoonDataSet(data_dir, "val", crop_size=(SIZE, SIZE), transform=default_transform())
    matrix = evaluate_model(
        _model(),
        val,
        make_eval_loader(val, batch_size=1, workers=0),
        torch.device("cpu"),
        label_set=DOG,
        progress=False,
    )
    if rank == 0:
        torch.save(
            {"matrix": torch.from_numpy(matrix.mat), "losses": torch.tensor(losses)},
            os.path.join(out_dir, f"result_{world}.pt"),
        )


def _worker(rank: int, world: int, store: str, out_dir: str, data_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        _train_and_evaluate(rank, world, out_dir, data_dir)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_processes_match_one_process_with_the_whole_batch(tmp_path):
    from dataset.synthetic import generate_dataset

    data_dir = str(tmp_path / "data")
    generate_dataset(data_dir, 0, 3, 0, seed=0, min_size=40, max_size=64)  # 3 images: shards of 2 and 1
    out_dir = str(tmp_path)
    mp.spawn(_worker, args=(2, str(tmp_path / "store"), out_dir, data_dir), nprocs=2, join=True)
    _train_and_evaluate(0, 1, out_dir, data_dir)

    init = _model().double().state_dict()
    single = torch.load(tmp_path / "weights_1_0.pt", weights_only=True)
    ranks = [torch.load(tmp_path / f"weights_2_{r}.pt", weights_only=True) for r in range(2)]
    assert single.keys() == ranks[0].keys()

    for key in single:  # both ranks hold the very same weights and statistics
        assert torch.equal(ranks[0][key], ranks[1][key]), key
    moved = max((single[k] - init[k]).abs().max().item() for k in single)
    assert moved > 1e-3  # the steps really changed the weights
    # Each tensor's difference, relative to how far training moved it.
    worst, worst_key = 0.0, ""
    for key in single:
        update = (single[key] - init[key]).norm().item()
        if update > 0:
            diff = (ranks[0][key] - single[key]).norm().item() / update
            if diff > worst:
                worst, worst_key = diff, key
    abs_diff = max((ranks[0][k] - single[k]).abs().max().item() for k in single)
    print(
        f"DDP (2 processes x batch 1) vs one process (batch 2), {STEPS} steps, float64: max abs weight "
        f"difference {abs_diff:.2e}, worst difference/update {worst:.2e} ({worst_key})"
    )
    assert worst < 1e-4, f"{worst_key}: {worst}"

    one = torch.load(tmp_path / "result_1.pt", weights_only=True)
    two = torch.load(tmp_path / "result_2.pt", weights_only=True)
    np.testing.assert_allclose(two["losses"].numpy(), one["losses"].numpy(), rtol=1e-6)
    # Evaluation over two shards sums to the single-process confusion matrix; every image once.
    assert int(one["matrix"].sum()) > 0
    assert torch.equal(two["matrix"], one["matrix"])
