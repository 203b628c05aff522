"""Label sets the project was not designed for, and synthetic datasets that use them (test helpers).

``QUAD6`` is a 6-class set whose one left/right pair sits at ids 5 and 2: a loader that applied
the Dog set's pairs (3, 4) and (5, 6) would exchange its torso and head. ``remapped_dataset``
writes the synthetic dogs with their labels mapped into such a set, plus its ``labels.json``:
real left/right structure (a right-facing dog shows its left side) under other ids.
"""

from __future__ import annotations

import json
import os

import cv2
import numpy as np

# Background, tail, the right-side legs, torso, head, the left-side legs.
QUAD6 = {
    "names": ["background", "tail", "right_legs", "torso", "head", "left_legs"],
    "flip_pairs": [["left_legs", "right_legs"]],
    "palette": [[0, 0, 0], [250, 190, 30], [40, 200, 90], [30, 60, 220], [230, 20, 140], [20, 230, 230]],
}
# Dog id -> QUAD6 id: Background, head, body, left_arm, right_arm, left_leg, right_leg, tail.
DOG_TO_QUAD6 = [0, 4, 3, 5, 2, 5, 2, 1]

# Eight classes like the Dog set's, under other names, pairs and colours.
RENAMED8 = {
    "names": ["bg", "head", "torso", "front_left", "front_right", "hind_left", "hind_right", "tail"],
    "flip_pairs": [[3, 4], ["hind_left", "hind_right"]],
    "palette": [
        [10, 10, 10],
        [200, 30, 30],
        [30, 200, 30],
        [30, 30, 200],
        [200, 200, 30],
        [200, 30, 200],
        [30, 200, 200],
        [120, 60, 10],
    ],
}


def remapped_dataset(
    out: str,
    labels: dict,
    dog_to_ids: list[int],
    n_train: int,
    n_val: int,
    n_traintest: int,
    seed: int = 0,
    min_size: int = 48,
    max_size: int = 96,
) -> str:
    """The synthetic dog dataset with its label ids mapped through ``dog_to_ids`` (255 kept) and
    ``labels`` written as ``<out>/labels.json``; returns ``out``."""
    from dataset.layout import split_paths
    from dataset.synthetic import generate_dataset

    ids = generate_dataset(out, n_train, n_val, n_traintest, seed=seed, min_size=min_size, max_size=max_size)
    lut = np.arange(256, dtype=np.uint8)
    lut[: len(dog_to_ids)] = dog_to_ids
    for split, names in ids.items():
        paths = split_paths(out, split)
        for name in names:
            label = cv2.imread(paths.label(name), cv2.IMREAD_UNCHANGED)
            assert cv2.imwrite(paths.label(name), lut[label])
    with open(os.path.join(out, "labels.json"), "w", encoding="utf-8") as f:
        json.dump(labels, f)
    return out


# Eight classes (a DFPnet of the Dog set's size) whose pairs sit at other ids than the Dog set's
# (3, 4) and (5, 6): flip testing that used the Dog's pairs would average the wrong channels.
OTHER_PAIRS8 = {
    "names": ["bg", "left_ear", "left_paw", "c3", "c4", "c5", "right_paw", "right_ear"],
    "flip_pairs": [["left_ear", "right_ear"], ["left_paw", "right_paw"]],
}


def relabelled_onnx(src: str, dst: str, label_set) -> str:
    """A copy of the ONNX model ``src`` at ``dst`` whose recorded label set is ``label_set``."""
    import onnx

    from utils.labels import stored_form

    model = onnx.load(src)
    for prop in model.metadata_props:
        if prop.key == "label_set":
            prop.value = stored_form(label_set)
    onnx.save(model, dst)
    return dst


def flip_averaged(probs, probs_of_mirror, label_set):
    """What flip testing must give, computed here from two plain predictions: the average of the
    picture's probabilities and its mirror's, mirrored back with the set's left/right channels
    exchanged."""
    perm = list(range(label_set.num_classes))
    for a, b in label_set.flip_pairs:
        perm[a], perm[b] = b, a
    return (probs + probs_of_mirror[:, perm, :, ::-1]) / 2
