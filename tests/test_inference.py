"""inference.predict with tiny fake networks: geometry back to the image, flip and multi-scale testing,
the evaluation loop (order, ground truth, errors) and the letterbox of parse_images."""

from __future__ import annotations

import os

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from inference.pipeline import ImageFiles, InferenceStats, letterbox, save_prediction
from inference.predict import evaluate_model, make_eval_loader, predict_labels, predict_probs
from utils.labels import DOG, LabelSet
from utils.transforms import box_to_center_scale, crop_to_image, get_affine_transform, warp_to_crop

# Written out by hand (not taken from utils.labels): mirroring swaps left/right arms (3, 4) and legs (5, 6).
MIRROR = [0, 1, 2, 4, 3, 6, 5, 7]


class PixelNet(nn.Module):
    """A 1x1 convolution plus a fixed position-dependent bias: asymmetric in x, distinct per channel.

    Returns DFPnet's list of 5 maps (the last is the prediction); works at any input size.
    """

    def __init__(self, num_classes: int = 8) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.conv = nn.Conv2d(3, num_classes, 1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(num_classes, 3, 1, 1, generator=gen))
            self.conv.bias.copy_(torch.randn(num_classes, generator=gen))
        self.slope = torch.linspace(-2.0, 3.0, num_classes).view(1, -1, 1, 1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        xs = torch.linspace(0.0, 1.0, x.shape[-1]).view(1, 1, 1, -1)
        ys = torch.linspace(0.0, 1.0, x.shape[-2]).view(1, 1, -1, 1)
        out = self.conv(x) + self.slope * xs + 0.3 * self.slope.flip(1) * ys
        return [torch.zeros_like(out)] * 4 + [out]


class OracleNet(nn.Module):
    """Reads the class id that the fake split stores in channel 0 and returns it as one-hot logits."""

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        ids = x[:, 0].round().long().clamp(0, 7)
        logits = F.one_hot(ids, 8).permute(0, 3, 1, 2).float() * 10.0
        return [logits] * 5


def blocky_label(height: int, width: int, seed: int, block: int = 8) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 8, (height // block + 1, width // block + 1)).astype(np.uint8)
    return np.kron(small, np.ones((block, block), np.uint8))[:height, :width]


class FakeSplit(torch.utils.data.Dataset):
    """A val-type split in memory: (image, meta) like CartoonDataSet, channel 0 = the warped label id."""

    def __init__(self, sizes, crop_size=(64, 48), bad_gt_index: int | None = None) -> None:
        self.ids = [f"img{i}" for i in range(len(sizes))]
        self.labels = [blocky_label(h, w, seed=i) for i, (h, w) in enumerate(sizes)]
        self.crop_size = crop_size
        self.ignore_label = 255
        self.bad_gt_index = bad_gt_index

    def __len__(self) -> int:
        return len(self.ids)

    def label_path(self, i: int) -> str:
        return f"/fake/{self.ids[i]}.png"

    def image_path(self, i: int) -> str:
        return f"/fake/{self.ids[i]}.jpg"

    def read_label(self, i: int) -> np.ndarray:
        if i == self.bad_gt_index:
            return np.zeros((3, 3), np.uint8)
        return self.labels[i]

    def __getitem__(self, i: int):
        label = self.labels[i]
        h, w = label.shape
        center, scale = box_to_center_scale(w, h, self.crop_size[1] / self.crop_size[0])
        matrix = get_affine_transform(center, scale, 0.0, self.crop_size)
        crop = warp_to_crop(label, matrix, self.crop_size, nearest=True, border_value=0)
        image = torch.from_numpy(crop).float()[None].repeat(3, 1, 1)
        meta = {
            "name": self.ids[i],
            "center": center,
            "scale": scale,
            "height": h,
            "width": w,
            "rotation": 0.0,
        }
        return image, meta


# ---------------------------------------------------------------------------------------------
# geometry
# ---------------------------------------------------------------------------------------------


def _interior(label: np.ndarray, margin: int) -> np.ndarray:
    """Pixels at least ``margin`` away from the image border and from any change of label."""
    h, w = label.shape
    keep = np.zeros_like(label, dtype=bool)
    keep[margin : h - margin, margin : w - margin] = True
    k = 2 * margin + 1
    kernel = np.ones((k, k), np.uint8)
    eroded_same = cv2.dilate(label, kernel) == cv2.erode(label, kernel)
    return keep & eroded_same


@pytest.mark.parametrize(
    "size",
    [(90, 50), (50, 90), (37, 61), (61, 37)],
    ids=["portrait", "landscape", "odd-landscape", "odd-portrait"],
)
@pytest.mark.parametrize("crop", [(64, 48), (128, 128)])
def test_crop_and_back_recovers_the_label(size, crop):
    h, w = size
    label = blocky_label(h, w, seed=h * w, block=12)
    center, scale = box_to_center_scale(w, h, crop[1] / crop[0])
    to_crop = get_affine_transform(center, scale, 0.0, crop)
    in_crop = warp_to_crop(label, to_crop, crop, nearest=True, border_value=255)
    back = crop_to_image(in_crop, center, scale, w, h, crop)
    assert back.shape == (h, w)
    inside = _interior(label, margin=2)
    assert inside.sum() > 0.3 * h * w
    assert np.array_equal(back[inside], label[inside])
    assert (back == label).mean() > 0.9


def test_truncated_centers_shift_the_warp_back():
    # An even width puts the float center on a half pixel; int32 truncation moves it by 0.5 px.
    h, w, crop = (41, 30, (128, 128))
    center, scale = box_to_center_scale(w, h, 1.0)
    assert center[0] == pytest.approx(14.5)
    pred = np.tile(np.arange(128, dtype=np.uint8) % 7, (128, 1))  # stripes along x
    exact = crop_to_image(pred, center, scale, w, h, crop)
    shifted = crop_to_image(pred, center, scale, w, h, crop, truncate_center=True)
    assert not np.array_equal(exact, shifted)


# ---------------------------------------------------------------------------------------------
# flip and scales
# ---------------------------------------------------------------------------------------------


def _expected_flip(model, images):
    """The mirrored-and-swapped average, computed independently of inference.predict."""
    with torch.no_grad():
        p = model(images)[-1].softmax(1)
        q = model(images.flip(-1))[-1].softmax(1).flip(-1)[:, MIRROR]
    return 0.5 * (p + q)


def test_flip_testing_is_the_mirrored_and_swapped_average():
    torch.manual_seed(0)
    model = PixelNet().eval()
    images = torch.randn(2, 3, 12, 17)
    got = predict_probs(model, images, label_set=DOG, flip=True)
    assert got.shape == (2, 8, 12, 17)
    torch.testing.assert_close(got, _expected_flip(model, images), rtol=0, atol=1e-6)
    plain = predict_probs(model, images, label_set=DOG)
    assert (got - plain).abs().max() > 1e-2  # the network is asymmetric: flipping changes something
    torch.testing.assert_close(got.sum(1), torch.ones(2, 12, 17))


@pytest.mark.parametrize("pairs", [[], [[3, 5], [4, 6]]], ids=["no-swap", "wrong-pairs"])
def test_flip_check_catches_a_wrong_channel_swap(pairs):
    model = PixelNet().eval()
    images = torch.randn(1, 3, 10, 13, generator=torch.Generator().manual_seed(1))
    wrong = LabelSet.from_dict({"names": list(DOG.names), "flip_pairs": pairs}, "wrong pairs")
    with pytest.raises(AssertionError):
        torch.testing.assert_close(
            predict_probs(model, images, label_set=wrong, flip=True),
            _expected_flip(model, images),
            rtol=0,
            atol=1e-6,
        )


def test_flip_testing_swaps_the_pairs_of_another_label_set():
    # Six classes whose one left/right pair sits at ids 5 and 2; written out by hand.
    wings = LabelSet.from_dict(
        {
            "names": ["bg", "tail", "right_wing", "body", "head", "left_wing"],
            "flip_pairs": [["left_wing", "right_wing"]],
        },
        "wings",
    )
    model = PixelNet(6).eval()
    images = torch.randn(2, 3, 9, 14, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        p = model(images)[-1].softmax(1)
        q = model(images.flip(-1))[-1].softmax(1).flip(-1)[:, [0, 1, 5, 3, 4, 2]]
    torch.testing.assert_close(
        predict_probs(model, images, label_set=wings, flip=True), 0.5 * (p + q), rtol=0, atol=1e-6
    )


def test_single_scale_equals_the_plain_prediction():
    model = PixelNet().eval()
    images = torch.randn(2, 3, 15, 22, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = model(images)[-1].softmax(1)
    got = predict_probs(model, images, label_set=DOG, scales=(1.0,))
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert torch.equal(predict_labels(model, images, label_set=DOG), expected.argmax(1).to(torch.uint8))


def test_min_confidence_unlabels_exactly_the_pixels_below_it():
    model = PixelNet().eval()
    images = torch.randn(2, 3, 15, 22, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        probs = model(images)[-1].softmax(1)
    threshold = float(probs.max(1).values.median())
    got = predict_labels(model, images, label_set=DOG, min_confidence=threshold)
    want = probs.argmax(1).to(torch.uint8)
    want[probs.max(1).values < threshold] = 255
    assert torch.equal(got, want) and 0 < int((got == 255).sum()) < got.numel()


def test_multi_scale_averages_at_the_crop_size():
    model = PixelNet().eval()
    images = torch.randn(1, 3, 33, 47, generator=torch.Generator().manual_seed(3))
    scales = (0.5, 0.75, 1.25)
    got = predict_probs(model, images, label_set=DOG, scales=scales)
    assert got.shape == (1, 8, 33, 47)
    expected = 0
    with torch.no_grad():
        for s in scales:
            size = (round(33 * s), round(47 * s))
            x = F.interpolate(images, size=size, mode="bilinear", align_corners=True)
            out = F.interpolate(model(x)[-1], size=(33, 47), mode="bilinear", align_corners=True)
            expected = expected + out.softmax(1) / len(scales)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    both = predict_probs(model, images, label_set=DOG, scales=(0.75, 1.0), flip=True)
    assert both.shape == (1, 8, 33, 47)
    torch.testing.assert_close(both.sum(1), torch.ones(1, 33, 47))
    for bad in [(), (0.0,), (1.0, -0.5)]:
        with pytest.raises(ValueError, match="scales"):
            predict_probs(model, images, label_set=DOG, scales=bad)


def test_amp_runs_and_wrong_class_count_is_named():
    model = PixelNet().eval()
    images = torch.randn(1, 3, 8, 8)
    assert predict_probs(model, images, label_set=DOG, amp="bf16").dtype == torch.float32
    five = LabelSet.from_dict({"names": ["a", "b", "c", "d", "e"]}, "five")
    with pytest.raises(ValueError, match="N x 5 x H x W"):
        predict_probs(model, images, label_set=five)
    with pytest.raises(ValueError, match="amp"):
        predict_probs(model, images, label_set=DOG, amp="fp8")


# ---------------------------------------------------------------------------------------------
# the evaluation loop
# ---------------------------------------------------------------------------------------------

SIZES = [(70, 40), (40, 70), (55, 55), (33, 81), (90, 31)]


def test_evaluate_model_scores_at_the_original_size_in_any_order():
    split = FakeSplit(SIZES)
    torch.manual_seed(0)
    loader = torch.utils.data.DataLoader(split, batch_size=2, shuffle=True)  # order must not matter
    seen = {}

    def record(name, label, index):
        seen[name] = index
        gt = split.read_label(index)
        assert label.shape == gt.shape and label.dtype == np.uint8
        assert (label == gt).mean() > 0.8  # right image: a wrong index would be near 1/8

    model = OracleNet().train()
    stats = InferenceStats()
    cm = evaluate_model(
        model, split, loader, "cpu", label_set=DOG, progress=False, on_prediction=record, stats=stats
    )
    assert model.training  # the caller's mode is given back
    assert seen == {name: i for i, name in enumerate(split.ids)}
    assert cm.mat.sum() == sum(h * w for h, w in SIZES)  # every original pixel, once
    assert stats.images == len(SIZES) and stats.seconds >= stats.network_seconds > 0
    assert cm.compute()["pixel_accuracy"] > 85.0  # only the crop's resolution is lost


def test_evaluate_model_warps_back_with_the_chosen_centers():
    split = FakeSplit(SIZES)
    got = {False: {}, True: {}}
    for truncate in (False, True):
        evaluate_model(
            OracleNet(),
            split,
            make_eval_loader(split, batch_size=3, workers=0),
            "cpu",
            label_set=DOG,
            truncate_centers=truncate,
            progress=False,
            on_prediction=lambda name, label, index, t=truncate: got[t].__setitem__(index, label),
        )
    differ = 0
    for i in range(len(split)):
        image, meta = split[i]
        crop = image[0].numpy().astype(np.uint8)  # what the oracle predicts at the crop size
        for truncate in (False, True):
            expected = crop_to_image(
                crop,
                meta["center"],
                meta["scale"],
                meta["width"],
                meta["height"],
                split.crop_size,
                truncate_center=truncate,
            )
            assert np.array_equal(got[truncate][i], expected)
        differ += not np.array_equal(got[False][i], got[True][i])
    assert differ > 0  # the check can tell the two apart


def test_evaluate_model_counts_a_repeated_image_once():
    split = FakeSplit(SIZES[:2])
    loader = torch.utils.data.DataLoader(split, batch_size=1, sampler=[0, 1, 0])  # like a padded sampler
    cm = evaluate_model(OracleNet(), split, loader, "cpu", label_set=DOG, progress=False)
    assert cm.mat.sum() == sum(h * w for h, w in SIZES[:2])


def test_ground_truth_of_another_size_names_the_file():
    split = FakeSplit(SIZES, bad_gt_index=3)
    loader = make_eval_loader(split, batch_size=2, workers=0)
    message = r"/fake/img3\.png: ground truth is 3x3 \(WxH\) but its image is 81x33"
    with pytest.raises(ValueError, match=message):
        evaluate_model(OracleNet(), split, loader, "cpu", label_set=DOG, progress=False)


def test_make_eval_loader_covers_every_image_once():
    split = FakeSplit(SIZES)
    names = [n for _, meta in make_eval_loader(split, batch_size=2, workers=0) for n in meta["name"]]
    assert names == split.ids


# ---------------------------------------------------------------------------------------------
# images without ground truth
# ---------------------------------------------------------------------------------------------


def test_image_files_letterbox_exactly_like_the_loader(tmp_path):
    from dataset.datasets import CartoonDataSet, default_transform
    from dataset.synthetic import generate_dataset

    generate_dataset(str(tmp_path), 0, 2, 0, seed=0, min_size=30, max_size=70)
    val = CartoonDataSet(str(tmp_path), "val", crop_size=(48, 40), transform=default_transform())
    files = ImageFiles([val.image_path(i) for i in range(len(val))] + [str(tmp_path / "nope.jpg")], (48, 40))
    for i in range(len(val)):
        image, meta = val[i]
        mine, my_meta = files[i]
        assert torch.equal(image, torch.from_numpy(mine))  # numpy here; the DataLoader makes it a tensor
        for key in ("center", "scale"):
            assert np.array_equal(meta[key], my_meta[key])
        assert (meta["height"], meta["width"]) == (my_meta["height"], my_meta["width"])
        assert my_meta["error"] == "" and my_meta["name"] == val.ids[i]
    image, meta = files[len(val)]
    assert image.shape == (3, 48, 40) and meta["error"] == "no such file"


def test_image_files_make_names_unique_and_letterbox_keeps_the_whole_image(tmp_path):
    files = ImageFiles(["a/dog.png", "b/dog.jpg", "c/cat.webp"], (32, 32))
    assert files.names == ["dog", "dog_2", "cat"]
    image = np.full((20, 60, 3), 200, np.uint8)
    crop, center, scale = letterbox(image, (32, 32))
    assert crop.shape == (32, 32, 3)
    assert crop[16, 1].tolist() == [200, 200, 200] and crop[1, 16].tolist() == [0, 0, 0]  # bars top/bottom


def test_save_prediction_writes_three_pictures(tmp_path):
    label = blocky_label(30, 45, seed=0, block=5)
    image = np.full((30, 45, 3), 90, np.uint8)
    paths = save_prediction(str(tmp_path / "out"), "x", label, image, label_set=DOG)
    assert [os.path.basename(p) for p in paths] == ["x_label.png", "x_color.png", "x_overlay.jpg"]
    assert np.array_equal(cv2.imread(paths[0], cv2.IMREAD_UNCHANGED), label)
    assert cv2.imread(paths[1]).shape == (30, 45, 3) and cv2.imread(paths[2]).shape == (30, 45, 3)
