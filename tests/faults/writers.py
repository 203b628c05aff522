"""Every writer of the product against a folder that really refuses writes; run by tests/test_faults.py.

    python tests/faults/writers.py FOLDER KIND SOURCE

KIND says how FOLDER refuses: ``ENOSPC`` (a small tmpfs mounted there) and ``EFBIG``
(RLIMIT_FSIZE, SIGXFSZ ignored) refuse big writes only, so each writer first writes a small
version, which must succeed, then a big one; ``EROFS`` (a read-only bind mount) and ``EACCES``
(a folder without write permission, this process not root) refuse every write, and the test put
each writer's previous version there. SOURCE is a folder the test prepared (a LabelMe export and
a Dog-layout data folder). One JSON line per writer on stdout: the error it reported (or None),
whether its previous version is intact, and the files left in its folder.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import torch  # noqa: E402

SMALL_FIRST = {"ENOSPC", "EFBIG"}


def noise(size: int) -> np.ndarray:
    """A picture PNG cannot compress: about 3 * size * size bytes."""
    return np.random.default_rng(size).integers(0, 256, (size, size, 3), dtype=np.uint8)


def checkpoint(path: str, big: bool) -> None:
    from training.snapshots import Snapshots
    from utils.labels import DOG

    model = torch.nn.Linear(512, 512) if big else torch.nn.Linear(2, 2)
    Snapshots(os.path.dirname(path), DOG).save_best(model)  # best.pth


def metrics_json(path: str, big: bool) -> None:
    from utils.files import write_json_atomic

    write_json_atomic({"mean_iou": 1.0, "per_image": ["x" * 1000] * (200 if big else 0)}, path)


def picture(path: str, big: bool) -> None:
    from utils.pictures import write_image

    write_image(path, noise(256 if big else 4))


def figure(path: str, big: bool) -> None:
    from matplotlib.figure import Figure

    from inference.visualize import save_figure

    fig = Figure(figsize=(6, 6) if big else (1, 1))
    if big:
        fig.add_subplot().imshow(noise(512))
    save_figure(fig, path)


def onnx_model(path: str, big: bool) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from utils.files import atomic_file

    weight = np.random.default_rng(0).standard_normal((256 if big else 1,) * 2).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, weight.shape[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, weight.shape[0]])],
        [numpy_helper.from_array(weight, "w")],
    )
    with atomic_file(path) as tmp:  # as export.py writes its model
        onnx.save(helper.make_model(graph), tmp)


def tune_cache(path: str, big: bool) -> None:
    from training.tune import write_cache

    write_cache(path, {"cpu": "test"}, {"table": "x" * (100_000 if big else 10)})


def annotations(path: str, big: bool) -> None:
    from inference.annotations import AnnotationWriter
    from utils.labels import DOG

    writer = AnnotationWriter(os.path.dirname(path), ("labelstudio",), DOG)
    label = np.zeros((256, 256), np.uint8)
    label[np.random.default_rng(0).random((256, 256)) < (0.5 if big else 0)] = 1
    writer.add(os.path.join("pictures", "a.png"), "a", label)
    writer.close()


def curves(path: str, big: bool) -> list[str]:
    """TensorBoard: a full disk ends the curves in one warning line, the run goes on."""
    from training.curves import Curves

    warnings: list[str] = []
    writer = Curves(os.path.dirname(path), None, warnings.append)
    writer.add_scalar("loss", 1.0, 1)
    if big:
        for step in range(2, 30):
            writer.add_image("noise", noise(128), step, dataformats="HWC")
            writer.add_scalar("loss", 1.0, step)
    writer.close()
    return warnings


def cli(module: str, argv: list[str]) -> tuple[int, str]:
    """A script's main in this process: its exit status and the last line it wrote to stderr."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            mod = __import__(module, fromlist=["main"])
            code = mod.main(argv if module != "dataset.convert" else mod.get_arguments(argv))
        except SystemExit as exc:
            code = exc.code
    lines = err.getvalue().strip().splitlines()
    return int(code or 0), lines[-1] if lines else ""


# writer -> (function, the file it writes, relative to its own folder)
WRITERS = {
    "checkpoint": (checkpoint, "best.pth"),
    "metrics_json": (metrics_json, "metrics.json"),
    "picture": (picture, "a_label.png"),
    "figure": (figure, "confusion_matrix.png"),
    "onnx_model": (onnx_model, "model.onnx"),
    "tune_cache": (tune_cache, "tune.json"),
    "annotations": (annotations, "labelstudio.json"),
}


def listing(folder: str) -> list[str]:
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


def read(path: str) -> bytes | None:
    return open(path, "rb").read() if os.path.isfile(path) else None


def main() -> None:
    folder, kind, source = sys.argv[1:4]
    for name, (write, file) in WRITERS.items():
        path = os.path.join(folder, name, file)
        if kind in SMALL_FIRST:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            write(path, False)
        before = read(path)
        error = None
        try:
            write(path, True)
        except Exception as exc:  # noqa: BLE001 - the test asserts the type and message
            error = f"{type(exc).__name__}: {exc}"
        print(
            json.dumps(
                {
                    "writer": name,
                    "error": error,
                    "intact": read(path) == before and before is not None,
                    "files": listing(os.path.dirname(path)),
                }
            ),
            flush=True,
        )

    tb = os.path.join(folder, "tensorboard")
    if kind in SMALL_FIRST:
        warnings = curves(os.path.join(tb, "x"), True)
        print(json.dumps({"writer": "tensorboard", "warnings": warnings}), flush=True)

    data, labelme = os.path.join(source, "data"), os.path.join(source, "labelme")
    for name, module, argv in [
        ("browse", "dataset.browse", [data, "--split", "train", "--out", os.path.join(folder, "browse")]),
        (
            "convert",
            "dataset.convert",
            [labelme, "--from", "labelme", "--out", os.path.join(folder, "convert", "out"), "--no-progress"],
        ),
    ]:
        code, line = cli(module, argv)
        print(
            json.dumps(
                {"writer": name, "exit": code, "error": line, "files": listing(os.path.join(folder, name))}
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
