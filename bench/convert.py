"""Benchmark dataset.convert: N pictures with polygons (LabelMe, and the same polygons as one COCO file)
converted into the Dog layout, the check included, against the target of one minute for 1,000
pictures of 512x512 on 2 cores (bench/RESULTS.md section 16).

    python -m bench.convert --pictures 1000 --size 512 --json outputs/bench/convert.json

The source is written first, outside the timing: synthetic dogs (``dataset.synthetic``) centred on
a ``size x size`` canvas, each label map traced into polygons (``inference/annotations.py``'s
LabelMe writer at its default tolerance) and, for COCO, the same polygons shifted by half a pixel.
Each conversion runs as the command does (``dataset.convert.main``, progress bar off), alternately,
``--repeats`` times; the table gives the median seconds and pictures/s.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

import cv2
import numpy as np

from bench.common import environment, finish, format_table, log
from dataset import convert
from dataset.formats import labelme
from dataset.synthetic import render_sample
from inference.annotations import DEFAULT_TOLERANCE
from utils.labels import DOG

TARGET_SECONDS_PER_1000 = 60.0


def write_sources(root: str, pictures: int, size: int) -> tuple[str, str]:
    """A LabelMe folder and a COCO file of the same pictures and polygons under ``root``."""
    lm, images = os.path.join(root, "labelme"), os.path.join(root, "images")
    os.makedirs(lm)
    os.makedirs(images)
    coco = {
        "images": [],
        "annotations": [],
        "categories": [{"id": i, "name": n} for i, n in enumerate(DOG.names)][1:],
    }
    for k in range(pictures):
        sample = render_sample(0, k, min_size=size * 3 // 4, max_size=size)
        image = np.full((size, size, 3), 235, np.uint8)
        label = np.zeros((size, size), np.uint8)
        h, w = sample.label.shape
        top, left = (size - h) // 2, (size - w) // 2
        image[top : top + h, left : left + w] = sample.image
        label[top : top + h, left : left + w] = sample.label
        name = f"pic{k:05d}"
        picture = os.path.join(images, name + ".jpg")
        cv2.imwrite(picture, image, [cv2.IMWRITE_JPEG_QUALITY, 90])
        doc = labelme.document(label, picture, os.path.join(lm, name + ".json"), DOG, DEFAULT_TOLERANCE)
        with open(os.path.join(lm, name + ".json"), "w") as f:
            json.dump(doc, f)
        coco["images"].append({"id": k, "file_name": name + ".jpg", "height": size, "width": size})
        for shape in doc["shapes"]:
            if shape["label"] == DOG.names[0]:  # a background hole: COCO has no background category
                continue
            coco["annotations"].append(
                {
                    "id": len(coco["annotations"]) + 1,
                    "image_id": k,
                    "category_id": DOG.names.index(shape["label"]),
                    "segmentation": [[v + 0.5 for point in shape["points"] for v in point]],
                    "iscrowd": 0,
                }
            )
    coco_path = os.path.join(root, "coco.json")
    with open(coco_path, "w") as f:
        json.dump(coco, f)
    return lm, coco_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.convert", description=__doc__.split("\n\n")[0])
    parser.add_argument("--pictures", type=int, default=1000)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    root = tempfile.mkdtemp(prefix="bench-convert-")
    try:
        log(f"writing {args.pictures} pictures of {args.size}x{args.size} with polygons ...")
        start = time.perf_counter()
        lm, coco_path = write_sources(root, args.pictures, args.size)
        log(f"  sources written in {time.perf_counter() - start:.1f} s")
        sources = {"labelme": [lm], "coco": [coco_path, "--images", os.path.join(root, "images")]}
        times: dict[str, list[float]] = {name: [] for name in sources}
        for r in range(args.repeats):
            for name, src in sources.items():
                out = os.path.join(root, f"out-{name}-{r}")
                tick = time.perf_counter()
                code = convert.main(convert.get_arguments([*src, "--out", out, "--no-progress"]))
                times[name].append(time.perf_counter() - tick)
                if code != 0:
                    raise SystemExit(f"bench.convert: the {name} conversion failed (exit {code})")
                shutil.rmtree(out)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    rows = []
    for name, seconds in times.items():
        median = float(np.median(seconds))
        per_1000 = median * 1000 / args.pictures
        rows.append(
            {
                "format": name,
                "pictures": args.pictures,
                "size": f"{args.size}x{args.size}",
                "seconds": median,
                "pictures_per_s": args.pictures / median,
                "seconds_per_1000": per_1000,
                "target_met": per_1000 < TARGET_SECONDS_PER_1000,
                "runs": seconds,
            }
        )
    print(
        format_table(
            rows,
            [
                ("format", "source", ""),
                ("pictures", "pictures", ""),
                ("size", "size", ""),
                ("seconds", "s (median)", ".1f"),
                ("pictures_per_s", "pictures/s", ".1f"),
                ("seconds_per_1000", "s per 1,000", ".1f"),
                ("target_met", "< 60 s per 1,000", ""),
            ],
        )
    )
    info = environment("cpu")
    finish(
        {"rows": rows, "environment": info},
        info,
        args.json,
        f"setup: dataset.convert, {os.cpu_count()} cores, {args.repeats} runs each, check included",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
