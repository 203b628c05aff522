"""dataset.convert and dataset.formats: every format to the ids it was made from, the label sets and
splits it makes, and every bad input refused with one line, the documented exit code and nothing
written. Fixtures are written with the tools' own libraries where they install here (COCO RLE with
pycocotools; Label Studio's brush with its converter, stored in tests/data)."""

from __future__ import annotations

import json
import os
import shutil

import cv2
import numpy as np
import pytest
from PIL import Image

from dataset import check, convert
from dataset.formats import coco, labelme, labelstudio, masks, names, rle, shapes
from dataset.synthetic import render_sample
from inference.annotations import DEFAULT_TOLERANCE
from tests.scripts import run_call, run_main
from utils.labels import DOG, IGNORE_LABEL, LabelSet, load_label_file

mask_api = pytest.importorskip(
    "pycocotools.mask", reason="pycocotools (requirements.txt) writes the COCO fixtures"
)

HERE = os.path.dirname(os.path.abspath(__file__))


def samples(n: int = 6, size: int = 96):
    """n synthetic dogs (picture, label map with the Dog set's ids)."""
    out = []
    for k in range(n):
        s = render_sample(3, k, min_size=size // 2, max_size=size)
        out.append((f"dog{k}", s.image, s.label))
    return out


def layout_labels(data_dir) -> dict[str, tuple[str, np.ndarray, LabelSet]]:
    """id -> (split, label map in the Dog set's ids, the folder's label set), read back from the layout."""
    label_set = load_label_file(os.path.join(data_dir, "labels.json"))
    to_dog = np.full(256, IGNORE_LABEL, np.uint8)
    for i, name in enumerate(label_set.names):
        to_dog[i] = [k for k, n in enumerate(DOG.names) if n.lower() == name.lower()][0]
    out = {}
    for f in os.listdir(data_dir):
        if f.endswith("_id.txt"):
            split = f[: -len("_id.txt")]
            for name in open(os.path.join(data_dir, f)).read().split():
                label = cv2.imread(
                    os.path.join(data_dir, f"{split}_segmentations", name + ".png"), cv2.IMREAD_UNCHANGED
                )
                out[name] = (split, to_dog[label], label_set)
    return out


def run(argv, capsys):
    return run_main(convert, [*argv, "--no-progress"], capsys)


def assert_nothing_written(out_dir) -> None:
    parent = os.path.dirname(os.path.abspath(out_dir))
    assert not os.path.exists(out_dir) or not os.listdir(out_dir)
    assert not [f for f in os.listdir(parent) if ".converting-" in f], os.listdir(parent)


def one_error_line(err: str, *words: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("python -m dataset.convert: error: "), err
    for word in words:
        assert word in lines[0], (word, lines[0])


# --------------------------------------------------------------------------------------------
# Encodings against the tools' libraries
# --------------------------------------------------------------------------------------------


def test_coco_rle_matches_pycocotools_both_ways():
    rng = np.random.default_rng(0)
    for k in range(30):
        h, w = rng.integers(1, 50, 2)
        mask = (rng.random((h, w)) > rng.random()).astype(np.uint8)
        theirs = mask_api.encode(np.asfortranarray(mask))
        ours = rle.encode_coco(mask)
        assert ours["counts"] == theirs["counts"].decode() and ours["size"] == list(theirs["size"])
        np.testing.assert_array_equal(
            rle.decode_coco({"size": [int(h), int(w)], "counts": theirs["counts"].decode()}), mask
        )
        np.testing.assert_array_equal(
            mask_api.decode({"size": [int(h), int(w)], "counts": ours["counts"].encode()}), mask
        )
        uncompressed = {"size": [int(h), int(w)], "counts": rle.mask_to_counts(mask)}
        assert mask_api.frPyObjects(uncompressed, int(h), int(w))["counts"] == theirs["counts"]


def labelstudio_masks() -> dict[str, np.ndarray]:
    yy, xx = np.mgrid[:24, :32]
    body = (xx >= 6) & (xx < 26) & (yy >= 8) & (yy < 18)
    head = ((xx - 24) ** 2 + (yy - 7) ** 2) <= 16
    return {"body": body, "head": head}


def test_brush_rle_reads_label_studios_own_encoding_and_writes_what_it_reads():
    tasks = json.load(open(os.path.join(HERE, "data", "labelstudio_brush.json")))
    results = {r["id"]: r for r in tasks[0]["annotations"][0]["result"]}
    for name, mask in labelstudio_masks().items():
        np.testing.assert_array_equal(rle.decode_brush(results[name]["value"]["rle"], 24, 32), mask)
        np.testing.assert_array_equal(rle.decode_brush(rle.encode_brush(mask), 24, 32), mask)
    big = np.zeros((300, 300), np.uint8)  # runs longer than 16 bits can count are split
    big[100:] = 1
    np.testing.assert_array_equal(rle.decode_brush(rle.encode_brush(big), 300, 300), big)
    with pytest.raises(rle.RleError, match="holds 3072 values"):
        rle.decode_brush(results["body"]["value"]["rle"], 20, 32)


def test_coco_polygons_fill_as_pycocotools_does_within_a_boundary_pixel():
    rng = np.random.default_rng(1)
    for k in range(20):
        centre = rng.uniform(20, 60, 2)
        angles = np.sort(rng.uniform(0, 2 * np.pi, 7))
        radii = rng.uniform(8, 20, 7)
        poly = np.stack([centre[0] + radii * np.cos(angles), centre[1] + radii * np.sin(angles)], 1)
        theirs = mask_api.decode(mask_api.frPyObjects([poly.ravel().tolist()], 80, 80))[:, :, 0]
        ours = np.zeros((80, 80), np.uint8)
        shapes.fill_polygon(ours, poly, coco.OFFSET)
        iou = (ours & theirs).sum() / (ours | theirs).sum()
        assert iou > 0.9, (k, iou)
        # Only the outline differs: no pixel two pixels away from the other's region.
        grown = cv2.dilate(theirs, np.ones((3, 3), np.uint8))
        assert not (ours & ~grown.astype(bool)).any()


def test_traced_polygons_fill_back_exactly_at_tolerance_0_and_closely_at_the_default():
    """Through the LabelMe reader (PIL, as LabelMe draws): the tracer's polygons give the map back."""
    for tolerance in (0.0, DEFAULT_TOLERANCE):
        inter, union = np.zeros(DOG.num_classes), np.zeros(DOG.num_classes)
        for _, _, label in samples(8, 192):
            painted = paint_labelme(labelme.shapes_of(label, DOG, tolerance), label.shape)
            if tolerance == 0:
                np.testing.assert_array_equal(painted, label)
            for c in range(DOG.num_classes):
                inter[c] += ((label == c) & (painted == c)).sum()
                union[c] += ((label == c) | (painted == c)).sum()
        assert (inter / union).min() >= 0.98, (tolerance, inter / union)


def test_a_small_background_keeps_exact_outlines():
    """A dog filling its picture, with a ragged border: each part's simplified outline fills its own
    region closely, but what they all lose lands in the background, which no outline draws. The
    picture then keeps its exact outlines, so the background comes back too."""
    rng = np.random.default_rng(3)
    label = np.full((60, 60), 2, np.uint8)  # body everywhere
    label[:, :30] = 1  # head on the left
    ragged = rng.random((60, 60)) < 0.5
    edge = np.zeros((60, 60), bool)
    edge[:3], edge[-3:], edge[:, :3], edge[:, -3:] = True, True, True, True
    label[edge & ragged] = 0  # a thin, ragged background round the border: 5% of the picture
    simplified = labelme._shapes(label, DOG, DEFAULT_TOLERANCE)
    assert labelme._min_class_iou(label, DOG, simplified) < shapes.MIN_IOU  # the case at hand
    painted = paint_labelme(labelme.shapes_of(label, DOG, DEFAULT_TOLERANCE), label.shape)
    np.testing.assert_array_equal(painted, label)


def paint_labelme(shapes_list: list[dict], size: tuple[int, int]) -> np.ndarray:
    """LabelMe shapes drawn by the converter's LabelMe reader, with the Dog set's ids."""
    from dataset.formats.common import PaintContext, Tally

    found = [(s["label"], s["shape_type"], np.asarray(s["points"], np.float64)) for s in shapes_list]
    context = PaintContext({n: i for i, n in enumerate(DOG.names)}, 0, Tally())
    return labelme._painter(found, None, "test", 10)(size[0], size[1], context)


def test_holes_are_drawn_back_with_what_fills_them():
    label = np.zeros((40, 40), np.uint8)
    label[5:35, 5:35] = 2  # a body with a background hole holding a head
    label[12:28, 12:28] = 0
    label[17:23, 17:23] = 1
    np.testing.assert_array_equal(paint_labelme(labelme.shapes_of(label, DOG, 0.0), label.shape), label)


# --------------------------------------------------------------------------------------------
# Names, pairs, splits
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "given, pairs",
    [
        (["bg", "left_arm", "right_arm"], [(1, 2)]),
        (["bg", "Left-leg", "Right-leg", "Left-shoe", "Right-shoe"], [(1, 2), (3, 4)]),
        (["bg", "l_hand", "r_hand", "foot_L", "foot_R"], [(1, 2), (3, 4)]),
        (["bg", "armLeft", "armRight", "leftEar", "rightEar"], [(1, 2), (3, 4)]),
        (["bg", "hand.R", "hand.L"], [(2, 1)]),
        (["bg", "left_arm", "tail", "lr", "r", "l"], []),
    ],
)
def test_pairs_are_proposed_from_the_names(given, pairs):
    assert names.propose_pairs(given) == pairs


def test_source_names_make_a_set_or_match_a_given_one():
    label_set, ids, lines = names.build_label_set(
        ["head", "_background_", "left_leg", "right_leg", "__ignore__"], {"head": (1, 2, 3)}, "src"
    )
    assert label_set.names == ("_background_", "head", "left_leg", "right_leg")
    assert label_set.flip_pairs == ((2, 3),) and label_set.palette[1] == (1, 2, 3)
    assert ids == {"head": 1, "_background_": 0, "left_leg": 2, "right_leg": 3, "__ignore__": 255}
    assert "left/right pair: left_leg <-> right_leg (from the names; --no-flip-pairs to drop)" in lines
    unpaired, _, lines = names.build_label_set(["left_leg", "right_leg"], None, "src", flip_pairs=False)
    assert unpaired.flip_pairs == () and "left/right pairs: none (--no-flip-pairs)" in lines
    _, ids, _ = names.build_label_set(["background", "HEAD", "tail"], None, "src", given=DOG)
    assert ids == {"background": 0, "HEAD": 1, "tail": 7}
    with pytest.raises(names.ConvertError, match=r"src: class 'wing' is not in the label set \(8 classes"):
        names.build_label_set(["head", "wing"], None, "src", given=DOG)


def test_hashed_splits_are_stable_when_pictures_are_added():
    fractions = convert.parse_split("train=0.7,val=0.2,test=0.1")
    first = {f"p{i}": convert.hashed_split(f"p{i}", fractions, 0) for i in range(300)}
    more = {f"p{i}": convert.hashed_split(f"p{i}", fractions, 0) for i in range(600)}
    assert all(more[k] == v for k, v in first.items())
    share = {s: sum(v == s for v in more.values()) / 600 for s in ("train", "val", "test")}
    assert abs(share["train"] - 0.7) < 0.06 and abs(share["val"] - 0.2) < 0.05
    assert [convert.hashed_split(f"p{i}", fractions, 1) for i in range(50)] != [
        first[f"p{i}"] for i in range(50)
    ]


# --------------------------------------------------------------------------------------------
# Each format, end to end through the command line
# --------------------------------------------------------------------------------------------


def write_labelme(folder, items, embed: bool = False):
    os.makedirs(folder, exist_ok=True)
    for name, image, label in items:
        picture = os.path.join(folder, name + ".jpg")
        cv2.imwrite(picture, image)
        doc = labelme.document(label, picture, os.path.join(folder, name + ".json"), DOG, 0.0)
        if embed:
            doc["imageData"] = __import__("base64").b64encode(open(picture, "rb").read()).decode()
            doc["imagePath"] = "elsewhere/" + name + ".jpg"
            os.remove(picture)
        json.dump(doc, open(os.path.join(folder, name + ".json"), "w"))


def test_labelme_folder_converts_to_its_ids_keeping_the_picture_bytes(tmp_path, capsys):
    items = samples()
    write_labelme(tmp_path / "lm", items)
    code, out, err = run(
        [str(tmp_path / "lm"), "--out", str(tmp_path / "data"), "--split", "train=0.5,val=0.5"], capsys
    )
    assert code == 0, err
    assert "format: labelme (6 .json files with shapes)" in out
    assert (
        "left/right pair: left_arm <-> right_arm" in out and "left/right pair: left_leg <-> right_leg" in out
    )
    assert "0 problems" in out and out.rstrip().splitlines()[-1].startswith("OK: 6 pictures converted")
    got = layout_labels(tmp_path / "data")
    assert set(got) == {name for name, _, _ in items}
    for name, _, label in items:
        split, converted, label_set = got[name]
        np.testing.assert_array_equal(converted, label)
        assert (
            open(tmp_path / "data" / f"{split}_images" / f"{name}.jpg", "rb").read()
            == open(tmp_path / "lm" / f"{name}.jpg", "rb").read()
        )
    assert (
        label_set.names[0] == "background"
        and label_set.pairs_text() == "left_arm<->right_arm, left_leg<->right_leg"
    )
    assert check.main([str(tmp_path / "data"), "--splits", "train", "val"]) == 0


def test_labelme_embedded_pictures_points_lines_and_clipping(tmp_path, capsys):
    items = samples(2)
    write_labelme(tmp_path / "lm", items, embed=True)
    doc = json.load(open(tmp_path / "lm" / "dog0.json"))
    h, w = items[0][2].shape
    doc["shapes"] += [
        {"label": "tail", "points": [[2, 2]], "shape_type": "point"},
        {"label": "tail", "points": [[-5, -5], [3, -5], [3, 3], [-5, 3]], "shape_type": "polygon"},
        {"label": "head", "points": [[w - 3, h - 3], [w + 4, h + 4]], "shape_type": "rectangle"},
        {"label": "body", "points": [[10, 1], [20, 1]], "shape_type": "line"},
    ]
    json.dump(doc, open(tmp_path / "lm" / "dog0.json", "w"))
    code, out, err = run([str(tmp_path / "lm"), "--from", "labelme", "--out", str(tmp_path / "data")], capsys)
    assert code == 0, err
    assert "note: 1 point shape(s) skipped" in out and "note: 2 x shape clipped to its picture" in out
    got = layout_labels(tmp_path / "data")
    label = got["dog0"][1]
    assert (label[:4, :4] == 7).all() and (label[-3:, -3:] == 1).all()
    assert (label[max(0, 1 - 5) : 1 + 5, 12:18] == 2).all()  # the line, 10 pixels wide
    np.testing.assert_array_equal(got["dog1"][1], items[1][2])


def test_coco_polygons_and_rle_from_pycocotools_with_per_split_files(tmp_path, capsys):
    items = samples(4)
    (tmp_path / "images").mkdir()
    categories = [{"id": 10 + i, "name": n} for i, n in enumerate(DOG.names[1:])]  # ids need not be 1..N
    for split, chunk in (("train", items[:3]), ("val", items[3:])):
        images, annotations = [], []
        for k, (name, image, label) in enumerate(chunk):
            cv2.imwrite(str(tmp_path / "images" / (name + ".png")), image)
            images.append(
                {"id": k, "file_name": name + ".png", "height": label.shape[0], "width": label.shape[1]}
            )
            for c in range(1, DOG.num_classes):
                if not (label == c).any():
                    continue
                encoded = mask_api.encode(np.asfortranarray((label == c).astype(np.uint8)))
                crowd = c % 2 == 1
                segmentation = (
                    {"size": list(label.shape), "counts": rle.mask_to_counts(label == c)}
                    if crowd
                    else {"size": encoded["size"], "counts": encoded["counts"].decode()}
                )
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": k,
                        "category_id": 9 + c,
                        "segmentation": segmentation,
                        "iscrowd": int(crowd),
                    }
                )
        (tmp_path / "annotations").mkdir(exist_ok=True)
        json.dump(
            {"images": images, "annotations": annotations, "categories": categories},
            open(tmp_path / "annotations" / f"instances_{split}.json", "w"),
        )
    code, out, err = run([str(tmp_path), "--out", str(tmp_path / "data")], capsys)
    assert code == 0, err
    assert out.startswith("format: coco") and "splits: train 3, val 1 (the source's splits)" in out
    got = layout_labels(tmp_path / "data")
    for name, _, label in items:
        np.testing.assert_array_equal(got[name][1], label)
    # PNG pictures stay PNG, byte for byte.
    assert (
        open(tmp_path / "data" / "val_images" / "dog3.png", "rb").read()
        == open(tmp_path / "images" / "dog3.png", "rb").read()
    )


