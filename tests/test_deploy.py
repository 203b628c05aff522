"""Deploy: networks/fuse.py, export.py and the onnxruntime path (inference/onnx_infer.py, --onnx).

Two sets of weights, each exported once per module: "random" (DFPNet's init with every norm's
statistics and affine parameters drawn at random, so folding has something to fold) and
"synthetic" (a few training steps on the synthetic set from there, saved with another label set
of 8 classes, tests/labelsets.py's RENAMED8, which the export and the --onnx paths must carry).
Equality is judged as the deploy target
asks: against a float64 PyTorch forward, the relative error ||y - y64|| / ||y64|| of the fused
network and of onnxruntime may be at most twice PyTorch's own float32 error (or 1e-5), and the
argmax agrees on >= 99.9% of the pixels; evaluate.py's mean IU moves by at most 0.05.
The tests that need the exported models are marked slow (two exports and two training steps
take most of a minute on 2 cores); they still run in CI.
"""

from __future__ import annotations

import copy
import json
import os
import random
import shutil
import subprocess
import sys
import zipfile

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import evaluate
import export
import parse_images
from inference.bundle import DEPLOY_FILES, requirements
from inference.onnx_infer import OnnxModel, resize_bilinear
from inference.pipeline import ImageFiles, batches, list_images
from inference.predict import evaluate_model, make_eval_loader, predict_probs
from libs.abn import _ActivatedBatchNorm
from networks.dfpnet import DFPNet
from networks.fuse import AffineActivation, fuse_for_inference
from tests.labelsets import RENAMED8
from tests.scripts import run_main
from utils.checkpoint import save_atomic, with_label_set
from utils.labels import DOG, LabelSet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = (64, 64)
WEIGHTS = ("random", "synthetic")
RENAMED = LabelSet.from_dict(RENAMED8, "RENAMED8")
FORMATS = "coco,labelme,cvat-mask,labelstudio"  # parse_images.py --annotations


def relative_error(got: torch.Tensor | np.ndarray, want: torch.Tensor) -> float:
    got = torch.as_tensor(got).double()
    return float((got - want).norm() / want.norm())


def within_float32(err: float, pytorch_err: float) -> bool:
    """The deploy bound: twice PyTorch's own float32 error on the same input, or 1e-5."""
    return err <= max(2.0 * pytorch_err, 1e-5)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from dataset.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("deploy") / "data"
    generate_dataset(str(root), 4, 4, 0, seed=3, min_size=48, max_size=96)
    return root


