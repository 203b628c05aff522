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
import resource
import statistics
import sys
import time
from typing import Callable, Iterable, Sequence

import cv2
import numpy as np
import torch

# --------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------


def synchronize(device: torch.device | str) -> None:
    """Wait for queued work on ``device`` (a no-op on the CPU, where every op is synchronous)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device | str) -> float:
    """Seconds that ``fn()`` takes, device work included."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def alternate(
    runs: dict[str, Callable[[], object]],
    iters: int,
    warmup: int,
    device: torch.device | str,
    log: Callable[[str], None] | None = None,
    counters: dict[str, list[dict]] | None = None,
) -> dict[str, list[float]]:
    """Run each callable ``warmup`` times, then ``iters`` rounds of one call each, in turn.

    Returns the ``iters`` measured durations (seconds) per name. Warm-up calls are alternated
    too, and never measured: they absorb one-time costs (oneDNN primitive creation, autotuning,
    the optimizer's momentum buffers, allocator growth). If ``counters`` is given, it receives per
    name and measured call this process's minor page faults and user/system CPU seconds, which
    show how much of a CPU step the kernel spends handing memory to the allocator.
    """
    for i in range(warmup):
        for name, fn in runs.items():
            seconds = timed(fn, device)
            if log:
                log(f"warm-up {i + 1}/{warmup} {name}: {seconds:.3f} s")
    samples: dict[str, list[float]] = {name: [] for name in runs}
    for i in range(iters):
        for name, fn in runs.items():
            before = resource.getrusage(resource.RUSAGE_SELF)
            samples[name].append(timed(fn, device))
            after = resource.getrusage(resource.RUSAGE_SELF)
            if counters is not None:
                counters.setdefault(name, []).append(
                    {
                        "minor_faults": after.ru_minflt - before.ru_minflt,
                        "user_s": after.ru_utime - before.ru_utime,
                        "system_s": after.ru_stime - before.ru_stime,
                    }
                )
            if log:
                log(f"round {i + 1}/{iters} {name}: {samples[name][-1]:.3f} s")
    return samples


def summarize(samples: Sequence[float]) -> dict:
    """Median, quartiles, min, max and count of ``samples`` (quartiles by linear interpolation)."""
    values = sorted(float(v) for v in samples)
    if not values:
        raise ValueError("summarize() needs at least one sample")
    if len(values) >= 2:
        q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    else:
        q1 = q3 = values[0]
    return {
        "median": statistics.median(values),
        "q1": q1,
        "q3": q3,
        "min": values[0],
        "max": values[-1],
        "n": len(values),
    }


# --------------------------------------------------------------------------------------------
# Memory
# --------------------------------------------------------------------------------------------


def _proc_status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def rss_mb() -> float:
    """Resident set size of this process now, in MiB (0.0 where /proc is missing)."""
    kb = _proc_status_kb("VmRSS")
    return (kb or 0) / 1024.0


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (VmHWM, else getrusage's ru_maxrss)."""
    kb = _proc_status_kb("VmHWM")
    if kb is None:
        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        if sys.platform == "darwin":  # bytes there, KiB on Linux
            kb //= 1024
    return kb / 1024.0


# --------------------------------------------------------------------------------------------
# The machine
# --------------------------------------------------------------------------------------------


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (or ``platform.processor()``)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


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
