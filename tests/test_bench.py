"""Smoke tests of bench/: each benchmark runs end to end at a tiny size and writes sound JSON.

The numbers of a tiny run mean nothing; what is checked is that every bench still runs against
the current model, loss, loader and evaluation loop, and reports the keys that the figures and
speed targets of bench/RESULTS.md rely on, with positive values and consistent ratios.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys

import pytest
import torch

from bench.common import format_table, summarize

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_bench(module: str, *args: str, json_path: str) -> dict:
    cmd = [sys.executable, "-m", module, *args, "--json", json_path]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}"
    with open(json_path) as f:
        return json.load(f)


def positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_summarize_and_table():
    stats = summarize([4.0, 1.0, 3.0, 2.0, 100.0])
    assert stats["median"] == 3.0 and stats["min"] == 1.0 and stats["max"] == 100.0 and stats["n"] == 5
    assert stats["q1"] == 2.0 and stats["q3"] == 4.0  # one outlier moves neither the median nor the IQR
    table = format_table([{"a": 1.23456, "b": None}], [("a", "A", ".2f"), ("b", "B", "")])
    assert table.splitlines() == ["| A | B |", "|---|---|", "| 1.23 | - |"]


@pytest.mark.parametrize(
    "module,configs,bad",
    [("bench.train_step", "default,turbo", "turbo"), ("bench.deploy", "authors,tensorrt", "tensorrt")],
)
def test_unknown_config_is_refused(module, configs, bad):
    done = subprocess.run(
        [sys.executable, "-m", module, "--configs", configs],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and bad in done.stderr


@pytest.mark.slow
def test_train_step_json(tmp_path):
    out = run_bench(
        "bench.train_step",
        "--device",
        "cpu",
        "--batch-size",
        "2",
        "--input-size",
        "32,32",
        "--iters",
        "2",
        "--warmup",
        "0",
        "--memory-steps",
        "1",
        "--configs",
        "default,baseline",
        json_path=str(tmp_path / "train.json"),
    )
    assert out["configs"] == ["default", "baseline"]
    for name in ("default", "baseline"):
        entry = out[name]
        for key in ("step_s", "images_per_s", "peak_mem_mb", "model_mem_mb", "achieved_tflops"):
            assert positive(entry[key]), (name, key, entry.get(key))
        assert len(entry["step_samples"]) == 2
        assert entry["step_s_min"] <= entry["step_s"] <= entry["step_s_max"]
        assert entry["images_per_s"] == pytest.approx(2 / entry["step_s"])
        assert entry["peak_mem_mb"] >= entry["model_mem_mb"]
        assert math.isfinite(entry["loss"])
    from utils.device import default_amp  # the default config's precision: train.py's choice for the device

    default, baseline = out["default"], out["baseline"]
    assert default["amp"] == default_amp(torch.device("cpu"))
    assert (
        default["channels_last"] and default["norm"] == "inplace" and default["inplace"] is True
    )  # CPU: in place
    assert baseline["amp"] == "off" and not baseline["channels_last"] and baseline["norm"] == "abn"
    assert out["ratios"]["step_time"] == pytest.approx(default["step_s"] / baseline["step_s"])
    assert out["ratios"]["peak_mem"] == pytest.approx(default["peak_mem_mb"] / baseline["peak_mem_mb"])
    # FLOPs scale with the pixels: 105.6 GFLOP at 384x384 (docs/reference.md section 4) is ~0.73 GFLOP
    # at 32x32; training ~3x.
    assert 0.5e9 < out["flops_per_image"] < 1.0e9
    assert 2.0 < out["train_flops_per_image"] / out["flops_per_image"] < 3.5
    # The rates of the precisions measured, and only those (emulated bf16 would take minutes).
    assert sorted(out["matmul_tflops"]) == sorted({"fp32", "bf16" if default["amp"] == "bf16" else "fp32"})
    assert all(positive(rate) for rate in out["matmul_tflops"].values())
    assert out["versions"]["torch"] and "bench.train_step" in out["command"]


@pytest.mark.slow
def test_evaluate_json(tmp_path):
    out = run_bench(
        "bench.evaluate",
        "--device",
        "cpu",
        "--input-size",
        "48,48",
        "--images",
        "3",
        "--repeats",
        "1",
        "--workers",
        "0",
        "--amp",
        "bf16",
        "--channels-last",
        json_path=str(tmp_path / "eval.json"),
    )
    entry = out["bf16"]
    assert out["modes"] == ["bf16"] and entry["images"] == 3
    assert positive(entry["images_per_s"]) and positive(entry["network_s_per_image"])
    assert entry["network_s_per_image"] <= entry["total_s_per_image"]
    assert 0.0 <= entry["outside_share"] < 1.0
    assert 0.0 <= entry["mean_iou"] <= 100.0


@pytest.mark.slow
def test_evaluate_compare_amp(tmp_path):
    from networks.dfpnet import DFPNet

    torch.manual_seed(0)
    checkpoint = tmp_path / "model.pth"
    torch.save(DFPNet(8).state_dict(), checkpoint)
    out = run_bench(
        "bench.evaluate",
        "--device",
        "cpu",
        "--compare-amp",
        "--restore-from",
        str(checkpoint),
        "--input-size",
        "32,32",
        "--images",
        "2",
        "--repeats",
        "1",
        "--workers",
        "0",
        json_path=str(tmp_path / "amp.json"),
    )
    assert out["modes"] == ["off", "bf16"]
    assert out["mean_iou_difference"] == pytest.approx(out["bf16"]["mean_iou"] - out["off"]["mean_iou"])
    assert out["within_tolerance"] == (abs(out["mean_iou_difference"]) <= 0.1)


@pytest.mark.slow
def test_data_json(tmp_path):
    out = run_bench(
        "bench.data",
        "--workers",
        "0,1",
        "--batch-size",
        "2",
        "--input-size",
        "64,64",
        "--batches",
        "4",
        "--repeats",
        "1",
        "--images",
        "3",
        json_path=str(tmp_path / "data.json"),
    )
    assert sorted(out["workers"]) == ["0", "1"]
    for entry in out["workers"].values():
        assert positive(entry["samples_per_s"]) and positive(entry["first_batch_s"])
        assert positive(entry["overall_samples_per_s"])
    # Steady state: 4 batches of 2 after the first; with one worker the 2 prefetched ones are skipped.
    assert out["workers"]["0"]["passes"][0]["samples"] == 8
    assert out["workers"]["1"]["passes"][0]["samples"] == 4


# int8 on both runtimes where OpenVINO is installed (the bench quantizes once for both)
INT8 = ["onnxruntime-int8"] + (["openvino-int8"] if importlib.util.find_spec("openvino") else [])


@pytest.mark.slow
def test_deploy_json(tmp_path):
    out = run_bench(
        "bench.deploy",
        "--input-size",
        "32,32",
        "--iters",
        "2",
        "--warmup",
        "0",
        "--configs",
        "default,fused,onnxruntime," + ",".join(INT8),
        "--calibration-images",
        "2",
        json_path=str(tmp_path / "deploy.json"),
    )
    assert out["configs"] == [
        "authors",
        "default",
        "fused",
        "onnxruntime",
        *INT8,
    ]  # authors added: the ratios need it
    for name in out["configs"]:
        if name in INT8:  # int8: near the authors' float32, not equal to it
            assert 1e-6 < out[name]["relative_error"] < 0.5 and positive(out[name]["images_per_s"])
            continue
        entry = out[name]
        assert (
            positive(entry["s_per_call"]) and positive(entry["images_per_s"]) and len(entry["samples"]) == 2
        )
        assert out["ratios"][name] == pytest.approx(entry["images_per_s"] / out["authors"]["images_per_s"])
        assert entry["relative_error"] < 1e-4 and entry["argmax_agreement"] > 0.99  # same numbers, any speed
    assert out["ratios"]["authors"] == 1.0 and isinstance(out["target_met"], bool)
    assert out["versions"]["onnxruntime"] and out["cpu_flags"] and out["cpu_class"]
    int8 = out["targets"]["int8"]
    assert int8["target"] in (2.0, 4.0) and int8["best"] in INT8 and isinstance(int8["met"], bool)
