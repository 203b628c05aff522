"""A torch-free deployment folder: ``export.py --bundle DIR``.

What ``parse_images.py --onnx`` needs and nothing else: the script, the project's torch-free
modules it imports, the ONNX model and a ``requirements.txt``. tests/test_deploy.py copies such a
folder alone to another place, blocks ``import torch`` and parses pictures there.
"""

from __future__ import annotations

import os
import re
import shutil

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# parse_images.py --onnx and every module it imports on that path (none imports torch there).
DEPLOY_FILES: tuple[str, ...] = (
    "parse_images.py",
    *(
        f"utils/{m}.py"
        for m in ("__init__", "cli", "cpuinfo", "recipe", "labels", "transforms", "pictures", "files")
    ),
    *(f"inference/{m}.py" for m in ("__init__", "model", "pipeline", "onnx_infer", "annotations")),
    "dataset/__init__.py",
    *(f"dataset/formats/{m}.py" for m in ("__init__", "common", "names", "rle", "shapes", "masks", "coco")),
    *(f"dataset/formats/{m}.py" for m in ("labelme", "labelstudio")),
)
# The packages those files import, pinned as the repository's requirement files pin them.
DEPLOY_PACKAGES: tuple[str, ...] = ("numpy", "opencv-python-headless", "onnxruntime", "openvino", "tqdm")
REQUIREMENT_FILES: tuple[str, ...] = ("requirements.txt", "requirements-deploy.txt")


def requirements(root: str = ROOT) -> list[str]:
    """The lines of the repository's requirements.txt and requirements-deploy.txt that name
    DEPLOY_PACKAGES, in that order."""
    found = {}
    for name in REQUIREMENT_FILES:
        path = os.path.join(root, name)
        with open(path, encoding="utf-8") as f:
            for line in f:
                line = line.split("#")[0].strip()
                package = re.split(r"[<>=!~\[; ]", line, maxsplit=1)[0].lower()
                if package in DEPLOY_PACKAGES:
                    found[package] = line
    missing = [p for p in DEPLOY_PACKAGES if p not in found]
    if missing:
        raise ValueError(f"{' and '.join(REQUIREMENT_FILES)} in {root}: do not name {', '.join(missing)}")
    return [found[p] for p in DEPLOY_PACKAGES]


README = """# DFPnet, torch-free

    pip install -r requirements.txt
    python parse_images.py --onnx {model} --out parsed/ my_pictures/ more.png

A float32 model runs on onnxruntime, a bf16 or int8 one on OpenVINO (bf16 where the CPU has it
natively, float32 otherwise); `--runtime` chooses, and the line printed at the end names the runtime
and precision used. The label set, the training crop, the output and the precision the model was
exported with are recorded in it (docs/deploy.md of the repository).
"""


def write_bundle(folder: str, model: str) -> list[str]:
    """Fill ``folder`` (which exists, empty) with DEPLOY_FILES, the ONNX file ``model`` (moved in),
    requirements.txt and README.md. Returns the paths written, relative to ``folder``."""
    written = []
    for name in DEPLOY_FILES:
        os.makedirs(os.path.join(folder, os.path.dirname(name)), exist_ok=True)
        shutil.copyfile(os.path.join(ROOT, name), os.path.join(folder, name))
        written.append(name)
    model_name = os.path.basename(model)
    shutil.move(model, os.path.join(folder, model_name))
    with open(os.path.join(folder, "requirements.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(requirements()) + "\n")
    with open(os.path.join(folder, "README.md"), "w", encoding="utf-8") as f:
        f.write(README.format(model=model_name))
    return [*written, model_name, "requirements.txt", "README.md"]
