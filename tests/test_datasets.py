"""CartoonDataSet against docs/reference.md section 3, computed independently here (no utils.transforms)."""

from __future__ import annotations

import os
import random

import cv2
import numpy as np
import pytest
import torch

from dataset.datasets import (
    CartoonDataSet,
    default_transform,
    is_training_split,
    label_edges,
    normalize_image,
)
from inference.visualize import denormalize_image


# --------------------------------------------------------------------------- helpers
def write_split(root, split: str, samples: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    """Write ``{id: (bgr image, label)}`` in the authors' layout."""
    os.makedirs(root / f"{split}_images", exist_ok=True)
    os.makedirs(root / f"{split}_segmentations", exist_ok=True)
    for name, (image, label) in samples.items():
        assert cv2.imwrite(str(root / f"{split}_images" / f"{name}.jpg"), image)
        assert cv2.imwrite(str(root / f"{split}_segmentations" / f"{name}.png"), label)
    (root / f"{split}_id.txt").write_text("".join(f"{n}\n" for n in samples))


def random_sample(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Noise picture and a blocky label holding every class id and some 255."""
    image = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    ids = np.array([0, 1, 2, 3, 4, 5, 6, 7, 255], dtype=np.uint8)
    coarse = rng.choice(ids, size=(height // 4 + 1, width // 4 + 1))
    label = np.ascontiguousarray(np.kron(coarse, np.ones((4, 4), np.uint8))[:height, :width])
    return image, label


def expected_matrix(width: int, height: int, crop_h: int, crop_w: int) -> np.ndarray:
    """docs/reference.md sections 3.2 and 3.4 solved by hand: a uniform scale k = crop_w / scale_w
    about the centers."""
    w, h = width - 1, height - 1
    ar = crop_w / crop_h
    scale_w = w if w >= ar * h else h * ar
    k = crop_w / scale_w
    cx, cy = w / 2, h / 2
    return np.array([[k, 0.0, crop_w / 2 - k * cx], [0.0, k, crop_h / 2 - k * cy]])


def seed_all(seed: int) -> None:
    np.random.seed(seed)
    random.seed(seed)


# --------------------------------------------------------------------------- geometry
@pytest.mark.parametrize(
    "width,height,crop",
    [
        (121, 41, (40, 60)),  # wide image, height widened to the crop's aspect (letterbox)
        (41, 121, (60, 40)),  # tall image, width widened (pillarbox)
        (31, 21, (40, 60)),  # same aspect, upscaled x2
    ],
)
def test_no_augmentation_matches_hand_written_affine(tmp_path, width, height, crop):
    image, label = random_sample(np.random.default_rng(0), height, width)
    write_split(tmp_path, "train", {"a": (image, label)})
    ds = CartoonDataSet(tmp_path, "train", crop_size=crop, scale_factor=0, rotation_factor=0, flip_prob=0)
    seed_all(0)
    out_image, out_label, edge, meta = ds[0]

    jpeg = cv2.imread(str(tmp_path / "train_images" / "a.jpg"), cv2.IMREAD_COLOR)
    m = expected_matrix(width, height, *crop)
    want_image = cv2.warpAffine(
        jpeg,
        m,
        (crop[1], crop[0]),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=(0, 0, 0),
    )
    want_label = cv2.warpAffine(
        label, m, (crop[1], crop[0]), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT, borderValue=255
    )
    assert out_image.dtype == np.uint8 and out_image.shape == (crop[0], crop[1], 3)
    assert out_label.dtype == np.int64 and out_label.shape == crop
    np.testing.assert_array_equal(out_image, want_image)
    np.testing.assert_array_equal(out_label, want_label.astype(np.int64))
    np.testing.assert_array_equal(meta["center"], [(width - 1) / 2, (height - 1) / 2])
    assert meta["center"].dtype == np.float32 and meta["scale"].dtype == np.float32
    assert (meta["height"], meta["width"], meta["rotation"]) == (height, width, 0.0)
    # The letterbox border is ignore (255), never background.
    assert (out_label == 255).any() or (width - 1) * crop[0] == (height - 1) * crop[1]


def test_non_square_general_case_close_to_hand_written_affine(tmp_path):
    # Scales that are not powers of two: fixed-point rounding may move a rare pixel.
    width, height, crop = 57, 33, (24, 40)
    image, label = random_sample(np.random.default_rng(1), height, width)
    write_split(tmp_path, "train", {"a": (image, label)})
    ds = CartoonDataSet(tmp_path, "train", crop_size=crop, scale_factor=0, rotation_factor=0, flip_prob=0)
    out_image, out_label, _, _ = ds[0]
    jpeg = cv2.imread(str(tmp_path / "train_images" / "a.jpg"))
    m = expected_matrix(width, height, *crop)
    want_image = cv2.warpAffine(jpeg, m, (crop[1], crop[0]), flags=cv2.INTER_LINEAR)
    want_label = cv2.warpAffine(
        label, m, (crop[1], crop[0]), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT, borderValue=255
    )
    assert np.abs(out_image.astype(int) - want_image.astype(int)).max() <= 1
    assert (out_label == want_label).mean() >= 0.99


def test_flip_mirrors_and_swaps_sides(tmp_path):
    image, label = random_sample(np.random.default_rng(2), 41, 121)
    write_split(tmp_path, "train", {"a": (image, label)})
    common = dict(crop_size=(40, 60), scale_factor=0, rotation_factor=0)
    flipped = CartoonDataSet(tmp_path, "train", flip_prob=1, **common)
    plain = CartoonDataSet(tmp_path, "train", flip_prob=0, **common)
    seed_all(0)
    f_image, f_label, _, _ = flipped[0]
    seed_all(0)
    p_image, p_label, _, _ = plain[0]
    swap = np.array([0, 1, 2, 4, 3, 6, 5, 7])
    mirrored_label = np.where(p_label[:, ::-1] == 255, 255, swap[np.minimum(p_label[:, ::-1], 7)])
    # The authors map the center (w-1)/2 to crop_w/2, not (crop_w-1)/2: their flip is the
    # array mirror shifted by one crop column. Column 0 has no mirrored counterpart.
    np.testing.assert_array_equal(f_image[:, 1:], p_image[:, ::-1][:, :-1])
    np.testing.assert_array_equal(f_label[:, 1:], mirrored_label[:, :-1])
    assert not np.array_equal(f_label, p_label)
    assert {3, 4, 5, 6} <= set(np.unique(f_label).tolist())


# --------------------------------------------------------------------------- random draws
@pytest.fixture()
def tiny_train(tmp_path):
    rng = np.random.default_rng(3)
    write_split(tmp_path, "train", {f"s{i}": random_sample(rng, 21 + 4 * i, 33) for i in range(3)})
    write_split(tmp_path, "val", {f"v{i}": random_sample(rng, 25, 19 + 6 * i) for i in range(2)})
    return tmp_path


def manual_draws(sf: float = 0.25, rf: float = 30.0, flip_prob: float = 0.5) -> tuple[float, float, bool]:
    """docs/reference.md section 3.3 written out: numpy scale, Python gate, numpy angle inside the
    gate, Python flip."""
    s = np.clip(np.random.randn() * sf + 1, 1 - sf, 1 + sf)
    r = np.clip(np.random.randn() * rf, -2 * rf, 2 * rf) if random.random() <= 0.6 else 0
    flip = random.random() <= flip_prob
    return float(s), float(r), flip


def test_draw_order_matches_spec(tiny_train):
    ds = CartoonDataSet(tiny_train, "train", crop_size=(16, 24))
    no_flip = CartoonDataSet(tiny_train, "train", crop_size=(16, 24), flip_prob=0)
    saw_flip = saw_no_flip = saw_rotation = False
    for seed in range(20):
        seed_all(seed)
        s, r, flip = manual_draws()
        next_np, next_py = np.random.randn(), random.random()
        seed_all(seed)
        image, _, _, meta = ds[1]
        # The streams are where the manual draws left them: nothing more, nothing less was drawn.
        assert (np.random.randn(), random.random()) == (next_np, next_py)
        seed_all(seed)
        plain_image, _, _, plain_meta = no_flip[1]
        assert (np.random.randn(), random.random()) == (next_np, next_py)

        _, base_scale = _center_scale(25, 33, 24 / 16)  # item 1 is 25 x 33
        np.testing.assert_allclose(meta["scale"], base_scale * s, rtol=1e-6)
        assert meta["rotation"] == pytest.approx(r)
        assert plain_meta["rotation"] == meta["rotation"]
        assert np.array_equal(image, plain_image) == (not flip)
        saw_flip |= flip
        saw_no_flip |= not flip
        saw_rotation |= r != 0
    assert saw_flip and saw_no_flip and saw_rotation


def _center_scale(height: int, width: int, ar: float) -> tuple[np.ndarray, np.ndarray]:
    w, h = width - 1, height - 1
    return np.array([w / 2, h / 2]), np.array([w, w / ar] if w >= ar * h else [h * ar, h])


def test_scale_and_rotation_stay_in_spec_ranges(tiny_train):
    ds = CartoonDataSet(tiny_train, "train", crop_size=(12, 12))
    seed_all(123)
    _, base_scale = _center_scale(21, 33, 1.0)
    ratios, rotations = [], []
    for _ in range(300):
        _, _, _, meta = ds[0]
        ratios.append(meta["scale"][0] / base_scale[0])
        rotations.append(meta["rotation"])
    ratios, rotations = np.array(ratios), np.array(rotations)
    assert ratios.min() >= 0.75 - 1e-6 and ratios.max() <= 1.25 + 1e-6
    assert np.isclose(ratios, 0.75, atol=1e-6).any() and np.isclose(ratios, 1.25, atol=1e-6).any()
    assert np.abs(rotations).max() <= 60
    assert 0.25 < (rotations == 0).mean() < 0.55  # 40 % are not rotated
    assert np.abs(rotations).max() > 30  # but the others spread to +-2 rf


def test_zero_factors_never_augment(tiny_train):
    ds = CartoonDataSet(
        tiny_train, "train", crop_size=(16, 16), scale_factor=0, rotation_factor=0, flip_prob=0
    )
    seed_all(7)
    first = ds[2]
    for seed in range(30):
        seed_all(seed)
        image, label, _, meta = ds[2]
        assert meta["rotation"] == 0.0
        np.testing.assert_array_equal(image, first[0])
        np.testing.assert_array_equal(label, first[1])


def test_same_seed_same_sample(tiny_train):
    ds = CartoonDataSet(tiny_train, "train", crop_size=(20, 28))
    seed_all(11)
    a = ds[0]
    seed_all(11)
    b = ds[0]
    for x, y in zip(a[:3], b[:3], strict=True):
        np.testing.assert_array_equal(x, y)
    assert a[3]["rotation"] == b[3]["rotation"]


def test_default_collate_batches_training_items(tiny_train):
    ds = CartoonDataSet(tiny_train, "train", crop_size=(16, 24), transform=default_transform())
    image, label, edge, meta = next(iter(torch.utils.data.DataLoader(ds, batch_size=3, shuffle=False)))
    assert image.shape == (3, 3, 16, 24) and image.dtype == torch.float32
    assert label.shape == (3, 16, 24) and label.dtype == torch.int64
    assert edge.shape == (3, 16, 24) and edge.dtype == torch.uint8
    assert meta["center"].shape == (3, 2) and meta["center"].dtype == torch.float32
    assert meta["scale"].shape == (3, 2) and meta["scale"].dtype == torch.float32
    assert meta["name"] == ["s0", "s1", "s2"]
    assert meta["height"].tolist() == [21, 25, 29] and meta["width"].tolist() == [33, 33, 33]
    assert meta["rotation"].shape == (3,)
    assert set(torch.unique(label).tolist()) <= set(range(8)) | {255}


def test_eval_split_returns_image_and_meta_without_reading_labels(tiny_train):
    ds = CartoonDataSet(tiny_train, "val", crop_size=(32, 32))
    item = ds[1]
    assert len(item) == 2
    image, meta = item
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8
    assert (meta["height"], meta["width"], meta["rotation"]) == (25, 25, 0.0)
    label = ds.read_label(1)
    assert label.dtype == np.uint8 and label.shape == (25, 25)
    assert ds.label_path(1).endswith(os.path.join("val_segmentations", "v1.png"))
    assert ds.image_path(0).endswith(os.path.join("val_images", "v0.jpg"))
    # Evaluation items never touch the label file.
    os.remove(ds.label_path(1))
    image2, _ = ds[1]
    np.testing.assert_array_equal(image, image2)
    with pytest.raises(FileNotFoundError, match="v1.png"):
        ds.read_label(1)
    tensor_image, _ = CartoonDataSet(tiny_train, "val", crop_size=(32, 32), transform=default_transform())[1]
    assert tensor_image.shape == (3, 32, 32) and tensor_image.dtype == torch.float32


def test_split_kinds():
    assert is_training_split("train") and is_training_split("trainval")
    assert not any(is_training_split(s) for s in ("trainTest", "val", "test"))


# --------------------------------------------------------------------------- errors
def test_missing_id_list_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="val_id.txt"):
        CartoonDataSet(tmp_path, "val")


def test_missing_data_dir_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        CartoonDataSet(tmp_path / "nowhere", "train")


def test_missing_image_names_the_file(tiny_train):
    os.remove(tiny_train / "train_images" / "s1.jpg")
    with pytest.raises(FileNotFoundError, match="s1.jpg"):
        CartoonDataSet(tiny_train, "train")


def test_missing_label_folder_names_it(tiny_train):
    for f in os.listdir(tiny_train / "train_segmentations"):
        os.remove(tiny_train / "train_segmentations" / f)
    os.rmdir(tiny_train / "train_segmentations")
    with pytest.raises(FileNotFoundError, match="train_segmentations"):
        CartoonDataSet(tiny_train, "train")


def test_empty_id_list_is_an_error(tiny_train):
    (tiny_train / "train_id.txt").write_text("\n  \n")
    with pytest.raises(ValueError, match="train_id.txt"):
        CartoonDataSet(tiny_train, "train")


def test_id_list_strips_blanks(tiny_train):
    (tiny_train / "train_id.txt").write_text(" s0 \n\ns2\r\n\n")
    assert CartoonDataSet(tiny_train, "train").ids == ["s0", "s2"]


@pytest.mark.parametrize("content", [b"", b"this is not a jpeg"])
def test_unreadable_image_names_the_file(tiny_train, content):
    (tiny_train / "train_images" / "s2.jpg").write_bytes(content)
    ds = CartoonDataSet(tiny_train, "train", crop_size=(8, 8))
    with pytest.raises(ValueError, match="s2.jpg"):
        ds[2]


def test_label_size_mismatch_names_the_file(tiny_train):
    cv2.imwrite(str(tiny_train / "train_segmentations" / "s0.png"), np.zeros((5, 5), np.uint8))
    with pytest.raises(ValueError, match="s0.png"):
        CartoonDataSet(tiny_train, "train", crop_size=(8, 8))[0]


def test_label_out_of_range_names_the_file(tiny_train):
    cv2.imwrite(str(tiny_train / "train_segmentations" / "s0.png"), np.full((21, 33), 9, np.uint8))
    with pytest.raises(ValueError, match=r"s0.png.*\[9\]"):
        CartoonDataSet(tiny_train, "train", crop_size=(8, 8))[0]


# --------------------------------------------------------------------------- edges and transforms
def test_label_edges_by_hand():
    label = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [255, 255, 1, 1], [2, 2, 2, 2]], dtype=np.uint8)
    want = np.array([[0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 1, 1], [0, 0, 1, 1]], dtype=np.uint8)
    edge = label_edges(label)
    assert edge.dtype == np.uint8
    np.testing.assert_array_equal(edge, want)


# ImageNet's statistics (RGB order), written here rather than read from the module under test.
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def test_normalisation_keeps_bgr_channel_order():
    """The mean and std of R, G, B are applied to channels 0, 1, 2 of the BGR array as they are."""
    image = np.zeros((2, 3, 3), dtype=np.uint8)
    image[0, 0] = (255, 0, 0)  # pure blue in BGR
    image[1, 2] = (10, 128, 250)
    t = normalize_image(image)
    assert t.shape == (3, 2, 3) and t.dtype == torch.float32
    for c in range(3):
        mean, std = IMAGENET_MEAN[c], IMAGENET_STD[c]
        assert t[c, 0, 0].item() == pytest.approx(((255 if c == 0 else 0) / 255 - mean) / std, abs=1e-6)
        assert t[c, 1, 2].item() == pytest.approx(((10, 128, 250)[c] / 255 - mean) / std, abs=1e-6)
    np.testing.assert_array_equal(denormalize_image(t), image)


def test_default_transform_types():
    image = np.full((4, 5, 3), 7, np.uint8)
    label = np.full((4, 5), 3, np.int64)
    edge = np.zeros((4, 5), np.uint8)
    image_t, label_t, edge_t = default_transform()(image, label, edge)
    assert image_t.dtype == torch.float32 and label_t.dtype == torch.int64 and edge_t.dtype == torch.uint8
    assert default_transform()(image)[1:] == (None, None)
