"""A dataset with its own labels.json, of a class set the project was not designed for (QUAD6: six
classes, the one left/right pair at ids 5 and 2): the loader mirrors exactly its pairs; train.py,
evaluate.py and parse_images.py need no class flag; checkpoints carry the set; fine-tuning from an
8-class checkpoint re-initialises the classifiers only; other sets are refused, naming both."""

from __future__ import annotations

import glob
import json
import os
import shutil

import cv2
import numpy as np
import pytest
import torch

import evaluate
import parse_images
import train
from dataset.datasets import CartoonDataSet
from networks.dfpnet import DFPNet
from tests.labelsets import DOG_TO_QUAD6, QUAD6, RENAMED8, remapped_dataset
from tests.scripts import run_call
from training.model import fine_tune_from
from utils.checkpoint import read_checkpoint, read_weights, save_atomic, stored_label_set, with_label_set
from utils.labels import DOG, LabelSet, load_label_file, preset

CLASSIFIERS = ("aux_pred.4.", "outc.2.")


@pytest.fixture(scope="module")
def quad_data(tmp_path_factory) -> str:
    folder = str(tmp_path_factory.mktemp("quad") / "data")
    return remapped_dataset(folder, QUAD6, DOG_TO_QUAD6, 16, 4, 0, seed=1)


@pytest.fixture(scope="module")
def quad() -> LabelSet:
    return LabelSet.from_dict(QUAD6, "QUAD6")


@pytest.fixture(scope="module")
def dog_checkpoint(tmp_path_factory) -> str:
    """An 8-class DFPnet of the Dog set, as train.py writes best.pth."""
    torch.manual_seed(0)
    path = str(tmp_path_factory.mktemp("dog") / "dog8.pth")
    save_atomic(with_label_set(DFPNet(8).state_dict(), DOG), path)
    return path


_run = run_call


def _assert_parsed_in_colours(parsed, label_set: LabelSet, pictures: int) -> None:
    """parse_images.py's outputs in ``parsed``: ``pictures`` label maps with ids of ``label_set`` only,
    each coloured exactly with its palette."""
    parsed_labels = glob.glob(str(parsed / "*_label.png"))
    assert len(parsed_labels) == pictures
    for path in parsed_labels:
        label = cv2.imread(path, cv2.IMREAD_UNCHANGED)
        colour = cv2.imread(path.replace("_label.png", "_color.png"))[:, :, ::-1]
        assert label.max() < label_set.num_classes
        np.testing.assert_array_equal(colour, label_set.colours()[label])


# ---------------------------------------------------------------------------------------------
# The loader
# ---------------------------------------------------------------------------------------------


def test_mirrored_samples_swap_exactly_the_sets_pairs(tmp_path):
    # 64 x 64 pictures into a 63 x 63 crop: the loader's affine is then the identity (scale 1, the
    # center (w-1)/2 onto crop_w/2), so each crop is the label file's own pixels, mirrored or not.
    data = remapped_dataset(
        str(tmp_path / "data"), QUAD6, DOG_TO_QUAD6, 6, 0, 0, seed=2, min_size=64, max_size=64
    )
    lut = np.arange(256, dtype=np.uint8)
    lut[[2, 5]] = [5, 2]  # left_legs <-> right_legs, written out by hand
    common = dict(crop_size=(63, 63), scale_factor=0, rotation_factor=0)
    flipped = CartoonDataSet(data, "train", flip_prob=1, **common)  # the set from labels.json
    plain = CartoonDataSet(data, "train", flip_prob=0, **common)
    assert flipped.label_set.names == tuple(QUAD6["names"])
    for index in range(len(flipped)):
        original = cv2.imread(flipped.label_path(index), cv2.IMREAD_UNCHANGED)
        _, f_label, _, f_meta = flipped[index]
        _, p_label, _, p_meta = plain[index]
        assert bool(f_meta["flip"]) and not bool(p_meta["flip"])
        np.testing.assert_array_equal(p_label, original[:63, :63])
        np.testing.assert_array_equal(f_label, lut[original[:, ::-1]][:63, :63])
        assert {2, 5} <= set(np.unique(f_label).tolist())
        # The Dog set's pairs (3, 4), (5, 6) would have traded this set's torso and head.
        assert not np.array_equal(f_label, DOG.flip_lut()[original[:, ::-1]][:63, :63])


