"""What users run, checked by value: evaluate.py and parse_images.py with --flip and --scales (PyTorch
and --onnx), export.py's --output probs / labels and --static, and export.py's refusals.

One small network serves every test: DFPNet(8) for the Dog set with random weights (seed 0), its
residual branches damped (well-conditioned in float32) and its norms calibrated on the test images
(one pass with batch statistics, momentum 1), so that its prediction varies over each image and is
left/right asymmetric: flip testing changes many pixels (``test_the_expectation_is_not_vacuous``
makes sure of it).

The expectation is computed here, without inference/ or utils/transforms.py: the letterbox as an
explicit 2 x 3 matrix (the whole image scaled uniformly into the crop, centre onto centre), the
ImageNet mean and std written out and applied to the B, G, R channels as they are, the network run
directly (unfused), ``torch.flip`` with the Dog set's left/right channels swapped, softmax
probabilities averaged over the views and scales, argmax, then the inverse matrix back to the image
(nearest). A pixel whose top two averaged probabilities lie within 1e-4 may take any of those
classes (the scripts run the fused network or onnxruntime: float rounding); every other pixel must
be that class. The PyTorch runs use ``--amp off`` (the CPU default may be bf16) and otherwise the
scripts' defaults (fused, channels-last).

tests/test_deploy.py already checks the onnxruntime path against PyTorch's (not against an
expectation of its own), the logits model's metadata and dynamic shapes, and a garbage checkpoint
given to export.py: not repeated here. Three exports (the default dynamic one, probs and labels
static; about 30 s of the file's 45-60 s on 2 cores) make the tests that need them slow.
"""

from __future__ import annotations

import copy
import glob
import json
import os

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import evaluate
import export
import parse_images
from inference.onnx_infer import OnnxModel
from libs.abn import _ActivatedBatchNorm
from networks.backbone import Bottleneck
from networks.dfpnet import DFPNet
from tests.scripts import run_main
from utils.checkpoint import save_atomic
from utils.labels import DOG

SIZE = (32, 32)  # --input-size: height, width
MEAN = (0.485, 0.456, 0.406)  # ImageNet's, on channels 0, 1, 2 of the BGR image as they are
STD = (0.229, 0.224, 0.225)
TIE = 1e-4  # averaged probabilities this close may take either class
IGNORE = 255
SETTINGS = {
    "plain": (False, (1.0,)),
    "flip": (True, (1.0,)),
    "scales": (False, (0.5, 1.0)),
    "flip+scales": (True, (0.75, 1.0)),
}


def setting_flags(setting: str) -> list[str]:
    flip, scales = SETTINGS[setting]
    scaled = ["--scales", ",".join(map(str, scales))] if scales != (1.0,) else []
    return (["--flip"] if flip else []) + scaled


# ---------------------------------------------------------------------------------------------
# the independent expectation
# ---------------------------------------------------------------------------------------------


def letterbox_matrix(width: int, height: int) -> np.ndarray:
    """Image -> crop: the pixel centres 0..w-1, 0..h-1 scaled uniformly to fit the crop, centre onto
    centre (the box's width, widened to the crop's aspect ratio if the image is taller, spans the crop)."""
    crop_h, crop_w = SIZE
    span = max(width - 1.0, (crop_w / crop_h) * (height - 1.0))
    s = crop_w / span
    return np.array([[s, 0.0, crop_w / 2 - s * (width - 1) / 2], [0.0, s, crop_h / 2 - s * (height - 1) / 2]])


def network_input(image_bgr: np.ndarray) -> torch.Tensor:
    """1 x 3 x H x W float32: the letterboxed crop (bilinear, border 0), x / 255, minus mean, over std."""
    matrix = letterbox_matrix(image_bgr.shape[1], image_bgr.shape[0])
    crop = cv2.warpAffine(
        image_bgr,
        matrix,
        (SIZE[1], SIZE[0]),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=(0, 0, 0),
    )
    x = (crop.astype(np.float64) / 255.0 - np.array(MEAN)) / np.array(STD)
    return torch.from_numpy(x.transpose(2, 0, 1).copy()).float()[None]