def test_coco_overlaps_put_the_smaller_annotation_on_top_and_unlabelled_can_be_ignored(tmp_path, capsys):
    cv2.imwrite(str(tmp_path / "p.jpg"), np.full((20, 20, 3), 200, np.uint8))
    small = [[5, 5, 10, 5, 10, 10, 5, 10]]
    large = [[2, 2, 18, 2, 18, 18, 2, 18]]
    data = {
        "images": [{"id": 1, "file_name": "p.jpg", "height": 20, "width": 20}],
        "categories": [{"id": 1, "name": "head"}, {"id": 2, "name": "body"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "segmentation": small, "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 2, "segmentation": large, "iscrowd": 0},
        ],
    }
    json.dump(data, open(tmp_path / "c.json", "w"))
    code, _, err = run(
        [str(tmp_path / "c.json"), "--out", str(tmp_path / "d"), "--unlabelled", "ignore"], capsys
    )
    assert code == 0, err
    ((split, label, label_set),) = layout_labels(tmp_path / "d").values()
    assert label[7, 7] == 1 and label[3, 3] == 2 and label[0, 0] == IGNORE_LABEL


def test_voc_palette_masks_with_a_labelmap_and_lists(tmp_path, capsys):
    items = samples(4)
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (tmp_path / "voc" / folder).mkdir(parents=True)
    for name, image, label in items:
        cv2.imwrite(str(tmp_path / "voc" / "JPEGImages" / (name + ".jpg")), image)
        marked = label.copy()
        marked[0, :] = 255  # VOC's border: ignored
        mask = Image.fromarray(marked, mode="P")
        mask.putpalette([v for c in DOG.palette for v in c] + [0] * (768 - 3 * DOG.num_classes))
        mask.save(tmp_path / "voc" / "SegmentationClass" / (name + ".png"))
    lists = tmp_path / "voc" / "ImageSets" / "Segmentation"
    (lists / "train.txt").write_text("dog0\ndog1\ndog2\n")
    (lists / "val.txt").write_text("dog3\n")
    (lists / "trainval.txt").write_text("dog0\ndog1\ndog2\ndog3\n")
    (tmp_path / "voc" / "labelmap.txt").write_text(
        "# label:color_rgb:parts:actions\n"
        + "".join(f"{n}:{r},{g},{b}::\n" for n, (r, g, b) in zip(DOG.names, DOG.palette))
    )
    code, out, err = run([str(tmp_path / "voc"), "--out", str(tmp_path / "data")], capsys)
    assert code == 0, err
    assert "format: palette" in out and "splits: train 3, val 1 (the source's splits)" in out
    got = layout_labels(tmp_path / "data")
    for name, _, label in items:
        want = label.copy()
        want[0, :] = 255
        np.testing.assert_array_equal(got[name][1], want)
    assert got["dog0"][2].names == DOG.names and got["dog0"][2].flip_pairs == DOG.flip_pairs

    # The checker names the command that fixes palette labels.
    broken = tmp_path / "broken"
    shutil.copytree(tmp_path / "data", broken)
    shutil.copy(
        tmp_path / "voc" / "SegmentationClass" / "dog3.png", broken / "val_segmentations" / "dog3.png"
    )
    report = check.check_dataset(str(broken), ["val"])
    assert any("python -m dataset.convert" in p and "--from palette" in p for p in report.problems), (
        report.problems
    )


def write_cvat(folder, items, label_set=DOG):
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (folder / sub).mkdir(parents=True)
    for name, image, label in items:
        cv2.imwrite(str(folder / "JPEGImages" / (name + ".jpg")), image)
        masks.write_mask(str(folder / "SegmentationClass" / (name + ".png")), label, label_set)
    (folder / "ImageSets" / "Segmentation" / "default.txt").write_text("".join(n + "\n" for n, _, _ in items))
    (folder / "labelmap.txt").write_text(masks.labelmap_text(label_set))


def test_cvat_colour_masks_and_an_unknown_colour(tmp_path, capsys):
    items = samples(5)
    write_cvat(tmp_path / "cvat", items)
    code, out, err = run([str(tmp_path / "cvat"), "--out", str(tmp_path / "data")], capsys)
    assert code == 0, err
    assert "format: cvat-mask" in out and "by a hash of each id" in out
    got = layout_labels(tmp_path / "data")
    for name, _, label in items:
        np.testing.assert_array_equal(got[name][1], label)

    # CVAT's subsets as it names them become the layout's splits.
    lists = tmp_path / "cvat" / "ImageSets" / "Segmentation"
    (lists / "default.txt").unlink()
    (lists / "Train.txt").write_text("dog0\ndog1\ndog2\n")
    (lists / "Validation.txt").write_text("dog3\ndog4\n")
    code, out, err = run([str(tmp_path / "cvat"), "--out", str(tmp_path / "subsets")], capsys)
    assert code == 0, err
    assert "splits: train 3, val 2 (the source's splits)" in out
    assert sorted(f for f in os.listdir(tmp_path / "subsets") if f.endswith("_id.txt")) == [
        "train_id.txt",
        "val_id.txt",
    ]

    stray = cv2.imread(str(tmp_path / "cvat" / "SegmentationClass" / "dog2.png"))
    stray[:3, :4] = (7, 8, 9)  # BGR: RGB (9, 8, 7)
    cv2.imwrite(str(tmp_path / "cvat" / "SegmentationClass" / "dog2.png"), stray)
    code, out, err = run([str(tmp_path / "cvat"), "--out", str(tmp_path / "again")], capsys)
    assert code == 1
    lines = err.strip().splitlines()
    assert lines[0].startswith(
        "python -m dataset.convert: error: colour (9,8,7) is no class of the label map: "
        "12 pixels in 1 mask(s): "
    ) and lines[0].endswith("dog2.png")
    assert "nothing written" in lines[-1]
    assert_nothing_written(tmp_path / "again")


def test_colour_masks_without_a_labelmap_take_the_colours_of_labels(tmp_path, capsys):
    items = samples(3)
    write_cvat(tmp_path / "masks", items)
    (tmp_path / "masks" / "labelmap.txt").unlink()
    code, out, err = run(
        [str(tmp_path / "masks"), "--from", "cvat-mask", "--labels", "dog", "--out", str(tmp_path / "d")],
        capsys,
    )
    assert code == 0, err
    assert "label set: 8 classes from the preset 'dog' (--labels dog)" in out
    for name, _, label in items:
        np.testing.assert_array_equal(layout_labels(tmp_path / "d")[name][1], label)


def test_label_studio_brush_and_polygons_from_its_own_encoder(tmp_path, capsys):
    (tmp_path / "images").mkdir()
    shutil.copy(os.path.join(HERE, "data", "labelstudio_brush.json"), tmp_path / "export.json")
    cv2.imwrite(str(tmp_path / "images" / "cartoon.png"), np.full((24, 32, 3), 90, np.uint8))
    code, out, err = run(
        [str(tmp_path / "export.json"), "--out", str(tmp_path / "data"), "--labels", "dog"], capsys
    )
    assert code == 0, err
    assert (
        "format: labelstudio" in out and "note: 1 task(s) without an annotation or prediction skipped" in out
    )
    ((_, label, _),) = layout_labels(tmp_path / "data").values()
    want = np.zeros((24, 32), np.uint8)
    m = labelstudio_masks()
    want[m["body"]] = 2
    want[m["head"]] = 1
    tail = np.zeros_like(want)
    shapes.fill_polygon(tail, [[0, 12], [8, 12], [8, 18]], labelstudio.OFFSET)
    want[tail == 1] = 7
    np.testing.assert_array_equal(label, want)


# --------------------------------------------------------------------------------------------
# Bad input: one line, the exit code, nothing written
# --------------------------------------------------------------------------------------------


def bad_coco(tmp_path, change):
    cv2.imwrite(str(tmp_path / "p.jpg"), np.zeros((20, 30, 3), np.uint8))
    data = {
        "images": [{"id": 1, "file_name": "p.jpg", "height": 20, "width": 30}],
        "categories": [{"id": 1, "name": "head"}],
        "annotations": [
            {"id": 5, "image_id": 1, "category_id": 1, "segmentation": [[1, 1, 9, 1, 9, 9]], "iscrowd": 0}
        ],
    }
    change(data)
    json.dump(data, open(tmp_path / "c.json", "w"))
    return str(tmp_path / "c.json")


@pytest.mark.parametrize(
    "change, code, words",
    [
        (
            lambda d: d["annotations"][0].update(category_id=3),
            1,
            ["annotations[0]", "category_id 3 is not in 'categories'"],
        ),
        (
            lambda d: d["images"][0].update(file_name="gone.jpg"),
            1,
            ["images[0] (gone.jpg)", "picture not found"],
        ),
        (
            lambda d: d["images"][0].update(height=21),
            1,
            ["images[0] (p.jpg)", "the file says 21x30, the picture is 20x30"],
        ),
        (
            lambda d: d["annotations"][0].update(segmentation=[[100, 100, 120, 100, 120, 120]]),
            1,
            ["annotations[0]", "entirely outside the 30x20 picture"],
        ),
        (
            lambda d: d["annotations"][0].update(segmentation={"size": [20, 30], "counts": "x!"}),
            1,
            ["annotations[0]", "cannot occur in compressed counts"],
        ),
        (
            lambda d: d["annotations"][0].update(segmentation={"size": [20, 30], "counts": [5, 5]}),
            1,
            ["annotations[0]", "add up to 10 pixels"],
        ),
        (lambda d: d.update(images=[], annotations=[]), 1, ["no annotated pictures"]),
    ],
)
def test_bad_coco_input_is_one_line_and_nothing_written(tmp_path, capsys, change, code, words):
    src = bad_coco(tmp_path, change)
    got, out, err = run([src, "--out", str(tmp_path / "data")], capsys)
    assert got == code
    one_error_line(err, *words)
    assert_nothing_written(tmp_path / "data")


def test_bad_files_and_command_lines(tmp_path, capsys):
    out_dir = str(tmp_path / "data")
    (tmp_path / "bad.json").write_text('{"images": [}')
    got, _, err = run([str(tmp_path / "bad.json"), "--out", out_dir], capsys)
    assert got == 1
    one_error_line(err, "bad.json: not valid JSON", "line 1, column 13")

    (tmp_path / "lm").mkdir()
    (tmp_path / "lm" / "a.json").write_text(
        json.dumps({"shapes": [{"label": "head", "points": [[1, 1], [2, 2]]}], "imagePath": "a.jpg"})
    )
    cv2.imwrite(str(tmp_path / "lm" / "a.jpg"), np.zeros((8, 8, 3), np.uint8))
    got, _, err = run([str(tmp_path / "lm"), "--out", out_dir], capsys)
    assert got == 1
    one_error_line(err, "a.json: shapes[0]", "a polygon needs at least 3 points, it has 2")
    (tmp_path / "lm" / "a.json").write_text(json.dumps({"shapes": [], "imagePath": "missing.jpg"}))
    got, _, err = run([str(tmp_path / "lm"), "--out", out_dir], capsys)
    assert got == 1
    one_error_line(err, "a.json: picture 'missing.jpg' not found")
    good = {"label": "head", "points": [[1, 1], [5, 1], [5, 5]]}
    (tmp_path / "lm" / "a.json").write_text(json.dumps({"shapes": [good], "imagePath": "a.jpg"}))
    (tmp_path / "lm" / "a.jpg").write_bytes(b"not a picture")
    got, _, err = run([str(tmp_path / "lm"), "--out", out_dir], capsys)
    assert got == 1
    one_error_line(err, "a.jpg: the picture cannot be decoded")
    assert_nothing_written(out_dir)

    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    for argv, words in (
        ([str(tmp_path / "lm"), "--out", str(tmp_path / "full")], ["exists and is not an empty folder"]),
        ([str(tmp_path / "nowhere"), "--out", out_dir], ["nowhere: no such file or folder"]),
        (
            [str(tmp_path / "full"), "--out", out_dir],
            ["found no annotations of a known format", "give --from"],
        ),
        ([str(tmp_path / "lm"), "--out", out_dir, "--labels", "nope"], ["--labels nope: neither a preset"]),
    ):
        got, _, err = run(argv, capsys)
        assert got == 2, argv
        one_error_line(err, *words)
    got, _, err = run([str(tmp_path / "lm"), "--out", out_dir, "--split", "train=0.5,val=0.6"], capsys)
    assert got == 2 and "must add up to 1" in err
    assert_nothing_written(out_dir)


def test_mask_size_and_palette_without_names(tmp_path, capsys):
    items = samples(2)
    write_cvat(tmp_path / "cvat", items)
    small = cv2.imread(str(tmp_path / "cvat" / "SegmentationClass" / "dog1.png"))[:-2]
    cv2.imwrite(str(tmp_path / "cvat" / "SegmentationClass" / "dog1.png"), small)
    got, _, err = run([str(tmp_path / "cvat"), "--out", str(tmp_path / "data")], capsys)
    assert got == 1
    one_error_line(err, "dog1.png: the mask is", "its picture")
    os.remove(tmp_path / "cvat" / "labelmap.txt")
    got, _, err = run([str(tmp_path / "cvat"), "--from", "palette", "--out", str(tmp_path / "data")], capsys)
    assert got == 2
    one_error_line(err, "palette masks carry no class names", "--labels")
    assert_nothing_written(tmp_path / "data")


def test_a_full_disk_leaves_nothing(tmp_path, capsys):
    import resource
    import signal

    items = samples(3, 160)
    write_labelme(tmp_path / "lm", items)
    old = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(
        resource.RLIMIT_FSIZE, (2000, old[1])
    )  # larger writes fail with EFBIG, as on a full disk
    try:
        got, _, err = run([str(tmp_path / "lm"), "--out", str(tmp_path / "data"), "--workers", "1"], capsys)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old)
        signal.signal(signal.SIGXFSZ, handler)
    assert got == 1
    one_error_line(err, f"{tmp_path / 'data'}/", ": could not be written: File too large (EFBIG); nothing")
    assert_nothing_written(tmp_path / "data")


