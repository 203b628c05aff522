"""Parse any images with a DFPnet checkpoint: no dataset layout, no ground truth.

    python parse_images.py --restore-from snapshots/DFPnet_epoch_495.pth --out outputs/parsed \
        my_dog.jpg another.webp folder_of_drawings/
    python parse_images.py --onnx dfpnet.onnx --out outputs/parsed my_dog.jpg   # no PyTorch needed

Each image (any size, any format OpenCV reads) is letterboxed into the crop exactly as the
loader does for val images, predicted, and warped back to its original size. Written per image:
``<stem>_label.png`` (class ids), ``<stem>_color.png`` (the label set's colours) and
``<stem>_overlay.jpg`` (colours over the image); once, ``legend.png`` (each colour's class). The
label set is the one the checkpoint or ONNX model records (the Dog set for the authors' files),
or ``--labels`` (the same classes; other colours or flip pairs). A file that cannot be read is
reported on one line and skipped; the exit status is then 1 once the others are done; 2 for bad
arguments, a bad label set, or an unusable checkpoint or model.

With ``--annotations coco,labelme,cvat-mask,labelstudio`` the predictions are also written as files
those tools import, to correct them there (``inference/annotations.py``, docs/annotations.md);
``--min-confidence P`` leaves the pixels whose winning probability is below P unlabelled (255).

With ``--onnx`` (a model written by export.py) the network runs through onnxruntime and this
script imports neither torch nor anything that does: a deployment can ship without PyTorch.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys

import cv2
from tqdm import tqdm

from inference.annotations import DEFAULT_TOLERANCE, AnnotationWriter, parse_formats
from inference.model import network_input_size, network_label_set, read_network, setup_device, setup_model
from inference.pipeline import (
    ImageFiles,
    InferenceStats,
    batches,
    list_images,
    run_loop,
    save_legend,
    save_prediction,
)
from utils import recipe
from utils.cli import (
    DefaultsHelpFormatter,
    add_inference_arguments,
    die,
    given_labels,
    non_negative_float,
    probability,
)

PROG = "parse_images.py"


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        formatter_class=DefaultsHelpFormatter,
        prog=PROG,
        description="Predict the part labels of arbitrary images and "
        "write label, colour and overlay pictures at their original size.",
    )
    parser.add_argument(
        "inputs",
        nargs="+",
        metavar="IMAGE_OR_FOLDER",
        help="image files, or folders whose image files (not sub-folders) are all parsed",
    )
    parser.add_argument(
        "--restore-from",
        default=recipe.EVAL_CHECKPOINT,
        help="checkpoint: the authors' .pth, our DFPnet_epoch_<e>.pth / best.pth, or a training-state file",
    )
    parser.add_argument(
        "--out", required=True, metavar="DIR", help="folder for the output pictures (created)"
    )
    parser.add_argument("--no-progress", action="store_true", help="do not show the progress bar")
    parser.add_argument(
        "--annotations",
        type=_formats,
        default=(),
        metavar="FORMAT[,FORMAT]",
        help="also write the predictions for an annotation tool to import: coco (RLE), labelme "
        "(polygons), cvat-mask, labelstudio (brush); docs/annotations.md",
    )
    parser.add_argument(
        "--polygon-tolerance",
        type=non_negative_float,
        default=DEFAULT_TOLERANCE,
        metavar="PX",
        help="labelme polygons: how far in pixels the traced outline may stray from the label map (0: exact)",
    )
    parser.add_argument(
        "--min-confidence",
        type=probability,
        default=None,
        metavar="P",
        help="leave pixels whose winning class probability is below P unlabelled (255 in the label "
        "PNG, in no annotation) for a person to decide (default: none, every pixel labelled)",
    )
    parser.add_argument(
        "--image-url",
        default="",
        metavar="PREFIX",
        help="labelstudio: each task's data.image is PREFIX + the picture's file name, e.g. "
        "/data/local-files/?d=pictures/ (default: the path as given here)",
    )
    add_inference_arguments(parser, onnx=True)
    return parser


def _formats(text: str) -> tuple[str, ...]:
    try:
        return parse_formats(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def get_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = get_args_parser()
    return parser.parse_args(argv)


fail = functools.partial(die, PROG)


def main(args: argparse.Namespace) -> int:
    device = setup_device(args, fail)
    paths = list_images(args.inputs)
    if not paths:
        fail(f"no image files in {', '.join(args.inputs)}")
    given = given_labels(args, fail)
    network = read_network(args, fail)
    network_input_size(args, network)
    label_set = network_label_set(args, network, given, fail)
    model = setup_model(args, network, label_set, device, fail)
    images = ImageFiles(paths, args.input_size)
    os.makedirs(args.out, exist_ok=True)
    failed: list[str] = []
    annotations = (
        AnnotationWriter(
            args.out, args.annotations, label_set, tolerance=args.polygon_tolerance, image_url=args.image_url
        )
        if args.annotations
        else None
    )

    def save(item: dict, label) -> None:
        path = str(item["path"])
        image = None if label is None else cv2.imread(path, cv2.IMREAD_COLOR)
        if label is None or image is None:  # unreadable (or changed since the loader read it)
            failed.append(path)
            tqdm.write(
                f"{PROG}: error: {path}: {item['error'] or 'could not read the image again'}; skipped",
                file=sys.stderr,
            )
            return
        save_prediction(args.out, str(item["name"]), label, image, label_set=label_set)
        if annotations is not None:
            annotations.add(path, str(item["name"]), label)

    stats = InferenceStats()
    try:
        if args.onnx:  # torch-free: onnxruntime already uses every core, so images are read in turn

            def predict(batch):
                return model.predict_labels(
                    batch,
                    flip=args.flip,
                    scales=args.scales,
                    label_set=label_set,
                    min_confidence=args.min_confidence,
                )

            run_loop(
                batches(images, args.batch_size),
                predict,
                save,
                total=len(images),
                progress=not args.no_progress,
                desc="parsing",
                stats=stats,
            )
        else:
            # torch only here: the --onnx path above runs where torch is not installed.
            from torch.utils.data import DataLoader

            from inference.predict import run_inference

            loader = DataLoader(
                images, batch_size=args.batch_size, num_workers=args.workers, pin_memory=device.type == "cuda"
            )
            run_inference(
                model,
                loader,
                device,
                save,
                label_set=label_set,
                amp=args.amp,
                flip=args.flip,
                scales=args.scales,
                channels_last=args.channels_last,
                progress=not args.no_progress,
                desc="parsing",
                stats=stats,
                min_confidence=args.min_confidence,
            )
        save_legend(args.out, label_set)
        written = annotations.close() if annotations is not None else []
    except OSError as exc:  # an output picture could not be written: no point going on
        fail(str(exc))
    done = stats.images - len(failed)
    runtime = model.describe() if args.onnx else f"device {device}, amp {args.amp}"
    print(
        f"Parsed {done} of {stats.images} images into {args.out} "
        f"at {args.input_size[0]}x{args.input_size[1]} "
        f"({stats.images_per_second:.2f} images/s, {runtime}); label set: {label_set.describe()}, "
        f"colours in {os.path.join(args.out, 'legend.png')}"
    )
    if written:
        print(f"Annotations for correction: {', '.join(os.path.join(args.out, w) for w in written)}")
    if failed:
        print(
            f"{PROG}: error: {len(failed)} file(s) could not be read: {', '.join(failed[:5])}"
            f"{' ...' if len(failed) > 5 else ''}",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(get_arguments()))