def swap_left_right() -> list[int]:
    """Channel permutation that exchanges each of the Dog set's left/right pairs."""
    perm = list(range(DOG.num_classes))
    for a, b in DOG.flip_pairs:
        perm[a], perm[b] = b, a
    return perm


def expected_probs(
    model: torch.nn.Module, x: torch.Tensor, flip: bool, scales: tuple[float, ...], swap: bool = True
):
    """Softmax probabilities at the crop size, averaged over the views (and their mirror) and scales;
    ``swap=False`` leaves the mirror's left/right channels as they are (wrong: to show it matters)."""
    perm = swap_left_right() if swap else list(range(DOG.num_classes))
    total = torch.zeros(x.shape[0], DOG.num_classes, *SIZE)
    with torch.no_grad():
        for s in scales:
            size = (round(SIZE[0] * s), round(SIZE[1] * s))
            view = x if size == SIZE else F.interpolate(x, size=size, mode="bilinear", align_corners=True)
            for mirrored in [False, True] if flip else [False]:
                logits = model(torch.flip(view, dims=[3]) if mirrored else view)[-1]
                probs = F.interpolate(logits, size=SIZE, mode="bilinear", align_corners=True).softmax(1)
                if mirrored:
                    probs = torch.flip(probs, dims=[3])[:, perm]
                total += probs / (len(scales) * (2 if flip else 1))
    return total


def to_image(crop_map: np.ndarray, width: int, height: int, border: int = 0) -> np.ndarray:
    """A crop-sized uint8 map back onto the image (inverse letterbox, nearest, ``border`` outside)."""
    back = cv2.invertAffineTransform(letterbox_matrix(width, height))
    return cv2.warpAffine(
        crop_map.astype(np.uint8),
        back,
        (width, height),
        flags=cv2.INTER_NEAREST,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=border,
    )


class Expected:
    """One image's expected labels at its size (``label``) and the classes each pixel may take
    (``allowed``: bit c set for every class within TIE of the top probability; the label included)."""

    def __init__(self, probs: torch.Tensor, width: int, height: int) -> None:
        p = probs[0]
        top = p.max(0).values
        bits = sum(((top - p[c]) < TIE).to(torch.int64) << c for c in range(DOG.num_classes))
        self.crop_label = p.argmax(0).numpy().astype(np.uint8)
        self.label = to_image(self.crop_label, width, height)
        self.allowed = to_image(bits.numpy(), width, height, border=1)  # outside the crop: class 0 only

    def ambiguous(self) -> np.ndarray:
        return (self.allowed & (self.allowed - 1)) != 0  # more than one bit

    def accepts(self, got: np.ndarray) -> np.ndarray:
        """Per pixel: ``got`` is an allowed class there."""
        return ((self.allowed.astype(np.int64) >> got.astype(np.int64)) & 1).astype(bool)


def mean_iou(mat: np.ndarray) -> float:
    """The authors' mean IU in percent: IoU_c = tp / max(1, gt + pred - tp), averaged over all classes."""
    tp = np.diag(mat).astype(np.float64)
    return float(100 * np.mean(tp / np.maximum(1, mat.sum(1) + mat.sum(0) - tp)))