@pytest.mark.slow
def test_labelme_folder_to_training_and_evaluation_without_class_flags(tmp_path, capsys):
    """A LabelMe folder with no labels.json: convert, train, evaluate; the classes come from the shapes."""
    import evaluate
    import train
    from utils.checkpoint import read_weights

    write_labelme(tmp_path / "lm", samples(6, 64))
    data = str(tmp_path / "data")
    code, out, err = run([str(tmp_path / "lm"), "--out", data, "--split", "train=0.5,val=0.5"], capsys)
    assert code == 0, err
    snap = str(tmp_path / "snap")
    common = ["--input-size", "48,48", "--workers", "0"]
    code, out, err = run_call(
        lambda: train.run(
            [
                "--data-dir",
                data,
                "--batch-size",
                "2",
                "--epochs",
                "1",
                "--restore-from",
                "none",
                "--snapshot-dir",
                snap,
                "--val-datasets",
                "val",
                *common,
            ]
        ),
        capsys,
    )
    assert code == 0, err
    labels_json = os.path.join(data, "labels.json")
    assert f"label set: 8 classes from {labels_json}: background, body, head, left_arm, left_leg" in out
    metrics = tmp_path / "m.json"
    code, out, err = run_call(
        lambda: evaluate.main(
            evaluate.get_arguments(
                [
                    "--restore-from",
                    os.path.join(snap, "best.pth"),
                    "--data-dir",
                    data,
                    "--metrics-out",
                    str(metrics),
                    "--no-progress",
                    "--device",
                    "cpu",
                    "--workers",
                    "0",
                ]  # no --input-size: best.pth records the crop its run evaluated at
            )
        ),
        capsys,
    )
    assert code == 0, err
    assert "Settings: input 48x48" in out
    assert read_weights(os.path.join(snap, "best.pth")).input_size == (48, 48)
    scores = json.load(open(metrics))
    assert list(scores["per_class_iou"]) == list(load_label_file(labels_json).names), scores.keys()
