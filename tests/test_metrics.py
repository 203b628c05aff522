"""ConfusionMatrix against hand-computed numbers and a brute-force reference; inference.visualize's
pictures."""

from __future__ import annotations

import os

import cv2
import numpy as np
import pytest
import torch

from dataset.datasets import normalize_image
from inference.metrics import ConfusionMatrix
from inference.visualize import (
    confusion_matrix_figure,
    image_grid,
    image_to_rgb,
    iou_bar_figure,
    label_grid,
    make_grid,
    save_figure,
)
from utils.labels import DOG, LabelSet
from utils.pictures import overlay


def brute_force(gt: np.ndarray, pred: np.ndarray, n: int, ignore: int = 255) -> dict:
    """The docs/reference.md section 7 definitions, one pixel and one class at a time, with no numpy
    vector tricks."""
    mat = [[0] * n for _ in range(n)]
    for g, p in zip(gt.ravel().tolist(), pred.ravel().tolist()):
        if g == ignore:
            continue
        mat[g][p] += 1
    total = sum(sum(row) for row in mat)
    tp = [mat[c][c] for c in range(n)]
    gt_count = [sum(mat[c]) for c in range(n)]
    pred_count = [sum(mat[r][c] for r in range(n)) for c in range(n)]
    acc = [tp[c] / max(1, gt_count[c]) for c in range(n)]
    iou = [tp[c] / max(1, gt_count[c] + pred_count[c] - tp[c]) for c in range(n)]
    return {
        "mat": mat,
        "pixel_accuracy": 100 * sum(tp) / max(1, total),
        "mean_accuracy": 100 * sum(acc) / n,
        "mean_iou": 100 * sum(iou) / n,
        "per_class_iou": [100 * v for v in iou],
    }