# ---------------------------------------------------------------------------------------------
# Fine-tuning across label sets
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["quad6", "renamed8", "dog"])
def test_fine_tuning_loads_every_layer_but_the_classifiers_of_another_set(dog_checkpoint, target, capsys):
    label_set = {
        "quad6": LabelSet.from_dict(QUAD6, "quad6"),
        "renamed8": LabelSet.from_dict(RENAMED8, "r8"),
        "dog": DOG,
    }[target]
    torch.manual_seed(1)
    model = DFPNet(label_set.num_classes)
    fresh = {k: v.clone() for k, v in model.state_dict().items() if k.startswith(CLASSIFIERS)}
    weights = read_weights(dog_checkpoint)
    note = fine_tune_from(model, weights, label_set)
    out = capsys.readouterr().out
    for key, value in model.state_dict().items():
        if key.endswith("num_batches_tracked"):
            continue
        if key.startswith(CLASSIFIERS) and target != "dog":
            assert torch.equal(value, fresh[key]), key  # re-initialised: what the model was built with
        else:
            assert torch.equal(value, weights.state[key]), key
    if target == "dog":
        assert note == f"all weights from {dog_checkpoint}" and out == ""
    else:  # the same 8 classes under other names are other classes too
        assert len(out.strip().splitlines()) == 1 and dog_checkpoint in out
        assert "8 classes: Background, head" in out and "aux_pred.4, outc.2 re-initialised" in out


# ---------------------------------------------------------------------------------------------
# End to end, no class flag anywhere
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_own_label_set_end_to_end(quad_data, quad, dog_checkpoint, tmp_path, capsys):
    snap = str(tmp_path / "snap")
    train_args = [
        "--data-dir",
        quad_data,
        "--input-size",
        "48,48",
        "--batch-size",
        "4",
        "--epochs",
        "1",
        "--restore-from",
        dog_checkpoint,
        "--snapshot-dir",
        snap,
        "--workers",
        "0",
        "--val-datasets",
        "val",
        "--log-every",
        "1",
        "--image-every",
        "2",
    ]
    code, out, err = _run(lambda: train.run(train_args), capsys)
    assert code == 0, err
    labels_json = os.path.join(quad_data, "labels.json")
    assert (
        f"label set: 6 classes from {labels_json}: background, tail, right_legs, torso, head, left_legs; "
        f"mirror pairs: left_legs<->right_legs"
    ) in out
    assert "trained with another label set (8 classes: Background" in out and "outc.2 re-initialised" in out

    # Every checkpoint records the set; the epoch snapshot stays the authors' plain DataParallel state_dict.
    names = sorted(os.path.basename(p) for p in glob.glob(os.path.join(snap, "*.pth")))
    assert names == ["DFPnet_epoch_0.pth", "best.pth", "last.pth"]
    for name in names:
        path = os.path.join(snap, name)
        assert stored_label_set(read_checkpoint(path), path).to_dict() == quad.to_dict(), name
    plain = torch.load(os.path.join(snap, "DFPnet_epoch_0.pth"), map_location="cpu", weights_only=True)
    model = torch.nn.DataParallel(DFPNet(6))
    model.load_state_dict(plain)  # torch's own strict load: the recorded set is invisible to it

    # TensorBoard: one IoU curve per class of the set, by name.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for name in QUAD6["names"]:
        events = EventAccumulator(os.path.join(snap, "mIoUval", name))
        events.Reload()
        assert [e.step for e in events.Scalars("mIoUval")] == [1], name

    # evaluate.py: no class flag; the names in its table and JSON, the colours in its pictures.
    best, metrics, pictures = os.path.join(snap, "best.pth"), tmp_path / "m.json", tmp_path / "pics"
    common = ["--input-size", "48,48", "--workers", "0", "--no-progress", "--device", "cpu"]
    code, out, err = _run(
        lambda: evaluate.main(
            evaluate.get_arguments(
                [
                    "--restore-from",
                    best,
                    "--data-dir",
                    quad_data,
                    "--metrics-out",
                    str(metrics),
                    "--save-path",
                    str(pictures),
                    *common,
                ]
            )
        ),
        capsys,
    )
    assert code == 0, err
    for name in ("right_legs", "torso", "left_legs"):
        assert any(line.startswith(name) for line in out.splitlines()), out
    result = json.loads(metrics.read_text())
    assert list(result["per_class_iou"]) == QUAD6["names"] and len(result["confusion_matrix"]) == 6
    assert result["label_set"]["flip_pairs"] == [["left_legs", "right_legs"]]
    assert (pictures / "legend.png").is_file()

    # parse_images.py: coloured with the set's palette, which it reads from the checkpoint.
    parsed = tmp_path / "parsed"
    code, out, err = _run(
        lambda: parse_images.main(
            parse_images.get_arguments(
                [
                    "--restore-from",
                    best,
                    "--out",
                    str(parsed),
                    "--flip",
                    *common,
                    os.path.join(quad_data, "val_images"),
                ]
            )
        ),
        capsys,
    )
    assert code == 0, err
    _assert_parsed_in_colours(parsed, quad, 4)

    # Data of another label set, or --labels of other classes: refused in one line naming both.
    other = tmp_path / "other"
    shutil.copytree(quad_data, other)
    (other / "labels.json").write_text(
        json.dumps({"names": ["bg", "b", "c", "d", "e", "f"], "flip_pairs": [["f", "c"]]})
    )
    for extra, needle in (
        (["--data-dir", str(other)], str(other / "labels.json")),
        (["--data-dir", quad_data, "--labels", "dog"], "the preset 'dog' (--labels dog)"),
    ):
        code, out, err = _run(
            lambda: evaluate.main(evaluate.get_arguments(["--restore-from", best, *extra, *common])), capsys
        )
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert f"the checkpoint {best} was trained with 6 classes (background, tail" in err and needle in err

    # Resuming the run with another label set is refused; the training state stays as it was.
    before = os.path.getmtime(os.path.join(snap, "last.pth"))
    code, out, err = _run(lambda: train.run([*train_args, "--labels", "dog"]), capsys)
    assert code == 2 and "last.pth: the run it continues has 6 classes" in err, err
    assert "8 classes from the preset 'dog'" in err
    assert os.path.getmtime(os.path.join(snap, "last.pth")) == before


