"""utils/labels.py: the labels.json format, its validation, the presets, where a set comes from, and
every script refusing a bad set with one line before doing anything."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from tests.labelsets import QUAD6
from utils.labels import (
    DOG,
    PRESETS,
    LabelSet,
    LabelSetError,
    check_flags,
    check_same_classes,
    load_label_file,
    load_label_set,
    preset,
    resolve_label_set,
)

ISSUE_EXAMPLE = {
    "names": ["background", "body", "left_wing", "right_wing"],
    "flip_pairs": [["left_wing", "right_wing"]],
    "palette": [[0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25]],
}


def write_json(path, data) -> str:
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return str(path)


# ---------------------------------------------------------------------------------------------
# The format
# ---------------------------------------------------------------------------------------------


def test_the_documented_example_loads(tmp_path):
    labels = load_label_file(write_json(tmp_path / "labels.json", ISSUE_EXAMPLE))
    assert labels.names == ("background", "body", "left_wing", "right_wing") and labels.num_classes == 4
    assert labels.flip_pairs == ((2, 3),)
    assert labels.colours().tolist() == ISSUE_EXAMPLE["palette"]
    assert labels.flip_permutation() == [0, 1, 3, 2]
    assert labels.source == str(tmp_path / "labels.json")
    # The stored form round-trips, pairs by name.
    again = LabelSet.from_dict(labels.to_dict(), "again")
    assert again.to_dict() == labels.to_dict()
    assert again.to_dict()["flip_pairs"] == [["left_wing", "right_wing"]]


def test_pairs_by_id_and_by_name_are_the_same_and_the_palette_is_optional():
    by_id = LabelSet.from_dict({"names": ISSUE_EXAMPLE["names"], "flip_pairs": [[3, 2]]}, "ids")
    by_name = LabelSet.from_dict({"names": ISSUE_EXAMPLE["names"], "flip_pairs": [["left_wing", 3]]}, "names")
    assert by_id.flip_permutation() == by_name.flip_permutation() == [0, 1, 3, 2]
    # No palette: the authors' VOC bit pattern, the Dog set's own colours.
    assert (
        by_id.colours().tolist()
        == DOG.colours()[:4].tolist()
        == [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0]]
    )


@pytest.mark.parametrize("pairs", [None, []], ids=["absent", "empty"])
def test_no_pairs_means_a_mirror_swaps_nothing(pairs):
    data = {"names": ["bg", "a", "b"]} | ({} if pairs is None else {"flip_pairs": pairs})
    labels = LabelSet.from_dict(data, "x")
    assert labels.flip_permutation() == [0, 1, 2]
    np.testing.assert_array_equal(labels.flip_lut(), np.arange(256))


def test_flip_table_swaps_exactly_the_sets_pairs():
    quad = LabelSet.from_dict(QUAD6, "quad6")
    lut = quad.flip_lut()
    expected = np.arange(256)
    expected[[2, 5]] = [5, 2]
    np.testing.assert_array_equal(lut, expected)  # 255 and every other id kept
    assert DOG.flip_lut()[:8].tolist() == [0, 1, 2, 4, 3, 6, 5, 7]


def test_colour_table_draws_the_ignore_label_white_and_the_sets_colours():
    quad = LabelSet.from_dict(QUAD6, "quad6")
    picture = quad.colorize(np.array([[0, 5, 255]], np.uint8))
    assert picture.tolist() == [[[0, 0, 0], [20, 230, 230], [255, 255, 255]]]


# ---------------------------------------------------------------------------------------------
# Bad sets: one line naming the file and the entry
# ---------------------------------------------------------------------------------------------

NAMES = ["bg", "a", "b", "c"]
BAD = {
    "not JSON": ('{"names": ["bg", "a",]}', "not valid JSON"),
    "not an object": ('["bg", "a"]', "expected a JSON object"),
    "unknown entry": ({"names": NAMES, "flip_pair": []}, "'flip_pair': unknown entry"),
    "names missing": ({"flip_pairs": []}, "names: missing"),
    "names not a list": ({"names": "bg,a"}, "names: expected a list"),
    "names empty": ({"names": []}, "names: 0 class(es)"),
    "one class": ({"names": ["bg"]}, "at least 2"),
    "too many classes": ({"names": [f"c{i}" for i in range(256)]}, "at most 255"),
    "empty name": ({"names": ["bg", ""]}, "names[1]: expected a non-empty string"),
    "name not a string": ({"names": ["bg", 7]}, "names[1]: expected a non-empty string"),
    "duplicated name": ({"names": ["bg", "a", "a"]}, "names[2]: 'a' is also names[1]"),
    "pair id out of range": ({"names": NAMES, "flip_pairs": [[1, 4]]}, "flip_pairs[0]: id 4 is out of range"),
    "pair unknown name": ({"names": NAMES, "flip_pairs": [["a", "left"]]}, "unknown class name 'left'"),
    "id in two pairs": (
        {"names": NAMES, "flip_pairs": [[1, 2], ["c", "a"]]},
        "flip_pairs[1]: 'a' (id 1) is already in flip_pairs[0]",
    ),
    "paired with itself": ({"names": NAMES, "flip_pairs": [["a", 1]]}, "paired with itself"),
    "paired with the background": ({"names": NAMES, "flip_pairs": [[0, 1]]}, "is the background"),
    "not a pair": ({"names": NAMES, "flip_pairs": [[1, 2, 3]]}, "flip_pairs[0]: expected a pair"),
    "palette too short": ({"names": NAMES, "palette": [[0, 0, 0]] * 3}, "palette: expected 4 colours"),
    "palette value": ({"names": NAMES, "palette": [[0, 0, 0]] * 3 + [[0, 256, 0]]}, "palette[3]"),
    "palette negative": ({"names": NAMES, "palette": [[0, 0, -1]] * 4}, "palette[0]"),
    "palette not RGB": ({"names": NAMES, "palette": [[0, 0]] * 4}, "palette[0]: expected [R, G, B]"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_label_sets_are_refused_in_one_line_naming_the_file_and_entry(tmp_path, case):
    content, needle = BAD[case]
    path = write_json(tmp_path / "labels.json", content)
    with pytest.raises(LabelSetError) as err:
        load_label_file(path)
    message = str(err.value)
    assert "\n" not in message and message.startswith(path) and needle in message, message


def test_missing_or_unknown_label_set(tmp_path):
    with pytest.raises(LabelSetError, match="label-set file not found"):
        load_label_set(str(tmp_path / "nope.json"))
    with pytest.raises(LabelSetError, match="neither a preset .*dog, lip, cihp, atr, pascal-person-part"):
        load_label_set("lipp")


# ---------------------------------------------------------------------------------------------
# Presets
# ---------------------------------------------------------------------------------------------


def test_presets_have_the_published_sizes_and_mirror_every_left_right_pair():
    sizes = {name: preset(name).num_classes for name in PRESETS}
    assert sizes == {"dog": 8, "lip": 20, "cihp": 20, "atr": 18, "pascal-person-part": 7}
    for name in PRESETS:
        labels = preset(name)
        sided = {i for i, n in enumerate(labels.names) if n.lower().startswith(("left", "right"))}
        paired = {i for pair in labels.flip_pairs for i in pair}
        assert paired == sided, name  # every left/right class is paired, nothing else is
        for a, b in labels.flip_pairs:
            left, right = labels.names[a].lower(), labels.names[b].lower()
            assert left.startswith("left") and right.startswith("right"), (name, a, b)
            assert left[4:] == right[5:], (name, a, b)
    lip, cihp = preset("lip"), preset("cihp")
    assert [i for i in range(20) if lip.names[i] != cihp.names[i]] == [10]
    assert preset("pascal-person-part").flip_pairs == ()
    assert DOG.names == (
        "Background",
        "head",
        "body",
        "left_arm",
        "right_arm",
        "left_leg",
        "right_leg",
        "tail",
    )


# The published class lists, id by id, transcribed from the sources docs/labels.md cites: SCHP's
# simple_extractor.py (LIP, ATR, Pascal-Person-Part), the CIHP challenge's class table (CodaLab
# 23431, which spells id 10 "Tosor-skin"), and the authors' TensorBoard tags for the Dog set. Pairs:
# the loaders' swaps (CE2P / SCHP: left_idx = [14, 16, 18], right_idx = [15, 17, 19] for LIP and
# CIHP; ATR's Left-/Right- classes; the authors' (3, 4), (5, 6)).
PUBLISHED = {
    "dog": (
        "Background head body left_arm right_arm left_leg right_leg tail",
        [(3, 4), (5, 6)],
    ),
    "lip": (
        "Background Hat Hair Glove Sunglasses Upper-clothes Dress Coat Socks Pants Jumpsuits Scarf Skirt "
        "Face Left-arm Right-arm Left-leg Right-leg Left-shoe Right-shoe",
        [(14, 15), (16, 17), (18, 19)],
    ),
    "cihp": (
        "Background Hat Hair Glove Sunglasses Upper-clothes Dress Coat Socks Pants Torso-skin Scarf Skirt "
        "Face Left-arm Right-arm Left-leg Right-leg Left-shoe Right-shoe",
        [(14, 15), (16, 17), (18, 19)],
    ),
    "atr": (
        "Background Hat Hair Sunglasses Upper-clothes Skirt Pants Dress Belt Left-shoe Right-shoe Face "
        "Left-leg Right-leg Left-arm Right-arm Bag Scarf",
        [(9, 10), (12, 13), (14, 15)],
    ),
    "pascal-person-part": ("Background Head Torso Upper~Arms Lower~Arms Upper~Legs Lower~Legs", []),
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_each_preset_is_the_published_list_id_by_id(name):
    names, pairs = PUBLISHED[name]
    labels = preset(name)
    published = tuple(n.replace("~", " ") for n in names.split())  # "Upper~Arms": one name, a space
    assert labels.names == published
    assert sorted(labels.flip_pairs) == pairs


def test_the_presets_table_of_docs_labels_md_is_the_code():
    """docs/labels.md's table names each preset's classes and pairs; it must say what the code has."""
    rows = {}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "docs", "labels.md"), encoding="utf-8") as f:
        for line in f:
            cells = [c.strip() for c in line.split("|")[1:-1]]
            if len(cells) == 4 and cells[0].startswith("`") and cells[0].strip("`") in PRESETS:
                rows[cells[0].strip("`")] = cells
    assert sorted(rows) == sorted(PRESETS)
    for name, (_, classes, pairs, _) in rows.items():
        labels = preset(name)
        count, _, listed = classes.partition(": ")
        assert int(count) == labels.num_classes, name
        if not listed.startswith("as LIP"):
            assert tuple(listed.split(", ")) == labels.names, name
        want = [] if pairs == "none" else [tuple(int(i) for i in p.split("-")) for p in pairs.split(", ")]
        assert sorted(labels.flip_pairs) == want, name


# ---------------------------------------------------------------------------------------------
# Where the set comes from
# ---------------------------------------------------------------------------------------------


def test_resolution_order(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    stored = LabelSet.from_dict(QUAD6, "the checkpoint x.pth")
    assert resolve_label_set(None, str(data), None) is DOG
    assert resolve_label_set(None, str(data), stored) is stored
    write_json(data / "labels.json", ISSUE_EXAMPLE)
    assert resolve_label_set(None, str(data), stored).names == tuple(ISSUE_EXAMPLE["names"])
    assert resolve_label_set("atr", str(data), stored).num_classes == 18
    assert resolve_label_set(str(data), None, None).source == os.path.join(str(data), "labels.json")
    assert "(the default)" in DOG.describe() and "(--labels atr)" in resolve_label_set("atr").describe()


def test_num_classes_and_other_sets_are_checked_naming_both(tmp_path):
    path = write_json(tmp_path / "labels.json", ISSUE_EXAMPLE)
    labels = load_label_file(path)
    check_flags(labels, None)
    check_flags(labels, 4)
    with pytest.raises(LabelSetError) as err:
        check_flags(labels, 6)
    assert "--num-classes 6" in str(err.value) and "4 classes from " + path in str(err.value)
    with pytest.raises(LabelSetError) as err:
        check_same_classes(labels, DOG, None, "the checkpoint best.pth")
    message = str(err.value)
    assert "the checkpoint best.pth was trained with 8 classes (Background, head" in message
    assert "4 classes from " + path in message and "\n" not in message
    with pytest.raises(LabelSetError, match="predicts 8 classes"):
        check_same_classes(labels, None, 8, "the checkpoint authors.pth")
    recoloured = LabelSet.from_dict(dict(ISSUE_EXAMPLE, palette=[[1, 2, 3]] * 4), "recoloured")
    check_same_classes(labels, recoloured, 4, "x")  # colours (and pairs) may differ; the classes may not


# ---------------------------------------------------------------------------------------------
# Every script refuses a bad set at once: one line, exit 2, nothing written
# ---------------------------------------------------------------------------------------------


def _run(main, capsys) -> tuple[int, str]:
    try:
        code = main() or 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    return code, capsys.readouterr().err


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from dataset.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("labels") / "data"
    generate_dataset(str(root), 2, 2, 0, seed=0, min_size=32, max_size=48)
    return root


SCRIPTS = ["train.py", "evaluate.py", "parse_images.py", "export.py", "dataset.check", "dataset.browse"]
WITH_DATA = [s for s in SCRIPTS if s not in ("parse_images.py", "export.py")]  # (no data folder there)


@pytest.mark.parametrize(
    "script,where", [(s, "--labels") for s in SCRIPTS] + [(s, "data folder") for s in WITH_DATA]
)
def test_every_script_refuses_a_bad_set_before_any_work(script, where, tiny_data, tmp_path, capsys):
    import dataset.browse
    import dataset.check
    import evaluate
    import export
    import parse_images
    import train

    bad = write_json(tmp_path / "labels.json", {"names": ["bg", "a"], "flip_pairs": [["a", "b"]]})
    data = tiny_data
    if where == "data folder":
        data = tmp_path / "data"
        shutil.copytree(tiny_data, data)
        bad = write_json(data / "labels.json", {"names": ["bg", "a"], "flip_pairs": [["a", "b"]]})
    given = ["--labels", bad] if where == "--labels" else []
    out = tmp_path / "out"
    calls = {
        "train.py": lambda: train.run(["--data-dir", str(data), "--snapshot-dir", str(out), *given]),
        "evaluate.py": lambda: evaluate.main(
            evaluate.get_arguments(
                [
                    "--data-dir",
                    str(data),
                    "--restore-from",
                    str(tmp_path / "none.pth"),
                    "--metrics-out",
                    str(out / "m.json"),
                    *given,
                ]
            )
        ),
        "parse_images.py": lambda: parse_images.main(
            parse_images.get_arguments(
                [
                    "--restore-from",
                    str(tmp_path / "none.pth"),
                    "--out",
                    str(out),
                    str(data / "val_images"),
                    *given,
                ]
            )
        ),
        "export.py": lambda: export.main(
            export.get_arguments(
                ["--restore-from", str(tmp_path / "none.pth"), "--out", str(out / "m.onnx"), *given]
            )
        ),
        "dataset.check": lambda: dataset.check.main([str(data), *given]),
        "dataset.browse": lambda: dataset.browse.main([str(data), "--out", str(out), *given]),
    }
    code, err = _run(calls[script], capsys)
    assert code == 2, err
    assert err.strip().count("\n") == 0 and bad in err and "flip_pairs[0]: unknown class name 'b'" in err, err
    assert not out.exists()
