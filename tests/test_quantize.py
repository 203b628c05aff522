"""Deploy at fewer bits: export.py --precision int8/bf16, the runtimes that run them, and the CPU facts
that choose (inference/quantize.py, inference/onnx_infer.py, utils/cpuinfo.py).

One small checkpoint (two training steps on a synthetic set, 64x64) is exported once in float32 and
once in int8 (calibrated on 4 images) per module; the models' accuracy on real data is measured by
``python -m bench.precision`` (bench/RESULTS.md section 15), not here.
"""

from __future__ import annotations

import contextlib
import io
import json
import os

import numpy as np
import onnx
import pytest
import torch

import evaluate
import export
import parse_images
from bench.common import cpu_class_name
from inference.onnx_infer import OnnxModel, choose_runtime, openvino_available
from inference.pipeline import ImageFiles, list_images
from inference.quantize import CalibrationError, calibration_set, float_nodes
from networks.dfpnet import DFPNet
from tests.scripts import run_main
from utils.checkpoint import save_atomic
from utils.cpuinfo import int8_dot_product, isa_ceiling, native_bf16
from utils.labels import DOG

SIZE = "64,64"
AMX = frozenset({"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "avx_vnni"})
ZEN4 = frozenset({"avx2", "avx512f", "avx512_vnni", "avx512_bf16"})
SKYLAKE = frozenset({"avx2", "avx512f"})
HASWELL = frozenset({"avx2"})
needs_openvino = pytest.mark.skipif(not openvino_available(), reason="openvino is not installed")


def make_data(root) -> None:
    from dataset.synthetic import generate_dataset

    generate_dataset(str(root), 6, 3, 0, seed=5, min_size=48, max_size=96)


def make_checkpoint(data, path) -> None:
    """Two training steps from DFPNet's init: logits with some structure, not a random net's."""
    from dataset.datasets import CartoonDataSet, default_transform
    from training.loss import parsing_loss

    torch.manual_seed(0)
    model = DFPNet(8)
    train = CartoonDataSet(str(data), "train", crop_size=(64, 64), transform=default_transform())
    loader = torch.utils.data.DataLoader(train, batch_size=3, shuffle=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    for images, labels, *_ in loader:
        optimizer.zero_grad()
        parsing_loss(model(images), labels).backward()
        optimizer.step()
    save_atomic(model.eval().state_dict(), path)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("quantize") / "data"
    make_data(root)
    return root


@pytest.fixture(scope="module")
def checkpoint(data, tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "model.pth"
    make_checkpoint(data, path)
    return path


@pytest.fixture(scope="module")
def exported(checkpoint, data, tmp_path_factory):
    """{"bf16": path, "int8": path, "<precision>_stdout": what export.py printed}. The bf16 model is the
    float32 graph: on onnxruntime it is the float32 reference."""
    folder = tmp_path_factory.mktemp("exported")
    out = {}
    for precision in ("bf16", "int8"):
        path = folder / f"{precision}.onnx"
        argv = ["--restore-from", str(checkpoint), "--out", str(path), "--input-size", SIZE]
        argv += ["--precision", precision, "--data-dir", str(data), "--calibration-images", "4"]
        argv += ["--reduce-range", "on"]
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):  # a module fixture: no capsys
            export.main(export.get_arguments(argv))
        out[precision], out[f"{precision}_stdout"] = path, printed.getvalue()
    return out


def _meta(path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


def _val(data) -> np.ndarray:
    images = ImageFiles(list_images([str(data / "val_images")]), (64, 64))
    return np.stack([images[i][0] for i in range(len(images))])


# ---------------------------------------------------------------------------------------------
# the int8 model
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_int8_model_is_quantized_and_records_its_calibration(exported, data):
    model = onnx.load(str(exported["int8"]))
    ops = [node.op_type for node in model.graph.node]
    assert ops.count("QuantizeLinear") > 100 and ops.count("DequantizeLinear") > 100
    int8_weights = [
        t for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 4
    ]
    convs = [node for node in model.graph.node if node.op_type == "Conv"]
    floats = {t.name for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT}
    # The first convolution and outc's two (after the last Resize) keep float weights; the others are int8.
    kept = [conv for conv in convs if conv.input[1] in floats]
    assert [conv.name for conv in kept] == [convs[0].name, convs[-2].name, convs[-1].name]
    assert len(int8_weights) == len(convs) - 3
    meta = _meta(exported["int8"])
    assert meta["precision"] == "int8" and meta["reduce_range"] == "true"
    calibration = json.loads(meta["calibration"])
    assert calibration["images"] == 4 and calibration["split"] == "train"
    assert calibration["input_size"] == [64, 64] and calibration["float_nodes"][0] == convs[0].name
    assert calibration["float_nodes"][-1] == convs[-1].name and len(calibration["float_nodes"]) == 5
    assert meta["output"] == "logits" and json.loads(meta["class_names"])[0] == "Background"
    assert os.path.getsize(exported["int8"]) < 0.3 * os.path.getsize(exported["bf16"])
    assert "float32 on 4 calibration images: labels agree on" in exported["int8_stdout"]
    assert ", int8, opset 18" in exported["int8_stdout"]
    assert not [p for p in os.listdir(exported["int8"].parent) if p.startswith(".")]  # no temporary left


@pytest.mark.slow
@pytest.mark.parametrize("runtime", ["onnxruntime", pytest.param("openvino", marks=needs_openvino)])
def test_int8_runs_close_to_float32(exported, data, runtime):
    x = _val(data)
    reference = OnnxModel(str(exported["bf16"]), runtime="onnxruntime")
    model = OnnxModel(str(exported["int8"]), runtime=runtime)
    assert model.precision == model.run_precision == "int8" and model.runtime == runtime
    assert (
        model.describe().startswith(f"{runtime} ")
        and "int8 (calibrated on 4 train images)" in model.describe()
    )
    want, got = reference(x), model(x)
    assert got.shape == want.shape and got.dtype == np.float32
    err = float(np.linalg.norm(got - want) / np.linalg.norm(want))
    agree = float((got.argmax(1) == want.argmax(1)).mean())
    print(f"{runtime}: int8 vs float32 relative error {err:.3e}, argmax agreement {agree:.4f}")
    assert err < 0.15 and agree > 0.9  # int8, not float32: close, not equal (measured: see the print)
    assert err > 1e-5  # really quantized: not the float32 graph


@pytest.mark.slow
@pytest.mark.parametrize("runtime", ["onnxruntime", pytest.param("openvino", marks=needs_openvino)])
def test_int8_flip_uses_the_models_own_pairs(exported, data, runtime, tmp_path):
    """Flip testing on the int8 model, with a set whose pairs are not at the Dog's ids: the average
    of two plain int8 predictions, mirrored back with the set's channels exchanged."""
    from tests.labelsets import OTHER_PAIRS8, flip_averaged, relabelled_onnx
    from utils.labels import LabelSet

    other = LabelSet.from_dict(OTHER_PAIRS8, "OTHER_PAIRS8")
    model = OnnxModel(
        relabelled_onnx(str(exported["int8"]), str(tmp_path / "int8.onnx"), other), runtime=runtime
    )
    assert model.label_set.to_dict() == other.to_dict() and model.run_precision == "int8"
    x = _val(data)
    plain, mirror = model.predict_probs(x), model.predict_probs(np.ascontiguousarray(x[..., ::-1]))
    np.testing.assert_allclose(
        model.predict_probs(x, flip=True), flip_averaged(plain, mirror, other), atol=1e-6
    )
    assert np.abs(flip_averaged(plain, mirror, DOG) - flip_averaged(plain, mirror, other)).max() > 1e-3


@pytest.mark.slow
@needs_openvino
def test_runtimes_agree_on_the_int8_model(exported, data):
    x = _val(data)
    ort = OnnxModel(str(exported["int8"]), runtime="onnxruntime")(x)
    ov = OnnxModel(str(exported["int8"]), runtime="openvino")(x)
    agree = float((ort.argmax(1) == ov.argmax(1)).mean())
    err = float(np.linalg.norm(ort - ov) / np.linalg.norm(ort))
    print(
        f"onnxruntime vs OpenVINO on the int8 model: relative error {err:.2e}, argmax agreement {agree:.4f}"
    )
    # Same file, different int8 kernels and rounding: close, and a two-step model has many near ties.
    assert err < 0.05 and agree > 0.95


@pytest.mark.slow
def test_parse_images_and_evaluate_print_the_precision(exported, data, tmp_path, capsys):
    code, out, err = run_main(
        parse_images,
        [
            "--onnx",
            str(exported["int8"]),
            "--out",
            str(tmp_path / "parsed"),
            "--input-size",
            SIZE,
            "--no-progress",
            str(data / "val_images"),
        ],
        capsys,
    )
    runtime = "openvino" if openvino_available() else "onnxruntime"
    assert code == 0, err
    assert f"images/s, {runtime} " in out and ", cpu, int8 (calibrated on 4 train images))" in out
    metrics = tmp_path / "metrics.json"
    code, out, err = run_main(
        evaluate,
        [
            "--onnx",
            str(exported["int8"]),
            "--data-dir",
            str(data),
            "--dataset",
            "val",
            "--input-size",
            SIZE,
            "--no-progress",
            "--metrics-out",
            str(metrics),
        ],
        capsys,
    )
    assert code == 0, err
    assert f"{runtime} " in out and "cpu, int8" in out
    record = json.loads(metrics.read_text())
    assert record["precision"] == "int8" and record["runtime"] == runtime


@pytest.mark.slow
def test_bf16_model_runs_in_bf16_only_where_native(checkpoint, exported, data):
    path = exported["bf16"]
    assert ", bf16, opset" in exported["bf16_stdout"] and _meta(path)["precision"] == "bf16"
    # export.py checked the graph against PyTorch in float32 (the check's line), whatever the metadata
    assert "onnxruntime vs PyTorch relative error" in exported["bf16_stdout"]
    on_ort = OnnxModel(str(path), runtime="onnxruntime")
    assert on_ort.run_precision == "float32" and "onnxruntime has no bf16 CPU kernels" in on_ort.note
    assert "(a bf16 model)" in on_ort.describe()
    x = _val(data)
    want = on_ort(x)
    if openvino_available():
        model = OnnxModel(str(path))
        assert model.runtime == "openvino"
        assert model.run_precision == ("bf16" if native_bf16() else "float32")
        got = model(x)
        err = float(np.linalg.norm(got - want) / np.linalg.norm(want))
        print(f"OpenVINO {model.run_precision} vs float32: relative error {err:.2e}")
        assert err < 0.05 and float((got.argmax(1) == want.argmax(1)).mean()) > 0.97
        assert (err > 1e-5) is native_bf16()  # bf16 really, and only where native


def test_metadata_records_the_precision():
    args = export.get_arguments(["--precision", "bf16"])
    assert export.metadata(args, DOG)["precision"] == "bf16"
    assert export.metadata(export.get_arguments([]), DOG)["precision"] == "float32"
    assert export.metadata(export.get_arguments([]), DOG)["input_size"] == "[384, 384]"  # not yet resolved


@pytest.mark.slow
def test_bench_precision_scores_every_precision(checkpoint, exported, data, tmp_path, capsys):
    from bench import precision

    out = precision.main(
        precision.get_arguments(
            [
                "--restore-from",
                str(checkpoint),
                "--data-dir",
                str(data),
                "--input-size",
                SIZE,
                "--float-model",
                str(exported["bf16"]),  # the float32 graph: no third export
                "--calibration-images",
                "2",
                "--json",
                str(tmp_path / "p.json"),
            ]
        )
    )
    printed = capsys.readouterr().out
    names = [row["precision"] for row in out["rows"]]
    assert names[0] == "float32" and names[-1] == "int8-onnxruntime"
    assert ("int8" in names) == openvino_available() and ("bf16" in names) == (
        openvino_available() and native_bf16()
    )
    reference = out["rows"][0]
    assert reference["agreement"] == 1.0 and reference["d_mean_iou"] == 0.0
    for row in out["rows"]:
        assert len(row["per_class_iou"]) == 8 and 0.0 <= row["agreement"] <= 1.0
        assert row["d_mean_iou"] == pytest.approx(row["mean_iou"] - reference["mean_iou"])
    assert out["size_mib"]["int8"] < 0.3 * out["size_mib"]["float32"]
    assert (
        "| precision | mean IU | d vs float32 |" in printed and "target (int8 mean IU within 0.5" in printed
    )
    assert json.loads((tmp_path / "p.json").read_text())["rows"][0]["precision"] == "float32"


# ---------------------------------------------------------------------------------------------
# bad input: one line, exit 2, nothing written
# ---------------------------------------------------------------------------------------------


def test_calibration_set_is_spread_and_checked(data, tmp_path):
    chosen = calibration_set(str(data), "train", 3, (64, 64))
    ids = open(data / "train_id.txt").read().split()
    assert [os.path.basename(p)[:-4] for p in chosen.paths] == [ids[0], ids[2], ids[4]]
    assert len(calibration_set(str(data), "train", 100, (64, 64)).paths) == len(ids)
    with pytest.raises(CalibrationError, match="no such id list"):
        calibration_set(str(data), "test", 3, (64, 64))
    (tmp_path / "train_id.txt").write_text("a\n")
    with pytest.raises(CalibrationError, match="calibration image not found"):
        calibration_set(str(tmp_path), "train", 3, (64, 64))


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--precision", "int4"], "invalid choice"),
        (["--calibration-images", "0"], "positive"),
        (["--reduce-range", "maybe"], "invalid choice"),
    ],
)
def test_nonsense_flags_are_refused(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        export.get_arguments(argv)
    assert exc.value.code == 2 and message in capsys.readouterr().err


def _graph(*ops: str) -> onnx.ModelProto:
    nodes = [onnx.helper.make_node(op, [f"t{i}"], [f"t{i + 1}"], name=f"{op}{i}") for i, op in enumerate(ops)]
    return onnx.helper.make_model(onnx.helper.make_graph(nodes, "g", [], []))


def test_float_nodes_are_the_first_conv_and_the_output_block():
    model = _graph("Conv", "Relu", "Conv", "Resize", "Conv", "LeakyRelu", "Conv", "Softmax")
    assert float_nodes(model) == ["Conv0", "Resize3", "Conv4", "LeakyRelu5", "Conv6", "Softmax7"]
    # no Resize before the classifier: the classifier and what follows
    assert float_nodes(_graph("Conv", "Relu", "Conv", "ArgMax")) == ["Conv0", "Conv2", "ArgMax3"]


# ---------------------------------------------------------------------------------------------
# which runtime, which precision: pure functions
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "precision,runtime,openvino,bf16,int8_dot,reduced,want",
    [
        ("float32", "auto", True, True, True, True, ("onnxruntime", "float32", "")),
        ("int8", "auto", True, True, True, True, ("openvino", "int8", "")),
        ("int8", "auto", False, True, True, True, ("onnxruntime", "int8", "")),
        ("bf16", "auto", True, True, True, True, ("openvino", "bf16", "")),
        ("bf16", "auto", True, False, True, True, ("openvino", "float32", "no native bf16")),
        ("bf16", "auto", False, True, True, True, ("onnxruntime", "float32", "no bf16 CPU kernels")),
        ("bf16", "onnxruntime", True, True, True, True, ("onnxruntime", "float32", "no bf16 CPU kernels")),
        ("int8", "openvino", True, False, False, False, ("openvino", "int8", "can saturate")),
        ("int8", "auto", True, False, False, True, ("openvino", "int8", "")),
        ("int8", "auto", True, True, True, False, ("openvino", "int8", "")),
    ],
)
def test_choose_runtime(precision, runtime, openvino, bf16, int8_dot, reduced, want):
    got = choose_runtime(precision, runtime, openvino=openvino, bf16=bf16, int8_dot=int8_dot, reduced=reduced)
    assert got[:2] == want[:2] and (want[2] in got[2] if want[2] else got[2] == "")


@pytest.mark.parametrize(
    "flags,ceiling,bf16,vnni,name",
    [
        (AMX, None, True, True, "avx512 + vnni + avx512_bf16 + amx"),
        (AMX, "AVX512_CORE_BF16", True, True, "avx512 + vnni + avx512_bf16 (capped at AVX512_CORE_BF16)"),
        (AMX, "AVX512_CORE_VNNI", False, True, "avx512 + vnni (capped at AVX512_CORE_VNNI)"),
        (AMX, "AVX2", False, False, "avx2 (capped at AVX2)"),
        (ZEN4, None, True, True, "avx512 + vnni + avx512_bf16"),
        (SKYLAKE, None, False, False, "avx512"),
        (HASWELL, None, False, False, "avx2"),
        (frozenset({"avx2", "avx_vnni"}), None, False, True, "avx2 + vnni"),
    ],
)
def test_cpu_facts(flags, ceiling, bf16, vnni, name):
    assert native_bf16(flags, ceiling) is bf16 and int8_dot_product(flags, ceiling) is vnni
    assert cpu_class_name(flags, ceiling) == name


def test_isa_ceiling_reads_onednn_environment():
    assert isa_ceiling({}) is None and isa_ceiling({"ONEDNN_MAX_CPU_ISA": "ALL"}) is None
    assert isa_ceiling({"ONEDNN_MAX_CPU_ISA": "avx2"}) == "AVX2"
    assert isa_ceiling({"DNNL_MAX_CPU_ISA": "AVX512_CORE"}) == "AVX512_CORE"


def test_reduce_range_auto_follows_the_cpu(monkeypatch):
    monkeypatch.setattr(export, "int8_dot_product", lambda: True)
    assert export.reduce_range("auto") is False and export.reduce_range("on") is True
    monkeypatch.setattr(export, "int8_dot_product", lambda: False)
    assert export.reduce_range("auto") is True and export.reduce_range("off") is False