@pytest.mark.slow
@pytest.mark.parametrize("given", ["file", "preset"])
def test_labels_flag_overrides_the_data_folders_set_through_train_evaluate_and_parse(
    quad_data, given, tmp_path, capsys
):
    """--labels wins over the data folder's labels.json: a file of the same six classes under other
    names, colours and pair, or a preset with room for the data's ids (Pascal-Person-Part's 7). Two
    steps from scratch; the checkpoint, evaluate.py's scores and parse_images.py's colours all carry
    the given set, none the folder's."""
    if given == "file":
        labels = {
            "names": ["bg", "a", "r", "c", "d", "l"],
            "flip_pairs": [["l", "r"]],
            "palette": [[5, 5, 5], [200, 0, 0], [0, 200, 0], [0, 0, 200], [200, 200, 0], [0, 200, 200]],
        }
        spec = str(tmp_path / "mine.json")
        (tmp_path / "mine.json").write_text(json.dumps(labels))
        want, said = LabelSet.from_dict(labels, spec), f"label set: 6 classes from {spec}: bg, a, r, c, d, l"
    else:
        spec, want = "pascal-person-part", preset("pascal-person-part")
        said = "label set: 7 classes from the preset 'pascal-person-part' (--labels pascal-person-part)"
    snap = tmp_path / "snap"
    common = ["--input-size", "48,48", "--workers", "0", "--labels", spec]
    argv = ["--data-dir", quad_data, "--batch-size", "4", "--restore-from", "none", "--max-iters", "2"]
    code, out, err = _run(
        lambda: train.run([*argv, *common, "--snapshot-dir", str(snap), "--val-datasets"]), capsys
    )
    assert code == 0, err
    assert said in out, out
    last = str(snap / "last.pth")
    assert stored_label_set(read_checkpoint(last), last).to_dict() == want.to_dict()

    metrics, parsed = tmp_path / "m.json", tmp_path / "parsed"
    run = ["--restore-from", last, *common, "--no-progress", "--device", "cpu"]
    code, out, err = _run(
        lambda: evaluate.main(
            evaluate.get_arguments([*run, "--data-dir", quad_data, "--metrics-out", str(metrics)])
        ),
        capsys,
    )
    assert code == 0, err
    result = json.loads(metrics.read_text())
    assert (
        list(result["per_class_iou"]) == list(want.names)
        and len(result["confusion_matrix"]) == want.num_classes
    )
    code, out, err = _run(
        lambda: parse_images.main(
            parse_images.get_arguments([*run, "--out", str(parsed), os.path.join(quad_data, "val_images")])
        ),
        capsys,
    )
    assert code == 0, err
    _assert_parsed_in_colours(parsed, want, 4)