# ---------------------------------------------------------------------------------------------
# set-up: data, the network, its expectation, its exports
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Three synthetic val images, 40 to 56 pixels a side, with their ground truth."""
    from dataset.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("values") / "data"
    generate_dataset(str(root), 0, 3, 0, seed=0, min_size=40, max_size=56)
    return root


def _images(data) -> dict[str, np.ndarray]:
    paths = sorted(glob.glob(str(data / "val_images" / "*.jpg")))
    return {os.path.splitext(os.path.basename(p))[0]: cv2.imread(p, cv2.IMREAD_COLOR) for p in paths}


@pytest.fixture(scope="module")
def network(data, tmp_path_factory):
    """(eval-mode DFPNet(8), its checkpoint as train.py saves it: the state_dict, no label set)."""
    torch.manual_seed(0)
    model = DFPNet(DOG.num_classes).eval()
    norms = [m for m in model.modules() if isinstance(m, _ActivatedBatchNorm)]
    momentum = norms[0].momentum
    x = torch.cat([network_input(image) for image in _images(data).values()])
    with torch.no_grad():
        # Residual branches damped: a random ResNet-101 otherwise amplifies float32 rounding to ~1e-3
        # in the probabilities, and the fused network and onnxruntime could not be compared to 1e-4.
        for block in model.modules():
            if isinstance(block, Bottleneck):
                block.bn3.weight.fill_(0.05)
        # Running statistics := those of these images and their mirrors (batch statistics, momentum 1).
        for norm in norms:
            norm.momentum = 1.0
            norm.train()
        model(torch.cat([x, torch.flip(x, dims=[3])]))
        for norm in norms:
            norm.momentum = momentum
            norm.eval()
        model.outc[2].weight.mul_(2.0)  # sharper probabilities: fewer near ties
    path = tmp_path_factory.mktemp("network") / "DFPnet_epoch_1.pth"
    save_atomic(model.state_dict(), path)
    return model, path


@pytest.fixture(scope="module")
def expected(network, data) -> dict[str, dict[str, Expected]]:
    """setting -> image stem -> Expected, for every entry of SETTINGS."""
    model, _ = network
    out: dict[str, dict[str, Expected]] = {name: {} for name in SETTINGS}
    for stem, image in _images(data).items():
        x = network_input(image)
        for name, (flip, scales) in SETTINGS.items():
            out[name][stem] = Expected(expected_probs(model, x, flip, scales), image.shape[1], image.shape[0])
    return out


def _export(network, folder, name: str, *flags: str):
    """export.py in this process (it prints its own check); returns the model's path."""
    _, checkpoint = network
    path = folder / f"{name}.onnx"
    export.main(
        export.get_arguments(
            [
                "--restore-from",
                str(checkpoint),
                "--out",
                str(path),
                "--input-size",
                ",".join(map(str, SIZE)),
                *flags,
            ]
        )
    )
    return path


@pytest.fixture(scope="module")
def logits_onnx(network, tmp_path_factory):
    """export.py with its defaults: logits output, dynamic batch, H and W."""
    return _export(network, tmp_path_factory.mktemp("onnx"), "logits")


@pytest.fixture(scope="module")
def static_probs_onnx(network, tmp_path_factory):
    return _export(network, tmp_path_factory.mktemp("onnx"), "probs", "--output", "probs", "--static")


@pytest.fixture(scope="module")
def static_labels_onnx(network, tmp_path_factory):
    return _export(network, tmp_path_factory.mktemp("onnx"), "labels", "--output", "labels", "--static")


def _runtime_flags(runtime: str, network, request) -> list[str]:
    if runtime == "onnx":
        return ["--onnx", str(request.getfixturevalue("logits_onnx"))]
    return ["--restore-from", str(network[1]), "--device", "cpu", "--amp", "off", "--workers", "0"]


# ---------------------------------------------------------------------------------------------
# the expectation itself
# ---------------------------------------------------------------------------------------------