def test_hand_computed_example():
    # 8 pixels, 4 classes; pixel 5 is ignored (its prediction 3 must not count), class 3 appears in
    # neither ground truth nor (scored) prediction, so its accuracy and IoU are 0 / max(1, 0) = 0.
    gt = np.array([[0, 0, 1, 1], [2, 255, 2, 0]], dtype=np.uint8)
    pred = np.array([[0, 1, 1, 1], [0, 3, 2, 0]], dtype=np.uint8)
    cm = ConfusionMatrix(4)
    cm.update(gt, pred)
    assert cm.mat.tolist() == [[2, 1, 0, 0], [0, 2, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]]
    stats = cm.compute()
    # tp = 2 + 2 + 1 = 5 of 7 scored pixels
    assert stats["pixel_accuracy"] == pytest.approx(100 * 5 / 7)
    # per class: 2/3, 2/2, 1/2, 0/max(1, 0)
    assert stats["mean_accuracy"] == pytest.approx(100 * (2 / 3 + 1 + 1 / 2 + 0) / 4)
    # IoU: 2/(3+3-2), 2/(2+3-2), 1/(2+1-1), 0/max(1, 0+0-0); mean over all 4 classes
    assert stats["per_class_iou"] == pytest.approx([50.0, 100 * 2 / 3, 50.0, 0.0])
    assert stats["mean_iou"] == pytest.approx(100 * 5 / 12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_brute_force_with_ignored_pixels(seed):
    rng = np.random.default_rng(seed)
    n = 8
    cm = ConfusionMatrix(n)
    gts, preds = [], []
    for shape in [(17, 23), (9, 31), (1, 5)]:  # several updates accumulate
        gt = rng.integers(0, n, shape).astype(np.uint8)
        gt[rng.random(shape) < 0.2] = 255
        gt[gt == 7] = 6  # an absent class exercises the max(1, .) guards
        pred = rng.integers(0, n - 1, shape).astype(np.uint8)
        cm.update(gt, torch.from_numpy(pred) if seed == 1 else pred)  # tensors are accepted too
        gts.append(gt.ravel())
        preds.append(pred.ravel())
    ref = brute_force(np.concatenate(gts), np.concatenate(preds), n)
    assert cm.mat.tolist() == ref["mat"]
    stats = cm.compute()
    for key in ("pixel_accuracy", "mean_accuracy", "mean_iou"):
        assert stats[key] == pytest.approx(ref[key], abs=1e-9)
    assert stats["per_class_iou"] == pytest.approx(ref["per_class_iou"], abs=1e-9)


def test_out_of_range_ground_truth_is_an_error():
    cm = ConfusionMatrix(8)
    with pytest.raises(ValueError, match=r"\[9\]"):
        cm.update(np.array([1, 9, 255]), np.array([1, 1, 1]))
    with pytest.raises(ValueError, match="prediction"):
        cm.update(np.array([1, 2]), np.array([1, 8]))
    with pytest.raises(ValueError, match="shape"):
        cm.update(np.zeros((2, 3)), np.zeros((3, 2)))
    assert cm.mat.sum() == 0  # nothing half-added


def test_empty_and_to_dict():
    cm = ConfusionMatrix(3)
    assert cm.compute()["mean_iou"] == 0.0 and cm.compute()["pixel_accuracy"] == 0.0
    cm.update(np.array([0, 1, 2, 2]), np.array([0, 1, 2, 1]))
    out = cm.to_dict(["Background", "head", "body"])
    assert list(out["per_class_iou"]) == ["Background", "head", "body"]
    assert out["per_class_iou"]["body"] == pytest.approx(50.0)
    assert out["confusion_matrix"] == [[1, 0, 0], [0, 1, 0], [0, 1, 1]]
    assert out["mean_iou"] == pytest.approx(100 * (1 + 0.5 + 0.5) / 3)
    table = cm.table(["Background", "head", "body"])
    assert "Mean IU" in table and "Pixel accuracy" in table and "head" in table
    cm.reduce_from_all_processes()  # not distributed: a no-op
    assert cm.mat.sum() == 4


def _reduce_worker(rank: int, world: int, init: str, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    cm = ConfusionMatrix(3)
    cm.update(np.array([rank, 2]), np.array([rank, rank]))  # rank 0: (0,0),(2,0); rank 1: (1,1),(2,1)
    cm.reduce_from_all_processes()
    np.save(os.path.join(out, f"rank{rank}.npy"), cm.mat)
    dist.destroy_process_group()


@pytest.mark.slow
def test_reduce_sums_over_processes(tmp_path):
    torch.multiprocessing.spawn(_reduce_worker, args=(2, f"file://{tmp_path}/store", str(tmp_path)), nprocs=2)
    expected = [[1, 0, 0], [0, 1, 0], [1, 1, 0]]
    for rank in range(2):
        assert np.load(tmp_path / f"rank{rank}.npy").tolist() == expected


# ---------------------------------------------------------------------------------------------
# inference.visualize
# ---------------------------------------------------------------------------------------------


def test_confusion_matrix_figure_is_row_normalised(tmp_path):
    mat = np.array([[3, 1, 0], [0, 0, 0], [2, 2, 4]])
    fig = confusion_matrix_figure(mat, ["a", "b", "c"])
    shown = fig.axes[0].images[0].get_array()
    assert np.allclose(shown, [[75, 25, 0], [0, 0, 0], [25, 25, 50]])
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["a", "b", "c"]
    assert len(fig.axes) == 2  # the matrix and its colour bar
    path = tmp_path / "sub" / "cm.png"
    save_figure(fig, str(path))
    assert cv2.imread(str(path)) is not None


THREE = LabelSet.from_dict(
    {"names": ["x", "y", "z"], "palette": [[0, 0, 0], [255, 0, 0], [0, 0, 255]]}, "three"
)


def test_iou_bar_figure(tmp_path):
    fig = iou_bar_figure([90.0, 10.0, 50.0], THREE, mean_iou=50.0)
    heights = [p.get_height() for p in fig.axes[0].patches]
    assert heights == pytest.approx([90.0, 10.0, 50.0])
    # Bars are named and coloured as the label set's classes.
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["x", "y", "z"]
    assert [tuple(p.get_facecolor()[:3]) for p in fig.axes[0].patches] == [(0, 0, 0), (1, 0, 0), (0, 0, 1)]
    save_figure(fig, str(tmp_path / "iou.png"))
    assert cv2.imread(str(tmp_path / "iou.png")).shape[2] == 3


def test_image_to_rgb_undoes_the_bgr_normalisation():
    bgr = np.zeros((4, 5, 3), dtype=np.uint8)
    bgr[..., 0] = 200  # blue in OpenCV's order
    bgr[..., 2] = 10
    rgb = image_to_rgb(normalize_image(bgr))
    assert rgb.shape == (4, 5, 3) and rgb.dtype == np.uint8
    assert rgb[0, 0].tolist() == [10, 0, 200]  # shown as blue, not the authors' swapped red
    grid = image_grid(normalize_image(bgr)[None].repeat(3, 1, 1, 1), ncol=2, max_images=3)
    assert grid.shape == (2 + 2 * 6, 2 + 2 * 7, 3)


def test_label_grid_uses_the_palette():
    labels = torch.tensor([[[0, 1], [2, 255]], [[7, 7], [7, 7]]])
    grid = label_grid(labels, DOG, ncol=2)
    # The Dog set keeps the authors' VOC bit-pattern colours: head (1) dark red, tail (7) grey.
    assert grid[2, 3].tolist() == [128, 0, 0]  # first tile, row 0, col 1
    assert grid[3, 3].tolist() == [255, 255, 255]  # ignored pixels are white
    assert grid[2, 6].tolist() == [128, 128, 128]  # second tile
    scores = torch.zeros(1, 8, 2, 2)
    scores[0, 4] = 1.0
    assert label_grid(scores, DOG)[2, 2].tolist() == [0, 0, 128]  # scores -> argmax
    # Another label set, its own colours.
    assert label_grid(torch.tensor([[[2, 1]]]), THREE)[2, 2:4].tolist() == [[0, 0, 255], [255, 0, 0]]
    with pytest.raises(ValueError):
        make_grid([np.zeros((2, 2, 3), np.uint8), np.zeros((3, 2, 3), np.uint8)])


def test_overlay_blends_foreground_only():
    image = np.full((2, 3, 3), 100, dtype=np.uint8)
    label = np.array([[0, 1, 255], [2, 0, 0]], dtype=np.uint8)
    out = overlay(image, label, DOG, alpha=0.5)
    assert out.dtype == np.uint8 and out.shape == image.shape
    assert out[0, 0].tolist() == [100, 100, 100] and out[0, 2].tolist() == [100, 100, 100]
    # head is RGB (128, 0, 0) -> BGR (0, 0, 128): halfway between 100 and the colour
    assert out[0, 1].tolist() == [50, 50, 114]
    assert out[1, 0].tolist() == [50, 114, 50]