def test_num_classes_that_disagrees_with_the_set_is_one_line(quad_data, tmp_path, capsys):
    code, _, err = _run(
        lambda: train.run(
            ["--data-dir", quad_data, "--num-classes", "8", "--snapshot-dir", str(tmp_path / "s")]
        ),
        capsys,
    )
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "--num-classes 8" in err and f"6 classes from {os.path.join(quad_data, 'labels.json')}" in err
    assert not (tmp_path / "s").exists()
    assert load_label_file(os.path.join(quad_data, "labels.json")).num_classes == 6


# ---------------------------------------------------------------------------------------------
# dataset.check and dataset.browse follow the set
# ---------------------------------------------------------------------------------------------


def test_check_names_ids_outside_the_set_and_warns_of_unused_classes(quad_data, tmp_path, capsys):
    import dataset.check

    code, out, _ = _run(lambda: dataset.check.main([quad_data, "--splits", "train", "val"]), capsys)
    assert code == 0 and "OK" in out and "warning" not in out
    assert "left_legs " in out and "right_legs " in out  # label pixels per class, by name
    # LIP's 20 classes: the data uses ids 0..5 of them; the other 14 are named in one warning.
    code, out, _ = _run(
        lambda: dataset.check.main([quad_data, "--splits", "train", "val", "--labels", "lip"]), capsys
    )
    warnings = [line for line in out.splitlines() if line.startswith("warning")]
    assert code == 0 and len(warnings) == 1
    assert "Dress (6)" in warnings[0] and "Right-shoe (19)" in warnings[0]
    assert "Upper-clothes (5)" not in warnings[0]
    # Four classes: ids 4 and 5 are not in the set; each label holding them is named with the set.
    small = tmp_path / "four.json"
    small.write_text(json.dumps({"names": ["bg", "tail", "legs", "torso"]}))
    code, out, _ = _run(
        lambda: dataset.check.main([quad_data, "--splits", "train", "--labels", str(small)]), capsys
    )
    problems = [line for line in out.splitlines() if "are not in the label set" in line]
    assert code == 1 and problems and all(str(small) in p and "ids 0..3" in p for p in problems)
    assert any("[4, 5]" in p for p in problems) and "NOT USABLE" in out


def test_browse_pictures_show_the_files_and_the_augmentation_in_the_sets_colours(
    quad_data, quad, tmp_path, capsys
):
    import dataset.browse

    out = tmp_path / "plain"
    code, stdout, err = _run(
        lambda: dataset.browse.main([quad_data, "--split", "val", "--out", str(out)]), capsys
    )
    assert code == 0, err
    assert sorted(os.listdir(out)) == [f"syn_{k:05d}.png" for k in range(16, 20)]
    paths = CartoonDataSet(quad_data, "val")
    for index in range(4):
        picture = cv2.imread(str(out / f"{paths.ids[index]}.png"))
        image = cv2.imread(paths.image_path(index))
        label = cv2.imread(paths.label_path(index), cv2.IMREAD_UNCHANGED)
        h, w = label.shape
        np.testing.assert_array_equal(picture[:h, :w], image)
        np.testing.assert_array_equal(picture[:h, w + 6 : 2 * w + 6], quad.colorize(label)[:, :, ::-1])
        legend = picture[h + 22 :].reshape(-1, 3)
        for colour in quad.colours()[:, ::-1]:  # every class's swatch is in the legend
            assert (legend == colour).all(1).any(), colour

    out = tmp_path / "augmented"
    code, stdout, err = _run(
        lambda: dataset.browse.main(
            [quad_data, "--out", str(out), "--num", "8", "--augment", "--input-size", "40,40", "--seed", "5"]
        ),
        capsys,
    )
    assert code == 0, err
    files = sorted(os.listdir(out))
    mirrored = [f for f in files if f.endswith("_mirrored.png")]
    assert len(files) == 8 and 0 < len(mirrored) < 8 and f"{len(mirrored)} of them mirrored" in stdout
    allowed = {tuple(c) for c in quad.colours()[:, ::-1].tolist()} | {(255, 255, 255)}
    train_set = CartoonDataSet(quad_data, "train", crop_size=(40, 40))
    for index, name in enumerate(train_set.ids[:8]):
        dataset.browse.seed_sample(5, index)
        crop, crop_label, _, meta = train_set[index]
        path = out / f"{name}{'_mirrored' if meta['flip'] else ''}.png"
        picture = cv2.imread(str(path))
        np.testing.assert_array_equal(picture[:40, :40], crop)
        tile = picture[:40, 46:86]
        np.testing.assert_array_equal(tile, quad.colorize(crop_label.astype(np.uint8))[:, :, ::-1])
        assert {tuple(c) for c in tile.reshape(-1, 3).tolist()} <= allowed
