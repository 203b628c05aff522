"""Helpers shared by the benchmarks: timing, statistics, memory, machine description, output.

Timing rules used by every bench: each measured call is synchronised with the device before
and after; configurations are run alternately (A B A B ...) so a slow minute of the machine
(other processes on a shared 2-core box) hits all of them alike; we report the median and the
inter-quartile range (plus min/max) instead of a mean that one hiccup would move.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys
from typing import Iterable, Sequence

import cv2
import numpy as np
import torch

# Timing and memory: the harness train.py's tuner uses too (training.measure), re-exported here.
from training.measure import alternate as alternate
from training.measure import peak_rss_mb as peak_rss_mb
from training.measure import rss_mb as rss_mb
from training.measure import summarize as summarize
from training.measure import synchronize as synchronize
from training.measure import timed as timed
from utils.cpu_defaults import cpu_model as cpu_model

# --------------------------------------------------------------------------------------------
# The machine
# --------------------------------------------------------------------------------------------


def load_average() -> list[float]:
    """1, 5 and 15-minute load averages (empty where the OS has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def device_name(device: torch.device | str) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu: {cpu_model()}, {torch.get_num_threads()} threads"


def environment(device: torch.device | str) -> dict:
    """What a reader needs to compare two result files: device, versions, threads, load, date, command."""
    info = {
        "device": device_name(device),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "opencv": cv2.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "load_average": load_average(),
        "command": " ".join([os.path.basename(sys.executable), "-m", _module_name()] + sys.argv[1:]),
        # Allocator settings change CPU step times a lot (see bench/RESULTS.md): record them.
        "allocator_env": {
            k: v
            for k, v in os.environ.items()
            if k.startswith(("MALLOC_", "GLIBC_TUNABLES", "LD_PRELOAD", "THP_MEM"))
        },
    }
    if torch.device(device).type == "cuda":
        info["cuda"] = torch.version.cuda
    try:
        from libs import BACKEND  # libs/ may fail to import (a broken inplace-abn build): reported, not fatal

        info["abn_backend"] = str(BACKEND)
    except Exception as exc:  # noqa: BLE001 - libs/ is optional for the data bench
        info["abn_backend"] = f"unavailable ({type(exc).__name__})"
    return info


def _module_name() -> str:
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name:
        return spec.name
    return os.path.relpath(sys.argv[0]) if sys.argv and sys.argv[0] else "python"


def matmul_tflops(
    device: torch.device | str, dtype: torch.dtype, n: int | None = None, reps: int = 5
) -> float:
    """Best measured rate (TFLOP/s) of an n x n @ n x n matmul in ``dtype``: the device's ceiling
    for dense math, against which a network's achieved FLOP/s is read."""
    device = torch.device(device)
    if n is None:
        n = 8192 if device.type == "cuda" else 2048
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    torch.mm(a, b)  # warm-up: library initialisation, kernel selection
    best = min(timed(lambda: torch.mm(a, b), device) for _ in range(reps))
    return 2.0 * n**3 / best / 1e12


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------


def log(message: str) -> None:
    """Progress on stderr, so that stdout holds only the table and the closing lines."""
    print(message, file=sys.stderr, flush=True)


def finish(result: dict, info: dict, json_path: str | None, setup: str) -> dict:
    """The closing lines every bench prints (its set-up, the environment), then the JSON if asked."""
    print(setup)
    print(format_environment(info))
    if json_path:
        write_json(result, json_path)
    return result


def write_json(obj: dict, path: str) -> None:
    """Write ``obj`` as indented JSON to ``path`` (folders created) and say where."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=False)
        f.write("\n")
    print(f"JSON in {path}")


def format_table(rows: Iterable[dict], columns: Sequence[tuple[str, str, str]]) -> str:
    """A Markdown table of ``rows``: ``columns`` = (key, header, format spec such as ".3f")."""
    header = "| " + " | ".join(h for _, h, _ in columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    lines = [header, rule]
    for row in rows:
        cells = []
        for key, _, spec in columns:
            value = row.get(key)
            cells.append("-" if value is None else (format(value, spec) if spec else str(value)))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_environment(info: dict) -> str:
    """Two lines naming the machine and the versions (printed under every table)."""
    return (
        f"device: {info['device']}; torch {info['torch']}, numpy {info['numpy']}, "
        f"opencv {info['opencv']}, python {info['python']}; ABN backend: {info.get('abn_backend')}\n"
        f"date: {info['date']}; load average: {info['load_average']}; command: {info['command']}"
    )