def _randomise_norms(model: torch.nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in model.modules():
            if isinstance(layer, _ActivatedBatchNorm):
                n = layer.num_features
                layer.running_mean.copy_(0.1 * torch.randn(n, generator=gen))
                layer.running_var.copy_(0.5 + torch.rand(n, generator=gen))
                layer.weight.copy_(torch.randn(n, generator=gen))  # negative ones too: the scale is |w| + eps
                layer.bias.copy_(0.1 * torch.randn(n, generator=gen))


def _train_on_synthetic(model: DFPNet, data, steps: int = 2) -> None:
    from dataset.datasets import CartoonDataSet, default_transform
    from training.loss import parsing_loss

    # The loader's augmentation draws from Python's and numpy's global generators, whose state depends
    # on what ran before in this worker: seeded, the fixture's model (and what later tests trace from
    # its predictions) is the same in every run.
    random.seed(0)
    np.random.seed(0)
    train = CartoonDataSet(str(data), "train", crop_size=SIZE, transform=default_transform())
    loader = torch.utils.data.DataLoader(train, batch_size=2, shuffle=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    model.train()
    done = 0
    while done < steps:
        for images, labels, *_ in loader:
            optimizer.zero_grad()
            parsing_loss(model(images), labels).backward()
            optimizer.step()
            done += 1
            if done == steps:
                break
    model.eval()


@pytest.fixture(scope="module")
def models(data, tmp_path_factory):
    """name -> (eval-mode DFPNet, its checkpoint, its export.py model with logits output, fused DFPNet)."""
    folder = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    model = DFPNet(8)
    _randomise_norms(model, seed=1)
    out = {}
    for name in WEIGHTS:
        if name == "synthetic":
            _train_on_synthetic(model, data)
        model.eval()
        checkpoint, onnx_path = folder / f"{name}.pth", folder / f"{name}.onnx"
        state = model.state_dict()
        # The synthetic checkpoint records its crop, as train.py's do; export and parsing default to it.
        save_atomic(with_label_set(state, RENAMED, SIZE) if name == "synthetic" else state, checkpoint)
        fused = fuse_for_inference(model)
        if name == "synthetic":  # the command line, end to end, as a torch-free bundle
            export.main(
                export.get_arguments(
                    [
                        "--restore-from",
                        str(checkpoint),
                        "--bundle",
                        str(folder / "bundle"),
                        "--out",
                        onnx_path.name,
                    ]  # no --input-size: the checkpoint's recorded crop
                )
            )
            onnx_path = folder / "bundle" / onnx_path.name
        else:  # the same export, without reading the checkpoint back and folding it again
            args = export.get_arguments(["--restore-from", str(checkpoint), "--input-size", "64,64"])
            export.export_onnx(
                export.FinalMap(fused),
                torch.randn(2, 3, *SIZE),
                str(onnx_path),
                opset=args.opset,
                dynamic=True,
                props=export.metadata(args, DOG),
            )
        out[name] = (copy.deepcopy(model), checkpoint, onnx_path, fused)
    return out


@pytest.fixture(scope="module")
def crops(data) -> torch.Tensor:
    """Two val images letterboxed as the loader does."""
    images = ImageFiles(list_images([str(data / "val_images")])[:2], SIZE)
    return torch.from_numpy(next(batches(images, len(images)))[0])


def _reference(model: DFPNet, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(float64, float32) final maps of the unfused network (``model`` is changed to float64)."""
    with torch.no_grad():
        want = model.double()(x.double())[-1]
        got = model.float()(x)[-1]
    return want, got


# ---------------------------------------------------------------------------------------------
# equality: fused and onnxruntime against float64 PyTorch
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", WEIGHTS)
def test_fused_and_onnxruntime_match_pytorch(models, crops, name):
    model, _, onnx_path, fused = models[name]
    odd = torch.randn(1, 3, 40, 57, generator=torch.Generator().manual_seed(5))
    session = OnnxModel(str(onnx_path))
    for x in (crops, odd):  # the odd size also proves H and W are dynamic
        want, pytorch32 = _reference(model, x)
        base = relative_error(pytorch32, want)
        with torch.no_grad():
            folded = fused(x)[-1]
        ort = session(x.numpy())
        assert ort.shape == tuple(want.shape)
        for label, got in (("fused", folded), ("onnxruntime", ort)):
            err = relative_error(got, want)
            agree = (torch.as_tensor(got).argmax(1) == want.argmax(1)).double().mean().item()
            print(
                f"{name} {tuple(x.shape)} {label}: rel. error {err:.2e} (PyTorch float32 {base:.2e}), "
                f"argmax agreement {agree:.5f}"
            )
            assert within_float32(err, base), (label, err, base)
            assert agree >= 0.999, (label, agree)


@pytest.mark.slow
def test_fuse_leaves_no_norm_and_the_original_untouched(models):
    model, checkpoint, _, folded = models["random"]
    assert not any(isinstance(m, _ActivatedBatchNorm) for m in folded.modules())
    assert isinstance(folded.stabilization[0], AffineActivation)  # a norm with no convolution before it
    assert isinstance(folded.layer1[0].bn1, torch.nn.Identity) and folded.layer1[0].conv1.bias is not None
    assert isinstance(folded.outc[1], torch.nn.LeakyReLU) and folded.outc[1].negative_slope == 0.01
    assert not folded.training and not any(p.requires_grad for p in folded.parameters())
    assert folded.aux_heads is False and model.aux_heads is True  # inference reads the final map only
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())  # the original is untouched
    assert isinstance(model.layer1[0].bn1, _ActivatedBatchNorm) and model.layer1[0].conv1.bias is None


@pytest.mark.slow
def test_onnx_flip_and_scales_average_like_pytorch(models, crops):
    """inference.onnx_infer's numpy flip/scale averaging against inference.predict's, on the same model."""
    _, _, onnx_path, fused = models["synthetic"]
    session = OnnxModel(str(onnx_path))
    for flip, scales in ((True, (0.75, 1.0)),):
        want = predict_probs(fused, crops, label_set=RENAMED, flip=flip, scales=scales)
        got = session.predict_probs(crops.numpy(), flip=flip, scales=scales)  # the model's own set
        np.testing.assert_allclose(got, want.numpy(), rtol=0, atol=2e-4)
        labels = session.predict_labels(crops.numpy(), flip=flip, scales=scales)
        assert (labels == want.argmax(1).numpy()).mean() >= 0.999


@pytest.mark.slow
def test_onnx_flip_and_scales_use_the_models_own_pairs(models, crops, tmp_path):
    """The same with a set whose pairs are not at the Dog's ids, recorded in the model: onnxruntime's
    flip and multi-scale testing against PyTorch's, and flip alone against two plain predictions."""
    from tests.labelsets import OTHER_PAIRS8, flip_averaged, relabelled_onnx

    other = LabelSet.from_dict(OTHER_PAIRS8, "OTHER_PAIRS8")
    _, _, onnx_path, fused = models["synthetic"]
    session = OnnxModel(relabelled_onnx(str(onnx_path), str(tmp_path / "other.onnx"), other))
    assert session.label_set.to_dict() == other.to_dict()
    x = crops.numpy()
    want = predict_probs(fused, crops, label_set=other, flip=True, scales=(0.75, 1.0)).numpy()
    np.testing.assert_allclose(
        session.predict_probs(x, flip=True, scales=(0.75, 1.0)), want, rtol=0, atol=2e-4
    )
    plain = session.predict_probs(x)
    mirror = session.predict_probs(np.ascontiguousarray(x[..., ::-1]))
    np.testing.assert_allclose(
        session.predict_probs(x, flip=True), flip_averaged(plain, mirror, other), atol=1e-6
    )
    # Not vacuous: the Dog's pairs give another answer.
    assert np.abs(flip_averaged(plain, mirror, DOG) - flip_averaged(plain, mirror, other)).max() > 1e-3


def test_numpy_resize_is_pytorchs():
    x = torch.randn(2, 3, 13, 21, generator=torch.Generator().manual_seed(0))
    for size in ((13, 21), (7, 30), (26, 11), (1, 5)):
        want = F.interpolate(x, size=size, mode="bilinear", align_corners=True)
        np.testing.assert_allclose(resize_bilinear(x.numpy(), size), want.numpy(), rtol=0, atol=1e-5)


def test_export_wrapper_outputs():
    class Fake(torch.nn.Module):
        def forward(self, x):
            return [x[:, :1]] * 4 + [torch.cat([x, -x, x.flip(-1)], 1)[:, :8]]

    x = torch.randn(2, 3, 5, 6)
    logits = export.FinalMap(Fake(), "logits")(x)
    assert logits.shape == (2, 8, 5, 6)
    torch.testing.assert_close(export.FinalMap(Fake(), "probs")(x), logits.softmax(1))
    assert torch.equal(export.FinalMap(Fake(), "labels")(x), logits.argmax(1))


# ---------------------------------------------------------------------------------------------
# the model file: metadata, dynamic shapes, errors
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_export_metadata_and_dynamic_shapes(models):
    session = OnnxModel(str(models["random"][2]))
    meta = session.metadata
    assert json.loads(meta["class_names"])[:3] == ["Background", "head", "body"]
    assert len(json.loads(meta["palette_rgb"])) == 8 and json.loads(meta["palette_rgb"])[1] == [128, 0, 0]
    assert json.loads(meta["flip_pairs"]) == [[3, 4], [5, 6]]
    assert session.label_set.to_dict() == DOG.to_dict()
    assert json.loads(meta["mean"]) == [0.485, 0.456, 0.406]
    assert json.loads(meta["std"]) == [0.229, 0.224, 0.225]
    assert meta["channel_order"] == "BGR" and meta["output"] == "logits" and meta["num_classes"] == "8"
    assert json.loads(meta["input_size"]) == list(SIZE)
    # Exported without --input-size: the crop its checkpoint recorded, which the runtimes default to.
    assert OnnxModel(str(models["synthetic"][2])).input_size == SIZE
    (image,) = session.session.inputs
    assert image.name == "image" and not any(isinstance(d, int) for d in (image.shape[0], *image.shape[2:]))
    assert session.session.outputs[0].name == "logits"


def test_export_errors_are_one_line_and_leave_nothing(tmp_path, capsys):
    bad = tmp_path / "garbage.pth"
    bad.write_bytes(b"not a checkpoint")
    out = tmp_path / "out" / "m.onnx"
    code, _, err = run_main(export, ["--restore-from", str(bad), "--out", str(out)], capsys)
    assert code == 2 and str(bad) in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out.exists() and os.listdir(out.parent) == []
    code, _, err = run_main(
        export, ["--restore-from", str(bad), "--out", str(out), "--output", "colours"], capsys
    )
    assert code == 2 and "--output" in err
    # --bundle: a failed export leaves neither the bundle nor its staging folder; a folder in use is refused.
    bundle = tmp_path / "bundle"
    code, _, err = run_main(export, ["--restore-from", str(bad), "--bundle", str(bundle)], capsys)
    assert code == 2 and str(bad) in err and len(err.strip().splitlines()) == 1
    assert sorted(os.listdir(tmp_path)) == ["garbage.pth", "out"]
    bundle.mkdir()
    (bundle / "keep.txt").write_text("mine")
    code, _, err = run_main(export, ["--restore-from", str(bad), "--bundle", str(bundle)], capsys)
    assert code == 2 and err.strip().endswith(
        f"{bundle}: exists and is not an empty folder; --bundle writes a new one"
    )
    assert os.listdir(bundle) == ["keep.txt"]


@pytest.mark.slow
@pytest.mark.parametrize("script", [evaluate, parse_images])
def test_bad_onnx_model_exits_2_with_one_line(script, models, data, tmp_path, capsys):
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x08\x07 this is not a protobuf")
    cases = [
        (str(tmp_path / "missing.onnx"), "not found"),
        (str(garbage), "not an ONNX model"),
        (str(models["random"][1]), "not an ONNX model"),
    ]
    where = (
        ["--data-dir", str(data), "--metrics-out", str(tmp_path / "m.json")]
        if script is evaluate
        else ["--out", str(tmp_path / "parsed"), str(data / "val_images")]
    )
    for path, needle in cases:
        code, _, err = run_main(script, ["--onnx", path, "--no-progress", "--workers", "0", *where], capsys)
        assert code == 2 and path in err and needle in err, err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "m.json").exists()
    code, _, err = run_main(
        script, ["--onnx", str(models["random"][2]), "--num-classes", "5", "--no-progress", *where], capsys
    )
    assert code == 2 and "--num-classes 5" in err and "8 classes" in err
    assert len(err.strip().splitlines()) == 1
    # A label set of other classes than the model's is refused, naming both.
    code, _, err = run_main(
        script,
        ["--onnx", str(models["random"][2]), "--labels", "pascal-person-part", "--no-progress", *where],
        capsys,
    )
    assert code == 2 and str(models["random"][2]) in err and "7 classes" in err and "8 classes" in err, err


# ---------------------------------------------------------------------------------------------
# the scripts: evaluate.py --onnx / --fuse and parse_images.py --onnx without torch
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_evaluate_onnx_and_fused_match_evaluate(models, data, tmp_path, capsys):
    """evaluate.py --onnx against the evaluation of the unfused and the fused network (same loop)."""
    from dataset.datasets import CartoonDataSet, default_transform

    model, _, onnx_path, fused = models["synthetic"]
    metrics = tmp_path / "onnx.json"
    code, out, err = run_main(
        evaluate,
        [
            "--onnx",
            str(onnx_path),
            "--data-dir",
            str(data),
            "--input-size",
            ",".join(map(str, SIZE)),
            "--workers",
            "0",
            "--no-progress",
            "--metrics-out",
            str(metrics),
        ],
        capsys,
    )
    assert code == 0, err
    result = json.loads(metrics.read_text())
    assert result["runtime"] == "onnxruntime" and result["checkpoint"] == str(onnx_path)
    assert "onnxruntime" in out
    # No labels.json in the data folder and no --labels: the set the model records names the classes.
    assert list(result["per_class_iou"]) == RENAMED8["names"] and result["label_set"]["flip_pairs"][0] == [
        "front_left",
        "front_right",
    ]
    assert "hind_right" in out
    mean_iou = {"onnxruntime": result["mean_iou"]}
    val = CartoonDataSet(str(data), "val", crop_size=SIZE, transform=default_transform())
    for name, network in (("pytorch", model), ("fused", fused)):
        matrix = evaluate_model(
            network, val, make_eval_loader(val, workers=0), "cpu", label_set=RENAMED, progress=False
        )
        mean_iou[name] = matrix.compute()["mean_iou"]
    print(f"mean IU: {mean_iou}")
    assert abs(mean_iou["fused"] - mean_iou["pytorch"]) <= 0.05
    assert abs(mean_iou["onnxruntime"] - mean_iou["pytorch"]) <= 0.05


def _blocking(package: str) -> str:
    """The start of a script in which importing ``package`` (or any module in it) fails, as where it
    is not installed."""
    return f"""
import sys
class Blocked:
    def find_spec(self, name, path=None, target=None):
        if name == {package!r} or name.startswith({package + "."!r}):
            raise ImportError(f"import of {{name}} blocked: this test runs without {package}")
sys.meta_path.insert(0, Blocked())
"""


_BLOCK_TORCH = _blocking("torch")
_NO_TORCH = (
    _BLOCK_TORCH
    + """
import runpy
sys.argv = ["parse_images.py", *sys.argv[1:]]
runpy.run_path("parse_images.py", run_name="__main__")
"""
)
# The bundle's own inference module, torch blocked: argv = crops.npy, model.onnx, out.npz.
_BUNDLE_PROBS = (
    _BLOCK_TORCH
    + """
import numpy as np
import inference.onnx_infer as onnx_infer
x, model = np.load(sys.argv[1]), onnx_infer.OnnxModel(sys.argv[2])
np.savez(
    sys.argv[3],
    plain=model.predict_probs(x),
    mirror=model.predict_probs(np.ascontiguousarray(x[..., ::-1])),
    flip=model.predict_probs(x, flip=True),
    tta=model.predict_probs(x, flip=True, scales=(0.75, 1.0)),
)
print(onnx_infer.__file__)
"""
)


@pytest.mark.slow
def test_parse_images_onnx_runs_without_torch(models, data, crops, tmp_path, capsys):
    _, checkpoint, onnx_path, _ = models["synthetic"]
    inputs = str(data / "val_images")
    common = ["--no-progress"]  # no --input-size: the crop the model and the checkpoint record (SIZE)

    # export.py --bundle's folder (the models fixture wrote it), copied alone elsewhere: what a
    # deployment ships, with no checkout on the path.
    bundle = onnx_path.parent
    alone = tmp_path / "deployment"
    shutil.copytree(bundle, alone)
    assert sorted(str(p.relative_to(alone)) for p in alone.rglob("*") if p.is_file()) == sorted(
        [*DEPLOY_FILES, onnx_path.name, "requirements.txt", "README.md"]
    )
    assert (alone / "requirements.txt").read_text().split() == requirements()
    assert any(line.startswith("onnxruntime==") for line in requirements())
    onnx_path = alone / onnx_path.name
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}

    def without_torch(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-c", _NO_TORCH, *common, *argv],
            cwd=alone,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )

    done = without_torch(
        "--onnx", str(onnx_path), "--out", str(tmp_path / "ort"), "--annotations", FORMATS, inputs
    )
    assert done.returncode == 0, done.stderr
    assert f"Parsed 4 of 4 images into {tmp_path / 'ort'} at {SIZE[0]}x{SIZE[1]} " in done.stdout
    assert "onnxruntime" in done.stdout
    assert "Annotations for correction: " in done.stdout and "cvat-mask.zip" in done.stdout
    done = without_torch(
        "--onnx",
        str(onnx_path),
        "--out",
        str(tmp_path / "tta"),
        "--flip",
        "--scales",
        "0.75,1",
        "--batch-size",
        "3",
        inputs,
    )
    assert done.returncode == 0, done.stderr
    blocked = subprocess.run(
        [sys.executable, "-c", _NO_TORCH.replace("runpy.run_path", "import torch #")],
        cwd=alone,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert blocked.returncode != 0 and "blocked" in blocked.stderr  # the blocker does block

    # The bundle's own copy of the inference code flips with the pairs its model records, here a set
    # whose pairs are not at the Dog's ids: against PyTorch, and flip alone against two plain predictions.
    from tests.labelsets import OTHER_PAIRS8, flip_averaged, relabelled_onnx

    other = LabelSet.from_dict(OTHER_PAIRS8, "OTHER_PAIRS8")
    other_onnx = relabelled_onnx(str(onnx_path), str(alone / "other.onnx"), other)
    np.save(tmp_path / "crops.npy", crops.numpy())
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            _BUNDLE_PROBS,
            str(tmp_path / "crops.npy"),
            other_onnx,
            str(tmp_path / "p.npz"),
        ],
        cwd=alone,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(alone / "inference" / "onnx_infer.py")  # the copy, not the checkout
    probs = np.load(tmp_path / "p.npz")
    want = predict_probs(models["synthetic"][3], crops, label_set=other, flip=True, scales=(0.75, 1.0))
    np.testing.assert_allclose(probs["tta"], want.numpy(), rtol=0, atol=2e-4)
    np.testing.assert_allclose(
        probs["flip"], flip_averaged(probs["plain"], probs["mirror"], other), atol=1e-6
    )
    dog = flip_averaged(probs["plain"], probs["mirror"], DOG)  # not vacuous: the Dog's pairs differ
    assert np.abs(dog - flip_averaged(probs["plain"], probs["mirror"], other)).max() > 1e-3

    code, pt_out, err = run_main(
        parse_images,
        [
            "--restore-from",
            str(checkpoint),
            "--out",
            str(tmp_path / "pt"),
            "--amp",
            "off",
            "--workers",
            "0",
            "--annotations",
            FORMATS,
            *common,
            inputs,
        ],
        capsys,
    )
    assert code == 0, err
    assert f"into {tmp_path / 'pt'} at {SIZE[0]}x{SIZE[1]} " in pt_out  # the checkpoint's recorded crop
    for run in ("ort", "pt"):  # torch-free and PyTorch: the annotations they wrote
        _check_annotations(tmp_path / run, inputs, capsys)
    for stem in [os.path.splitext(f)[0] for f in sorted(os.listdir(inputs))]:
        ort = cv2.imread(str(tmp_path / "ort" / f"{stem}_label.png"), cv2.IMREAD_UNCHANGED)
        pt = cv2.imread(str(tmp_path / "pt" / f"{stem}_label.png"), cv2.IMREAD_UNCHANGED)
        assert ort.shape == pt.shape and (ort == pt).mean() >= 0.999, stem
        for suffix in ("_color.png", "_overlay.jpg"):
            for folder in ("ort", "tta"):
                assert (tmp_path / folder / f"{stem}{suffix}").is_file()
        # Coloured with the palette the checkpoint recorded and the export carried, with or without torch.
        for folder, label in (("ort", ort), ("pt", pt)):
            colour = cv2.imread(str(tmp_path / folder / f"{stem}_color.png"))[:, :, ::-1]
            np.testing.assert_array_equal(colour, RENAMED.colours()[label])
    legend = cv2.imread(str(tmp_path / "ort" / "legend.png"))
    assert legend is not None and legend.shape[0] >= 8 * 18


def _converted_back(folder, fmt: str, images: str, capsys, *extra: str) -> dict[str, np.ndarray]:
    """dataset.convert of what parse_images.py --annotations FMT wrote into ``folder``: id -> label map."""
    from dataset import convert

    src = {
        "coco": "coco.json",
        "labelme": "labelme",
        "cvat-mask": "cvat-mask",
        "labelstudio": "labelstudio.json",
    }
    out = folder / f"back-{fmt}"
    argv = [
        str(folder / src[fmt]),
        "--from",
        fmt,
        "--out",
        str(out),
        "--no-progress",
        "--split",
        "val=1",
        *extra,
    ]
    if fmt != "labelme":  # LabelMe files point at their pictures; the others name them
        argv += ["--images", images]
    code, text, err = run_main(convert, argv, capsys)
    assert code == 0, err
    # The model's set came along (CVAT's labelmap.txt holds its names in their order): the same ids.
    assert fmt == "cvat-mask" or "(beside the source" in text, text
    return {
        f[:-4]: cv2.imread(str(out / "val_segmentations" / f), cv2.IMREAD_UNCHANGED)
        for f in os.listdir(out / "val_segmentations")
    }


def _check_annotations(folder, inputs: str, capsys) -> None:
    """What parse_images.py --annotations wrote into ``folder``, converted back by dataset.convert: the
    label maps it wrote, exactly for the mask and RLE formats and within per-class IoU 0.98 for
    LabelMe's traced polygons."""
    stems = sorted(os.path.splitext(f)[0] for f in os.listdir(inputs))
    want = {s: cv2.imread(str(folder / f"{s}_label.png"), cv2.IMREAD_UNCHANGED) for s in stems}
    assert len({int(c) for w in want.values() for c in np.unique(w)}) >= 3  # maps worth tracing
    for fmt in ("coco", "cvat-mask", "labelstudio"):
        got = _converted_back(folder, fmt, inputs, capsys)
        assert sorted(got) == stems, fmt
        for s in stems:
            np.testing.assert_array_equal(got[s], want[s], err_msg=f"{folder} {fmt} {s}")
    got = _converted_back(folder, "labelme", inputs, capsys)
    inter, union = np.zeros(RENAMED.num_classes), np.zeros(RENAMED.num_classes)
    for s in stems:
        for c in range(RENAMED.num_classes):
            inter[c] += ((got[s] == c) & (want[s] == c)).sum()
            union[c] += ((got[s] == c) | (want[s] == c)).sum()
    present = union > 0
    assert (inter[present] / union[present]).min() >= 0.98, (folder, inter / np.maximum(union, 1))
    with zipfile.ZipFile(folder / "cvat-mask.zip") as archive:
        assert sorted(n for n in archive.namelist() if not n.endswith("/")) == sorted(
            [
                "labelmap.txt",
                "ImageSets/Segmentation/default.txt",
                *(f"SegmentationClass/{s}.png" for s in stems),
            ]
        )
    coco_file = json.load(open(folder / "coco.json"))
    assert [c["name"] for c in coco_file["categories"]] == list(RENAMED.names[1:])


def test_min_confidence_leaves_doubtful_pixels_out_of_labels_and_annotations(models, data, tmp_path, capsys):
    """The trained model's own probabilities saturate at 1.0 on these pictures; averaged over a flip and
    two scales they do not where the runs disagree, so the threshold is taken from those."""
    _, _, onnx_path, _ = models["synthetic"]
    inputs = str(data / "val_images")
    crops = ImageFiles(list_images([inputs]), SIZE)
    model = OnnxModel(str(onnx_path))
    confidence = np.concatenate(
        [model.predict_probs(x, flip=True, scales=(0.75, 1.0)).max(1).ravel() for x, _ in batches(crops, 4)]
    )
    assert confidence.min() < confidence.max(), "no pixel is less sure than another"
    threshold = (float(confidence.min()) + float(confidence.max())) / 2  # some pixels below, some not
    doubtful = float((confidence < threshold).mean())  # at the crop size
    common = ["--onnx", str(onnx_path), "--input-size", ",".join(map(str, SIZE)), "--no-progress"]
    common += ["--flip", "--scales", "0.75,1", "--annotations", "coco", inputs]
    for folder, extra in (("sure", []), ("unsure", ["--min-confidence", repr(threshold)])):
        code, _, err = run_main(parse_images, [*common, "--out", str(tmp_path / folder), *extra], capsys)
        assert code == 0, err
    back = _converted_back(tmp_path / "unsure", "coco", inputs, capsys, "--unlabelled", "ignore")
    unsure = total = 0
    for s in back:
        sure = cv2.imread(str(tmp_path / "sure" / f"{s}_label.png"), cv2.IMREAD_UNCHANGED)
        label = cv2.imread(str(tmp_path / "unsure" / f"{s}_label.png"), cv2.IMREAD_UNCHANGED)
        kept = label != 255
        np.testing.assert_array_equal(label[kept], sure[kept])  # the rest as without the flag
        np.testing.assert_array_equal(back[s][kept & (label != 0)], label[kept & (label != 0)])
        assert (back[s][~kept] == 255).all()  # in no annotation
        unsure, total = unsure + int((~kept).sum()), total + label.size
    # Some pixels of the pictures are doubtful, not all (the crop's share, warped back without the
    # letterbox's border, need not be the pictures' share).
    assert 0 < unsure < total, (unsure, total, doubtful)


def test_export_without_the_deploy_set_says_what_to_install():
    """A checkout where only requirements.txt is installed (./run.sh installs no more): export.py,
    whose first need is onnx, stops in one line naming the file to install, with its exit status."""
    block_onnx = _blocking("onnx") + (
        "import runpy\n"
        "sys.argv = ['export.py', '--restore-from', 'model.pth']\n"
        "runpy.run_path('export.py', run_name='__main__')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", block_onnx], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 1
    assert done.stderr.strip() == (
        "export.py: error: onnx is not installed: pip install -r requirements-deploy.txt "
        "(bash tests/run.sh installs it into ./.venv)"
    )