def test_the_expectation_is_not_vacuous(network, expected, data):
    """Each option changes the expected labels on many pixels (and so does the left/right swap of flip
    testing), the maps hold several classes, the near ties (which the other tests let go) are rare,
    and TIE is over five times the network's own float32 error (against float64), so that rounding
    alone cannot move a label past it."""
    model, _ = network
    x = torch.cat([network_input(image) for image in _images(data).values()])
    with torch.no_grad():
        p32 = model(x)[-1].softmax(1).double()
        p64 = copy.deepcopy(model).double()(x.double())[-1].softmax(1)
    error = (p32 - p64).abs().max().item()
    print(f"float32 error of the probabilities: {error:.2e}")
    assert error < TIE / 5

    def differing(a: str, b: str) -> int:
        return sum(int((expected[a][s].label != expected[b][s].label).sum()) for s in expected[a])

    pixels = sum(e.label.size for e in expected["plain"].values())
    for a, b in (("flip", "plain"), ("scales", "plain"), ("flip+scales", "flip"), ("flip+scales", "scales")):
        assert differing(a, b) >= 0.05 * pixels, (a, b, differing(a, b), pixels)
    for name in SETTINGS:
        classes = np.unique(np.concatenate([e.label.ravel() for e in expected[name].values()]))
        assert len(classes) >= 3, (name, classes)
        ambiguous = sum(int(e.ambiguous().sum()) for e in expected[name].values())
        print(f"{name}: classes {classes.tolist()}, {ambiguous} near ties of {pixels} pixels")
        assert ambiguous <= 0.01 * pixels, (name, ambiguous)
    # Flip testing without the left/right swap would give other labels: a script that forgot it fails.
    unswapped = 0
    for stem, image in _images(data).items():
        probs = expected_probs(model, network_input(image), True, (1.0,), swap=False)
        unswapped += int((probs[0].argmax(0).numpy() != expected["flip"][stem].crop_label).sum())
    assert unswapped >= 0.01 * len(expected["flip"]) * SIZE[0] * SIZE[1], unswapped


# ---------------------------------------------------------------------------------------------
# parse_images.py and evaluate.py with --flip and --scales, PyTorch and onnxruntime
# ---------------------------------------------------------------------------------------------


def _runs(*settings: str) -> list:
    """(runtime, setting) pairs: PyTorch with both options (a run costs seconds: loading and folding
    the checkpoint), onnxruntime with each of ``settings`` (cheap once the model is exported, slow
    before: the export)."""
    onnx = [pytest.param("onnx", s, marks=pytest.mark.slow, id=f"onnx-{s}") for s in settings]
    return [pytest.param("pytorch", "flip+scales", marks=pytest.mark.slow, id="pytorch-flip+scales"), *onnx]


@pytest.mark.parametrize("runtime,setting", _runs("flip", "flip+scales"))
def test_parse_images_flip_and_scales_by_value(
    runtime, setting, network, expected, data, tmp_path, capsys, request
):
    """<stem>_label.png of parse_images.py (batches of 2, so the mirrored half of a batch must be
    paired with its own image) equals the expectation at every pixel that is not a near tie."""
    out = tmp_path / "parsed"
    code, stdout, err = run_main(
        parse_images,
        [
            *_runtime_flags(runtime, network, request),
            "--out",
            str(out),
            "--input-size",
            ",".join(map(str, SIZE)),
            "--batch-size",
            "2",
            "--no-progress",
            *setting_flags(setting),
            str(data / "val_images"),
        ],
        capsys,
    )
    assert code == 0, err
    assert "Parsed 3 of 3 images" in stdout
    # The precision used is printed (these runs ask for float32).
    assert "device cpu, amp off)" in stdout or ("onnxruntime 1." in stdout and ", cpu, float32)" in stdout)
    for stem, want in expected[setting].items():
        got = cv2.imread(str(out / f"{stem}_label.png"), cv2.IMREAD_UNCHANGED)
        assert got is not None and got.shape == want.label.shape and got.dtype == np.uint8, stem
        wrong = ~want.accepts(got)
        assert not wrong.any(), (stem, int(wrong.sum()), np.argwhere(wrong)[:5].tolist())
        # And it is not what the plain pass would give: the option was applied.
        assert not np.array_equal(got, expected["plain"][stem].label), stem


