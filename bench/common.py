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
from utils.cpuinfo import allows_isa, cpu_flags, int8_dot_product, isa_ceiling, native_bf16

# --------------------------------------------------------------------------------------------
# The machine
# --------------------------------------------------------------------------------------------


def cpu_class_name(flags: frozenset[str] | None = None, ceiling: str | None = "env") -> str:
    """A short name of the class, for tables: e.g. ``avx512 + avx512_bf16 + amx``, ``avx2 + vnni``."""
    flags = cpu_flags() if flags is None else flags
    ceiling = isa_ceiling() if ceiling == "env" else ceiling
    if "avx512f" in flags and allows_isa(ceiling, "AVX512_CORE"):
        parts = ["avx512"]
        if int8_dot_product(flags, ceiling):
            parts.append("vnni")
        if native_bf16(flags, ceiling):
            parts.append("avx512_bf16")
        if "amx_bf16" in flags and allows_isa(ceiling, "AVX512_CORE_AMX"):
            parts.append("amx")
    elif "avx2" in flags:
        parts = ["avx2"] + (["vnni"] if int8_dot_product(flags, ceiling) else [])
    else:
        return "other"
    name = " + ".join(parts)
    return f"{name} (capped at {ceiling})" if ceiling else name


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


def copy_as_bf16(src: str, dst: str) -> None:
    """Write to ``dst`` what ``export.py --precision bf16`` would have written for the float32 model
    ``src``: the same graph, its metadata's precision bf16 (the benches mark their export so)."""
    import onnx  # lazy: only the deploy benches need it, and it is in the deploy set

    from inference.quantize import set_metadata  # lazy: with onnx

    model = onnx.load(src)
    set_metadata(model, {"precision": "bf16"})
    onnx.save(model, dst)
