"""dataset.check: one test per kind of broken data, each naming the file and failing the CLI."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from dataset.check import check_dataset, main
from dataset.synthetic import generate_dataset
from utils.labels import DOG, LabelSet

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def data(tmp_path) -> Path:
    root = tmp_path / "Dog"
    generate_dataset(str(root), 4, 2, 2, seed=5, min_size=32, max_size=48)
    return root


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dataset.check", *map(str, args)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def assert_reported(root: Path, path: Path, words: str) -> list[str]:
    """The function names ``path`` in a problem containing ``words``; the CLI exits non-zero."""
    report = check_dataset(root)
    assert not report.ok
    hits = [p for p in report.problems if str(path) in p and words in p]
    assert hits, report.problems
    assert main([str(root)]) == 1
    return hits


def test_clean_dataset_passes_cli_with_summary(data):
    result = run_cli(data)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.strip().splitlines()
    summary = next(line for line in lines if "label pixels" in line)
    assert "8 images (train 4, val 2, trainTest 2)" in summary
    for name in ("Background", "head", "body", "left_arm", "right_arm", "left_leg", "right_leg", "tail"):
        assert f"{name} " in summary
    assert "0 problems" in summary and lines[-1].startswith("OK")


def test_clean_dataset_report_counts(data):
    report = check_dataset(data)
    assert report.ok and report.problems == [] and report.total_problems == 0
    assert report.counts["images"] == {"train": 4, "val": 2, "trainTest": 2}
    total = sum(report.counts["pixels"].values())
    sizes = sum(cv2.imread(str(p), cv2.IMREAD_GRAYSCALE).size for p in data.glob("*_segmentations/*.png"))
    assert total == sizes and report.counts["ignored"] == 0
    assert all(v > 0 for v in report.counts["pixels"].values())


def test_missing_folder_cli(data):
    shutil.rmtree(data / "val_segmentations")
    result = run_cli(data)
    assert result.returncode == 1
    assert any(
        "folder missing" in line and str(data / "val_segmentations") in line
        for line in result.stdout.splitlines()
    ), result.stdout


def test_missing_id_list_cli(data):
    os.remove(data / "trainTest_id.txt")
    result = run_cli(data, "--splits", "train", "trainTest")
    assert result.returncode == 1
    assert f"id list missing: {data / 'trainTest_id.txt'}" in result.stdout


def test_check_and_training_take_a_folder_without_trainTest_alike(data):
    """The rule of dataset.layout, for both: train in full, the evaluation splits where they exist."""
    from training.data import present_splits

    for name in ("trainTest_id.txt", "trainTest_images", "trainTest_segmentations"):
        path = data / name
        shutil.rmtree(path) if path.is_dir() else os.remove(path)
    result = run_cli(data)
    assert result.returncode == 0, result.stdout
    assert (
        f"warning: {data / 'trainTest_id.txt'} not found: split 'trainTest' is not checked "
        f"(training does not evaluate it either)"
    ) in result.stdout
    assert "6 images (train 4, val 2)" in result.stdout and result.stdout.strip().splitlines()[-1].startswith(
        "OK"
    )
    assert present_splits(str(data), ("val", "trainTest")) == ["val"]
    os.remove(data / "train_id.txt")  # the training split is never optional
    result = run_cli(data)
    assert result.returncode == 1 and f"id list missing: {data / 'train_id.txt'}" in result.stdout


def test_unreadable_image_cli(data):
    bad = data / "train_images" / "syn_00001.jpg"
    bad.write_bytes(b"\xff\xd8 definitely not a whole jpeg")
    result = run_cli(data)
    assert result.returncode == 1
    assert any("cannot be decoded" in line and str(bad) in line for line in result.stdout.splitlines())


def test_label_value_out_of_range_cli(data):
    path = data / "val_segmentations" / "syn_00004.png"
    label = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    label[0, :3] = (8, 200, 255)  # 255 is fine, 8 and 200 are not
    cv2.imwrite(str(path), label)
    result = run_cli(data)
    assert result.returncode == 1
    assert any(
        "[8, 200]" in line and str(path) in line and "the preset 'dog'" in line
        for line in result.stdout.splitlines()
    ), result.stdout
    # A set of 9 classes makes 8 legal (the label's one pixel of it counts as a use: no class goes
    # unused); 200 stays a problem, named with the set's file.
    nine = LabelSet.from_dict({"names": [*DOG.names, "collar"]}, "nine.json")
    report = check_dataset(data, label_set=nine)
    assert [p for p in report.problems if "[200]" in p and "nine.json" in p]
    assert not [p for p in report.problems if "[8, 200]" in p] and report.warnings == []


def test_missing_data_dir(tmp_path):
    assert_reported(tmp_path / "nowhere", tmp_path / "nowhere", "data directory missing")


def test_id_without_image(data):
    path = data / "train_images" / "syn_00002.jpg"
    os.remove(path)
    assert_reported(data, path, "image missing")


def test_id_without_label(data):
    path = data / "trainTest_segmentations" / "syn_00007.png"
    os.remove(path)
    assert_reported(data, path, "label missing")


def test_empty_image(data):
    path = data / "val_images" / "syn_00005.jpg"
    path.write_bytes(b"")
    assert_reported(data, path, "empty file (0 bytes)")


def test_size_mismatch(data):
    path = data / "train_segmentations" / "syn_00000.png"
    label = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    cv2.imwrite(str(path), label[:-3])
    assert_reported(data, path, "size mismatch")


def test_duplicate_id(data):
    path = data / "train_id.txt"
    path.write_text(path.read_text() + "syn_00001\n")
    hits = assert_reported(data, path, "duplicate id 'syn_00001'")
    assert "lines 2 and 5" in hits[0]


@pytest.mark.parametrize("channels", [1, 4])
def test_image_not_three_channels(data, channels):
    path = data / "train_images" / "syn_00003.jpg"
    image = cv2.imread(str(path))
    if channels == 1:
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_BGR2GRAY))
    else:  # JPEG has no alpha: an RGBA PNG under a .jpg name, as seen in scraped data
        ok, buf = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_BGR2BGRA))
    path.write_bytes(buf.tobytes())
    assert_reported(data, path, f"image has {channels} channel(s)")


def test_colour_label(data):
    path = data / "val_segmentations" / "syn_00004.png"
    label = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    cv2.imwrite(str(path), cv2.merge([label, label, label]))
    assert_reported(
        data,
        path,
        "expected single-channel 8-bit ids; colour masks convert with "
        "`python -m dataset.convert SRC --from cvat-mask --out NEW_DIR`",
    )


def test_palette_label(data):
    # Pillow comes with matplotlib; only this test needs it, to write a palette PNG.
    from PIL import Image

    path = data / "val_segmentations" / "syn_00004.png"
    label = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    image = Image.fromarray(label)  # "L"; putpalette turns it into "P" with the same indices
    image.putpalette(list(np.arange(768) % 256))
    image.save(path)
    assert_reported(
        data,
        path,
        "palette PNG (OpenCV reads its colours, not its ids); convert the masks with "
        "`python -m dataset.convert SRC --from palette --out NEW_DIR`",
    )


def test_every_problem_is_reported_up_to_the_limit(data):
    for name in ("syn_00000", "syn_00001", "syn_00002"):
        (data / "train_images" / f"{name}.jpg").write_bytes(b"")
    report = check_dataset(data)
    assert report.total_problems == 3 and len(report.problems) == 3
    limited = check_dataset(data, max_problems=2)
    assert limited.total_problems == 3 and len(limited.problems) == 2 and not limited.ok
    assert "3 problems" in limited.summary
