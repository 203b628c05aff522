"""The device a script runs on and the precision it runs in: facts every script shares.

``resolve_device`` (--device), ``default_amp`` (--amp's default: bf16 where native),
``autocast`` (the network under --amp) and ``compile_model`` (--compile). Training and prediction use them.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import re
import tempfile

import torch

from utils.cli import AMP_MODES
from utils.cpu_defaults import cpu_defaults

_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def is_main_process() -> bool:
    """Rank 0 of a torchrun group, or the only process: the one that prints and writes."""
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    return not distributed or torch.distributed.get_rank() == 0


def default_amp(device: torch.device) -> str:
    """bf16 where it is native: GPUs with bf16 and CPUs with AVX512-BF16/AMX; float32 elsewhere."""
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "off"
    return cpu_defaults().amp


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA if available, else CPU; anything else is checked so a typo fails clearly."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ValueError(f"--device {name!r} is not a device (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name}: CUDA is not available in this PyTorch/on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) visible")
    return device


def autocast(device_type: str, amp: str = "off") -> contextlib.AbstractContextManager:
    """``torch.autocast`` for ``amp`` in {"bf16", "fp16"} on ``device_type``; a no-op for "off"."""
    if amp not in AMP_MODES:
        raise ValueError(f"amp must be one of {', '.join(AMP_MODES)}, got {amp!r}")
    if amp == "off":
        return contextlib.nullcontext()
    # No cache of the weights' casts: with it, every weight's 16-bit copy lives until the forward
    # ends, those of recomputed layers included (--activation-checkpointing), whose backward casts
    # them again anyway. Each weight is cast once per forward either way; outside training
    # (no grad) autocast caches nothing.
    return torch.autocast(device_type=device_type, dtype=_AMP_DTYPES[amp], cache_enabled=False)


def compile_model(module: torch.nn.Module) -> torch.nn.Module:
    """``torch.compile(module)``, its on-disk cache kept apart for each ``ATEN_CPU_CAPABILITY``.

    Inductor's cache does not tell a graph compiled with ATen held to AVX2 (how bench/RESULTS.md
    emulates the AVX2 class) from one compiled natively: served from the other's entries, compiled
    InPlace-ABN layers returned garbage (1e34, NaN) or aborted the process (torch 2.13, the Intel
    Xeon with AMX; bench/RESULTS.md s.12). So under that variable the cache is inductor's own
    folder with the capability appended, unless ``TORCHINDUCTOR_CACHE_DIR`` names another folder
    (importing torch's compiler sets it to inductor's own, so that one counts as unset)."""
    capability = os.environ.get("ATEN_CPU_CAPABILITY", "").strip().lower()
    if capability and os.environ.get("TORCHINDUCTOR_CACHE_DIR") in (None, inductor_cache_for(None)):
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = inductor_cache_for(capability)
    return torch.compile(module)


def inductor_cache_for(capability: str | None) -> str:
    """Inductor's own cache folder (torch's default) for None; for an ``ATEN_CPU_CAPABILITY``, that
    folder's name with ``-aten-<capability>`` appended."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = f"uid_{os.getuid()}"
    name = "torchinductor_" + re.sub(r'[\\/:*?"<>|]', "_", user)
    if capability:
        name += "-aten-" + re.sub(r"[^A-Za-z0-9_.-]", "_", capability)
    return os.path.abspath(os.path.join(tempfile.gettempdir(), name))