@pytest.mark.parametrize("runtime,setting", _runs("scales", "flip+scales"))
def test_evaluate_flip_and_scales_by_value(
    runtime, setting, network, expected, data, tmp_path, capsys, request
):
    """evaluate.py's confusion matrix is the one of the expected maps against the ground truth (each
    near-tie pixel may sit in any of its allowed columns), and its mean IU is that matrix's."""
    metrics = tmp_path / "metrics.json"
    code, _, err = run_main(
        evaluate,
        [
            *_runtime_flags(runtime, network, request),
            "--data-dir",
            str(data),
            "--input-size",
            ",".join(map(str, SIZE)),
            "--batch-size",
            "2",
            "--no-progress",
            "--metrics-out",
            str(metrics),
            *setting_flags(setting),
        ],
        capsys,
    )
    assert code == 0, err
    result = json.loads(metrics.read_text())
    flip, scales = SETTINGS[setting]
    assert (result["flip"], result["scales"], result["num_images"]) == (flip, list(scales), 3)

    n = DOG.num_classes
    fixed, flexible, plain = (np.zeros((n, n), np.int64) for _ in range(3))
    scored_pixels = ties = 0
    for stem, want in expected[setting].items():
        gt = cv2.imread(str(data / "val_segmentations" / f"{stem}.png"), cv2.IMREAD_UNCHANGED)
        assert gt.shape == want.label.shape
        scored = gt != IGNORE
        sure = scored & ~want.ambiguous()
        scored_pixels += int(scored.sum())
        ties += int((scored & want.ambiguous()).sum())
        np.add.at(fixed, (gt[sure], want.label[sure]), 1)
        for c in range(n):
            maybe = scored & want.ambiguous() & want.accepts(np.full_like(gt, c))
            np.add.at(flexible, (gt[maybe], np.full(int(maybe.sum()), c)), 1)
        np.add.at(plain, (gt[scored], expected["plain"][stem].label[scored]), 1)
    got = np.array(result["confusion_matrix"])
    assert got.shape == (n, n)
    assert got.sum() == scored_pixels
    assert (fixed <= got).all() and (got <= fixed + flexible).all(), (got - fixed).tolist()
    assert result["mean_iou"] == pytest.approx(mean_iou(got), abs=1e-9)
    if ties == 0:  # no near tie: the very number of the expectation
        assert result["mean_iou"] == pytest.approx(mean_iou(fixed), abs=1e-9)
    print(
        f"{runtime} {setting}: mean IU {result['mean_iou']:.4f} (plain {mean_iou(plain):.4f}), "
        f"{ties} near-tie pixels of {scored_pixels}"
    )
    assert not np.array_equal(got, plain)  # the options changed the evaluation


# ---------------------------------------------------------------------------------------------
# export.py --output probs / labels, --static
# ---------------------------------------------------------------------------------------------


def _refuses_other_shapes(session: OnnxModel) -> None:
    for shape in ((2, 3, *SIZE), (1, 3, SIZE[0] + 8, SIZE[1])):
        with pytest.raises(Exception, match="(?i)invalid dimensions"):
            session(np.zeros(shape, np.float32))


@pytest.mark.slow
def test_export_default_model_takes_any_batch_and_size(network, logits_onnx):
    """The default export (dynamic): onnxruntime's logits on random inputs of batch 2 at the export size
    and at another one, and of batch 1 at a third, are PyTorch's final map: relative error (L2) at most
    1e-5, and every logit within 1e-5 of the largest one's magnitude."""
    model, _ = network
    session = OnnxModel(str(logits_onnx))
    (image,) = session.session.inputs
    assert image.shape[1] == 3 and not any(isinstance(d, int) for d in (image.shape[0], *image.shape[2:]))
    gen = torch.Generator().manual_seed(7)
    for shape in ((2, 3, *SIZE), (2, 3, 24, 40), (1, 3, 40, 24)):
        x = torch.randn(*shape, generator=gen)
        with torch.no_grad():
            want = model(x)[-1]
        got = session(x.numpy())
        assert got.shape == tuple(want.shape) == (shape[0], DOG.num_classes, *shape[2:])
        want = want.numpy()
        relative = np.linalg.norm(got - want) / np.linalg.norm(want)
        print(
            f"{shape}: max |logit| {np.abs(want).max():.1f}, max |onnxruntime - PyTorch| "
            f"{np.abs(got - want).max():.2e}, relative error {relative:.2e}"
        )
        assert relative <= 1e-5
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())


