"""Benchmark the training data pipeline: DataLoader samples/s per worker count.

    python -m bench.data --workers 0,1,2 --batch-size 12 --input-size 384,384 --batches 10 \
        --json outputs/bench/data_cpu.json

``CartoonDataSet``'s train split with the default transform (read JPEG + PNG, the authors'
scale/rotation/flip augmentation, affine warp to the crop, normalisation), in a DataLoader
with random sampling, on a synthetic split written to a temporary folder unless ``--data-dir``
is given. Per worker count we report the time to the first batch (worker start-up included)
and the steady rate over the following ``--batches`` batches; worker counts alternate over
``--repeats`` passes and medians are reported. What a training step needs: batch / step time
(e.g. 12 images in several seconds on a CPU), so any worker count that beats that rate hides
loading entirely.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time

import torch
from torch.utils.data import DataLoader, RandomSampler

from bench.common import environment, finish, format_table, summarize
from dataset.datasets import CartoonDataSet, default_transform
from dataset.synthetic import generate_dataset
from utils import recipe
from utils.cli import DefaultsHelpFormatter, parse_size, positive_int


def parse_workers(text: str) -> list[int]:
    """``"0,1,2"`` -> [0, 1, 2] (argparse type)."""
    try:
        values = [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 0:
        raise argparse.ArgumentTypeError(f"expected worker counts >= 0 separated by commas, got {text!r}")
    return values


def get_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.data", description=__doc__.split("\n")[0], formatter_class=DefaultsHelpFormatter
    )
    parser.add_argument(
        "--workers",
        type=parse_workers,
        default=[0, 1, 2],
        metavar="N,N,...",
        help="DataLoader worker counts to compare (default 0,1,2)",
    )
    parser.add_argument("--batch-size", type=positive_int, default=1, help="samples per batch")
    parser.add_argument(
        "--input-size",
        type=parse_size,
        default=recipe.INPUT_SIZE,
        metavar="H,W",
        help="crop size, height,width (authors' run: 384,384)",
    )
    parser.add_argument(
        "--batches",
        type=positive_int,
        default=20,
        help="batches loaded after the first one, per worker count and pass (the steady rate "
        "skips the 2 * workers prefetched ones)",
    )
    parser.add_argument("--repeats", type=positive_int, default=2, help="passes over the worker counts")
    parser.add_argument(
        "--data-dir",
        default=None,
        help="dataset root with a train split (default: a synthetic one in a temporary folder)",
    )
    parser.add_argument(
        "--images",
        type=positive_int,
        default=24,
        help="images in the generated synthetic train split (sampled with replacement)",
    )
    parser.add_argument("--json", default=None, metavar="FILE", help="write the results as JSON")
    return parser.parse_args(argv)


def time_loader(dataset, workers: int, batch_size: int, batches: int) -> dict:
    """Seconds to the first batch (start-up), and samples/s in the steady state.

    Workers prefetch two batches each while the first one is awaited, so the first ``1 + 2 *
    workers`` batches arrive early; the steady rate is timed from the arrival of that batch
    (at most half-way) to the last. ``overall_samples_per_s`` counts every batch from ``iter()``.
    """
    total = batches + 1
    sampler = RandomSampler(
        dataset, replacement=True, num_samples=batch_size * total, generator=torch.Generator().manual_seed(0)
    )
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, drop_last=True)
    start = time.perf_counter()
    arrivals = []
    for _ in loader:
        arrivals.append(time.perf_counter())
    skip = min(2 * workers, total // 2)  # index of the batch the steady state is timed from
    steady_batches = total - 1 - skip
    steady = arrivals[-1] - arrivals[skip]
    return {
        "first_batch_s": arrivals[0] - start,
        "samples": steady_batches * batch_size,
        "steady_s": steady,
        "samples_per_s": steady_batches * batch_size / steady,
        "overall_samples_per_s": total * batch_size / (arrivals[-1] - start),
    }


def main(args: argparse.Namespace) -> dict:

    info = environment("cpu")
    runs: dict[int, list[dict]] = {w: [] for w in args.workers}
    with tempfile.TemporaryDirectory(prefix="dfpnet-bench-") as tmp:
        data_dir = args.data_dir
        if data_dir is None:
            data_dir = tmp
            generate_dataset(tmp, n_train=args.images, n_val=0, n_traintest=0, seed=0)
        dataset = CartoonDataSet(data_dir, "train", crop_size=args.input_size, transform=default_transform())
        for _ in range(args.repeats):
            for workers in args.workers:
                runs[workers].append(time_loader(dataset, workers, args.batch_size, args.batches))
                r = runs[workers][-1]
                print(
                    f"{workers} workers: first batch {r['first_batch_s']:.2f} s, "
                    f"{r['samples_per_s']:.1f} samples/s",
                    file=sys.stderr,
                )

    result: dict = {
        "workers": {},
        "batch_size": args.batch_size,
        "input_size": list(args.input_size),
        "batches": args.batches,
        "repeats": args.repeats,
        "data_dir": args.data_dir or f"synthetic train, {args.images} images (temporary)",
        "device": info["device"],
        "versions": {k: info[k] for k in ("python", "torch", "numpy", "opencv")},
        "command": info["command"],
        "environment": info,
    }
    rows = []
    for workers, passes in runs.items():
        rate = summarize([p["samples_per_s"] for p in passes])
        first = summarize([p["first_batch_s"] for p in passes])
        entry = {
            "samples_per_s": rate["median"],
            "samples_per_s_min": rate["min"],
            "overall_samples_per_s": summarize([p["overall_samples_per_s"] for p in passes])["median"],
            "samples_per_s_max": rate["max"],
            "ms_per_sample": 1000.0 / rate["median"],
            "first_batch_s": first["median"],
            "passes": passes,
        }
        result["workers"][str(workers)] = entry
        rows.append({"workers": workers, **entry, "range": f"{rate['min']:.1f}-{rate['max']:.1f}"})
    print(
        format_table(
            rows,
            [
                ("workers", "workers", "d"),
                ("samples_per_s", "samples/s (median)", ".1f"),
                ("range", "min-max", ""),
                ("ms_per_sample", "ms/sample", ".1f"),
                ("overall_samples_per_s", "samples/s incl. start-up", ".1f"),
                ("first_batch_s", "first batch s", ".2f"),
            ],
        )
    )
    return finish(
        result,
        info,
        args.json,
        f"data: {result['data_dir']}; batch {args.batch_size}, "
        f"crop {args.input_size[0]}x{args.input_size[1]}",
    )


if __name__ == "__main__":
    main(get_arguments())
