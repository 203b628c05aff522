"""dataset.synthetic: determinism, the authors' layout, exact labels and the left/right rule."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from dataset.check import check_dataset
from dataset.synthetic import contact_sheet, generate_dataset, main, render_sample
from utils.labels import DOG

HEAD, BODY, LEFT_ARM, RIGHT_ARM, LEFT_LEG, RIGHT_LEG = 1, 2, 3, 4, 5, 6


def all_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def centroid_x(label: np.ndarray, cls: int) -> float:
    xs = np.nonzero(label == cls)[1]
    assert xs.size, f"class {cls} missing"
    return float(xs.mean())


def facing_of(label: np.ndarray) -> str:
    return "right" if centroid_x(label, HEAD) > centroid_x(label, BODY) else "left"


def rows_inside_body(label: np.ndarray, cls: int) -> int:
    """Rows where the part has body pixels on both sides: it is drawn over the body."""
    n = 0
    for y in np.unique(np.nonzero(label == cls)[0]):
        xs, body = np.nonzero(label[y] == cls)[0], np.nonzero(label[y] == BODY)[0]
        n += bool(body.size) and body.min() < xs.min() and body.max() > xs.max()
    return n


@pytest.fixture(scope="module")
def samples() -> list:
    return [render_sample(0, k) for k in range(20)]


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        generate_dataset(str(tmp_path / name), 3, 2, 1, seed=seed, min_size=32, max_size=64)
    a, b, c = (all_files(tmp_path / n) for n in "abc")
    assert a == b
    assert a.keys() == c.keys()
    images = [k for k in a if k.endswith(".jpg")]
    assert len(images) == 6 and all(a[k] != c[k] for k in images)


def test_layout_and_id_lists(tmp_path):
    ids = generate_dataset(str(tmp_path), 5, 3, 2, seed=1, min_size=40, max_size=80)
    assert {s: len(v) for s, v in ids.items()} == {"train": 5, "val": 3, "trainTest": 2}
    all_ids = [i for v in ids.values() for i in v]
    assert len(set(all_ids)) == 10
    shapes = set()
    for split, names in ids.items():
        assert (tmp_path / f"{split}_id.txt").read_text().split("\n") == names + [""]
        assert sorted(os.listdir(tmp_path / f"{split}_images")) == sorted(n + ".jpg" for n in names)
        assert sorted(os.listdir(tmp_path / f"{split}_segmentations")) == sorted(n + ".png" for n in names)
        for n in names:
            image = cv2.imread(str(tmp_path / f"{split}_images" / f"{n}.jpg"), cv2.IMREAD_UNCHANGED)
            label = cv2.imread(str(tmp_path / f"{split}_segmentations" / f"{n}.png"), cv2.IMREAD_UNCHANGED)
            assert image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8
            assert label.ndim == 2 and label.dtype == np.uint8 and label.shape == image.shape[:2]
            assert 40 <= min(label.shape) and max(label.shape) <= 80
            assert set(np.unique(label).tolist()) <= set(range(8))
            shapes.add(label.shape)
    assert any(h != w for h, w in shapes)  # non-square pictures occur
    assert check_dataset(tmp_path).ok


def test_png_label_is_the_rendered_label(tmp_path):
    generate_dataset(str(tmp_path), 2, 0, 0, seed=9)
    assert not (tmp_path / "val_id.txt").exists()
    label = cv2.imread(str(tmp_path / "train_segmentations" / "syn_00001.png"), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(label, render_sample(9, 1).label)


def test_every_class_in_nearly_every_image(samples):
    present = np.zeros(8, dtype=int)
    for s in samples:
        values = set(np.unique(s.label).tolist())
        assert values <= set(range(8))
        present += [c in values for c in range(8)]
    assert present.min() >= 18, present


def test_both_orientations_and_the_label_shows_them(samples):
    facings = [s.facing for s in samples]
    assert 3 <= facings.count("right") <= 17
    assert all(facing_of(s.label) == s.facing for s in samples)


def test_near_legs_are_the_visible_side_and_front_legs_by_the_head(samples):
    for s in samples:
        # Facing right shows the dog's left side: left legs drawn over the body.
        near, far = (
            ((LEFT_ARM, LEFT_LEG), (RIGHT_ARM, RIGHT_LEG))
            if s.facing == "right"
            else ((RIGHT_ARM, RIGHT_LEG), (LEFT_ARM, LEFT_LEG))
        )
        for n, f in zip(near, far, strict=True):
            assert rows_inside_body(s.label, n) > rows_inside_body(s.label, f)
        forward = 1 if s.facing == "right" else -1
        assert forward * (centroid_x(s.label, LEFT_ARM) - centroid_x(s.label, LEFT_LEG)) > 0
        assert forward * (centroid_x(s.label, RIGHT_ARM) - centroid_x(s.label, RIGHT_LEG)) > 0


@pytest.mark.parametrize("index", [0, 1, 2, 3])
def test_mirror_with_swapped_ids_is_the_other_facing(index):
    right = render_sample(2, index, facing="right")
    left = render_sample(2, index, facing="left")
    np.testing.assert_array_equal(DOG.flip_lut()[right.label[:, ::-1]], left.label)
    np.testing.assert_array_equal(right.image[:, ::-1], left.image)
    # The near legs (drawn over the body) are left legs facing right and right legs facing left.
    assert rows_inside_body(right.label, LEFT_ARM) > rows_inside_body(right.label, RIGHT_ARM)
    assert rows_inside_body(left.label, RIGHT_ARM) > rows_inside_body(left.label, LEFT_ARM)
    # Forcing the direction changes nothing else: the unforced picture is one of the two.
    free = render_sample(2, index)
    np.testing.assert_array_equal(free.label, (right if free.facing == "right" else left).label)


def test_contact_sheet_and_cli(tmp_path):
    samples = [render_sample(0, k, 40, 60) for k in range(4)]
    sheet = contact_sheet(samples, cell=32, columns=2)
    assert sheet.dtype == np.uint8 and sheet.shape == (2 * 38 + 6, 2 * (64 + 18) + 6, 3)
    png = tmp_path / "sheet.png"
    assert (
        main(
            [
                "--out",
                str(tmp_path / "d"),
                "--train",
                "2",
                "--val",
                "1",
                "--trainTest",
                "1",
                "--min-size",
                "32",
                "--max-size",
                "48",
                "--contact-sheet",
                str(png),
            ]
        )
        == 0
    )
    assert cv2.imread(str(png)).shape[2] == 3
    assert (tmp_path / "d" / "trainTest_id.txt").read_text() == "syn_00003\n"


def test_bad_arguments():
    with pytest.raises(ValueError, match="min_size"):
        render_sample(0, 0, min_size=50, max_size=40)
    with pytest.raises(ValueError, match="facing"):
        render_sample(0, 0, facing="up")
