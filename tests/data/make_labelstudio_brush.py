"""Writes tests/data/labelstudio_brush.json with Label Studio's own encoder (label-studio-converter's
``brush.mask2rle``), so that tests/test_convert.py reads the tool's real bytes, not our reading of
them. Not run by the suite (the package pulls pandas and nltk: 221 MB); to regenerate:

    python -m venv /tmp/ls && /tmp/ls/bin/pip install label-studio-converter==0.0.59
    /tmp/ls/bin/python tests/data/make_labelstudio_brush.py

The masks are ``labelstudio_masks()`` of tests/test_convert.py, repeated here (no project import).
"""

import json
import os

import numpy as np
from label_studio_converter import brush

HEIGHT, WIDTH = 24, 32


def masks() -> dict[str, np.ndarray]:
    yy, xx = np.mgrid[:HEIGHT, :WIDTH]
    body = ((xx >= 6) & (xx < 26) & (yy >= 8) & (yy < 18)).astype(np.uint8) * 255
    head = (((xx - 24) ** 2 + (yy - 7) ** 2) <= 16).astype(np.uint8) * 255
    return {"body": body, "head": head}


tasks = [
    {
        "id": 7,
        "data": {"image": "/data/upload/1/0a1b2c3d-cartoon.png"},
        "annotations": [
            {
                "id": 1,
                "was_cancelled": False,
                "result": [
                    {
                        "id": name,
                        "type": "brushlabels",
                        "from_name": "tag",
                        "to_name": "image",
                        "original_width": WIDTH,
                        "original_height": HEIGHT,
                        "image_rotation": 0,
                        "value": {
                            "format": "rle",
                            "rle": [int(b) for b in brush.mask2rle(mask)],
                            "brushlabels": [name],
                        },
                    }
                    for name, mask in masks().items()
                ]
                + [
                    {
                        "id": "tail",
                        "type": "polygonlabels",
                        "from_name": "poly",
                        "to_name": "image",
                        "original_width": WIDTH,
                        "original_height": HEIGHT,
                        "value": {
                            "points": [[0.0, 50.0], [25.0, 50.0], [25.0, 75.0]],
                            "polygonlabels": ["tail"],
                        },
                    }
                ],
            }
        ],
    },
    {"id": 8, "data": {"image": "/data/upload/1/deadbeef-unlabelled.png"}, "annotations": []},
]
path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "labelstudio_brush.json")
with open(path, "w", encoding="utf-8") as f:
    json.dump(tasks, f)
print(path)