@pytest.mark.slow
def test_export_static_probs_is_the_softmax(network, static_probs_onnx):
    """--output probs --static: input fixed at 1 x 3 x H x W (other shapes refused); onnxruntime's
    output on a random input is PyTorch's softmax of the same network within 1e-4."""
    model, _ = network
    session = OnnxModel(str(static_probs_onnx))
    (image,) = session.session.inputs
    assert image.shape == [1, 3, *SIZE]
    assert session.output == "probs" and session.metadata["output"] == "probs"
    x = torch.randn(1, 3, *SIZE, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        want = model(x)[-1].softmax(1).numpy()
    got = session(x.numpy())
    assert got.shape == (1, DOG.num_classes, *SIZE) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)
    np.testing.assert_allclose(got.sum(1), 1.0, rtol=0, atol=1e-5)
    assert want.max(1).min() < 0.9  # probabilities, not already one-hot
    _refuses_other_shapes(session)


@pytest.mark.slow
def test_export_static_labels_is_the_argmax(network, static_labels_onnx):
    """--output labels --static: input fixed at 1 x 3 x H x W (other shapes refused); int64 labels equal
    to PyTorch's argmax except where the top two logits are within 1e-4."""
    model, _ = network
    session = OnnxModel(str(static_labels_onnx))
    (image,) = session.session.inputs
    assert image.shape == [1, 3, *SIZE]
    assert session.output == "labels" and session.metadata["output"] == "labels"
    x = torch.randn(1, 3, *SIZE, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        logits = model(x)[-1]
    got = session(x.numpy())
    assert got.shape == (1, *SIZE) and got.dtype == np.int64
    top2 = logits.topk(2, dim=1).values
    near = (top2[:, 0] - top2[:, 1] < 1e-4).numpy()
    assert near.mean() < 0.01
    agree = got == logits.argmax(1).numpy()
    assert agree[~near].all(), int((~agree & ~near).sum())
    assert len(np.unique(got)) >= 3  # not a constant map
    _refuses_other_shapes(session)


@pytest.mark.slow
def test_parse_images_with_the_static_labels_model(static_labels_onnx, expected, data, tmp_path, capsys):
    """The labels model through parse_images.py --onnx (its size, batch 1): the plain expectation."""
    out = tmp_path / "parsed"
    code, _, err = run_main(
        parse_images,
        [
            "--onnx",
            str(static_labels_onnx),
            "--out",
            str(out),
            "--input-size",
            ",".join(map(str, SIZE)),
            "--no-progress",
            str(data / "val_images"),
        ],
        capsys,
    )
    assert code == 0, err
    for stem, want in expected["plain"].items():
        got = cv2.imread(str(out / f"{stem}_label.png"), cv2.IMREAD_UNCHANGED)
        assert got is not None and got.shape == want.label.shape, stem
        assert want.accepts(got).all(), stem


# ---------------------------------------------------------------------------------------------
# export.py refusals: exit 2, one line naming the problem, nothing at --out
# ---------------------------------------------------------------------------------------------


def _nothing_written(out) -> None:
    assert not out.exists()
    if out.parent.is_dir():
        assert os.listdir(out.parent) == [], os.listdir(out.parent)  # no temporary file either


def test_export_missing_checkpoint(tmp_path, capsys):
    """A --restore-from that does not exist: exit 2, one line naming the file."""
    missing = tmp_path / "no_such.pth"
    out = tmp_path / "out" / "m.onnx"
    code, stdout, err = run_main(export, ["--restore-from", str(missing), "--out", str(out)], capsys)
    assert code == 2, (stdout, err)
    assert str(missing) in err and "not found" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    _nothing_written(out)


def test_export_unwritable_output_folder(network, tmp_path, capsys):
    """A folder that cannot be created (a file where a folder should be), and one without write
    permission (not checkable as root, who may write anyway): exit 2, one line naming the folder, at once;
    nothing written and the file in the way untouched."""
    _, checkpoint = network
    blocker = tmp_path / "a_file"
    blocker.write_text("keep")
    cases = [(blocker / "sub" / "m.onnx", blocker / "sub")]
    locked = tmp_path / "locked"
    locked.mkdir()
    if os.geteuid() != 0:
        locked.chmod(0o555)
        cases.append((locked / "m.onnx", locked))
    try:
        for out, folder in cases:
            code, stdout, err = run_main(
                export,
                ["--restore-from", str(checkpoint), "--out", str(out), "--input-size", "32,32"],
                capsys,
            )
            assert code == 2, (stdout, err)
            assert str(folder) in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
            assert not out.exists()
        assert blocker.read_text() == "keep" and os.listdir(locked) == []
    finally:
        locked.chmod(0o755)


@pytest.mark.parametrize(
    "argv,flag",
    [
        (["--opset", "0"], "--opset"),
        (["--opset", "x"], "--opset"),
        (["--input-size", "0,5"], "--input-size"),
        (["--input-size", "32"], "--input-size"),
    ],
)
def test_export_nonsense_values(argv, flag, network, tmp_path, capsys):
    """An opset or input size that is no positive number (pair): exit 2 naming the flag and the value,
    before anything is created."""
    _, checkpoint = network
    out = tmp_path / "out" / "m.onnx"
    code, _, err = run_main(export, ["--restore-from", str(checkpoint), "--out", str(out), *argv], capsys)
    assert code == 2 and flag in err and repr(argv[1]) in err, err
    assert not out.parent.exists()  # refused before anything is created


@pytest.mark.slow
@pytest.mark.parametrize("script", ["parse_images", "evaluate"])
def test_onnx_models_refuse_flags_they_cannot_run(script, static_labels_onnx, data, tmp_path, capsys):
    """A labels-output model with --flip or --scales, and a --static model at another batch size or crop:
    exit 2 and one line naming the model, before any picture is read or written."""
    module = {"parse_images": parse_images, "evaluate": evaluate}[script]
    size = ",".join(map(str, SIZE))
    common = (
        ["--out", str(tmp_path / "out"), str(data / "val_images")]
        if script == "parse_images"
        else ["--data-dir", str(data), "--metrics-out", str(tmp_path / "out" / "m.json")]
    )
    for flags, said in [
        (["--flip", "--input-size", size], "outputs labels"),
        (["--scales", "0.75,1", "--input-size", size], "outputs labels"),
        *(
            [(["--min-confidence", "0.5", "--input-size", size], "outputs labels")]
            if script == "parse_images"
            else []
        ),
        (["--input-size", "40,40"], "is fixed to input 1x32x32"),
        (["--batch-size", "2", "--input-size", size], "is fixed to input 1x32x32"),
    ]:
        code, _, err = run_main(
            module, ["--onnx", str(static_labels_onnx), "--no-progress", *flags, *common], capsys
        )
        assert code == 2, (flags, err)
        assert str(static_labels_onnx) in err and said in err and "Traceback" not in err, (flags, err)
        assert len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / "out").exists() or os.listdir(tmp_path / "out") == [], flags


def test_export_refuses_a_folder_as_out(network, tmp_path, capsys):
    """--out naming an existing folder: exit 2 at once, one line naming it, the folder left as it was."""
    _, checkpoint = network
    folder = tmp_path / "models"
    folder.mkdir()
    code, _, err = run_main(export, ["--restore-from", str(checkpoint), "--out", str(folder)], capsys)
    assert code == 2 and str(folder) in err and "is a folder" in err and "Traceback" not in err, err
    assert os.listdir(folder) == []
