"""Training defaults chosen per CPU class: precision, memory format and InPlace-ABN mode.

One choice does not fit both classes of CPU our users train on (bench/RESULTS.md, "Training
step on the two CPU classes"):

* **AVX-512 with native bf16** (AVX512-BF16 / AMX): bf16 autocast, channels-last, InPlace-ABN in
  place: the fastest configuration measured there (section 1).
* **AVX2 only** (bf16 emulated, hundreds of times slower than float32): float32. Layout and the
  in-place trick were measured against each other there: once InPlace-ABN runs on ATen's fused
  batch norm (libs' pure backend) rather than the inplace-abn package's CPU kernels, in place +
  channels-last is as fast as the fastest float32 config (emulated AVX2) and uses less memory,
  and channels-last alone was faster than the baseline on a real AVX2 EPYC (section 11).

The choice is made from what torch reports about the CPU (`torch.backends.cpu.get_cpu_capability`
and oneDNN's native-bf16 test; `utils.device.default_amp` asks this module on the CPU), so it costs
nothing at start-up and gives the same answer on every run of one machine. Measuring instead is
``train.py --tune`` (training/tune.py): whole training steps at the run's own batch and crop, in
fresh processes, for runs long enough to pay for it; these defaults are what it starts from and
what short runs keep.

Torch-light: imports torch only, so train.py / evaluate.py can call it before building anything.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform
from dataclasses import dataclass

import torch

__all__ = [
    "CpuDefaults",
    "RULES",
    "cpu_capability",
    "cpu_class",
    "cpu_defaults",
    "native_bf16",
    "keep_freed_memory",
    "cpu_model",
]


@dataclass(frozen=True)
class CpuDefaults:
    """What train.py's ``--amp``, ``--channels-last`` and ``--inplace-abn auto`` resolve to on this CPU."""

    amp: str  # "bf16" or "off" (float32)
    channels_last: bool
    inplace: bool  # InPlace-ABN in place (libs.set_inplace)
    cpu_class: str  # "avx512-bf16", "avx512", "avx2" or "other"
    reason: str  # one line for the set-up log

    def describe(self) -> str:
        """The set-up line: the choice and why, e.g. ``"CPU defaults (avx2): AVX2 only, ..."``."""
        return f"CPU defaults ({self.cpu_class}): {self.reason}"


# cpu_class -> (amp, channels_last, inplace, why). The AVX2 row is what bench.train_step measured
# fastest in float32 under emulated AVX2 (bench/RESULTS.md section 11).
RULES: dict[str, tuple[str, bool, bool, str]] = {
    "avx512-bf16": (
        "bf16",
        True,
        True,
        "AVX-512 with native bf16: bf16, channels-last, in place (the fastest measured there)",
    ),
    "avx512": (
        "off",
        True,
        True,
        "AVX-512 without native bf16: bf16 emulated, so float32; channels-last + in place as on AVX2",
    ),
    "avx2": (
        "off",
        True,
        True,
        "AVX2 only, bf16 emulated: float32, channels-last, in place "
        "(measured fastest float32 config on this class)",
    ),
    "other": ("off", False, True, "no AVX2 (or not x86): float32, NCHW (the authors' layout), in place"),
}


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


def cpu_capability() -> str:
    """ATen's vector ISA for this process: "AVX512", "AVX2", "DEFAULT", "ZVECTOR", "SVE256", ...
    (it follows ATEN_CPU_CAPABILITY, which is how the AVX2 class is emulated on a newer CPU)."""
    try:
        return str(torch.backends.cpu.get_cpu_capability()).upper()
    except (AttributeError, RuntimeError):
        return "DEFAULT"


def native_bf16() -> bool:
    """oneDNN's own test for native bf16 (AVX512-BF16 or AMX; it follows ONEDNN_MAX_CPU_ISA)."""
    try:  # a private op, hence the guard
        return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def cpu_class(capability: str | None = None, bf16: bool | None = None) -> str:
    """This CPU's class, a key of `RULES`; arguments override what torch reports (for tests)."""
    capability = (cpu_capability() if capability is None else capability).upper()
    bf16 = native_bf16() if bf16 is None else bf16
    if capability.startswith("AVX512"):
        return "avx512-bf16" if bf16 else "avx512"
    if capability == "AVX2":
        # AVX2 kernels with native bf16 would mean ATEN_CPU_CAPABILITY=avx2 on an AVX-512-BF16 CPU
        # without ONEDNN_MAX_CPU_ISA: oneDNN still runs bf16 natively, so bf16 stays worthwhile.
        return "avx512-bf16" if bf16 else "avx2"
    return "avx512-bf16" if bf16 else "other"


def cpu_defaults(capability: str | None = None, bf16: bool | None = None) -> CpuDefaults:
    """The defaults for training on this CPU (arguments as for `cpu_class`)."""
    klass = cpu_class(capability, bf16)
    amp, channels_last, inplace, why = RULES[klass]
    return CpuDefaults(amp=amp, channels_last=channels_last, inplace=inplace, cpu_class=klass, reason=why)


# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8


def keep_freed_memory(one_heap: bool = False) -> bool:
    """Make glibc's malloc keep freed memory for reuse instead of returning it to the kernel.

    With its defaults every tensor above the mmap threshold (at most 32 MiB; smaller ones too
    while the threshold adapts) is mapped fresh and unmapped when freed, so each training step
    faults all its activations in again and the kernel zeroes those pages: 100 000-300 000 page
    faults per CPU step at batch 2, 384x384. No mmap and no trim turn that into reuse: faster steps
    on both CPU classes, with the same peak memory at small batches and more at large ones (freed
    blocks stay in the heap; bench/RESULTS.md sections 2 and 11 have the figures).
    The same as starting the process with ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=<huge>``,
    but taking effect from here on, however the process was started (run.sh, torchrun, python).

    ``one_heap`` (the memory-lean flags ask for it) also gives every thread the main heap
    (``MALLOC_ARENA_MAX=1``, for threads that have not allocated yet: call this first): a thread that
    allocates (OpenMP's, oneDNN's) otherwise gets a heap of its own, which keeps its own freed
    blocks, and where blocks land then depends on timing. With the memory-lean flags that lowered
    the peak and its spread between processes on both CPU classes; the default's own peak it raised
    on AVX2, so the default keeps a heap per thread (bench/RESULTS.md section 13).

    Returns False where there is no glibc (macOS, musl), which changes nothing.
    """

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # mallopt returns 1 on success; a trim threshold of -1 disables trimming (mallopt(3)).
    return all(
        mallopt(option, value)
        for option, value in (
            (_M_MMAP_MAX, 0),
            (_M_TRIM_THRESHOLD, -1),
            *([(_M_ARENA_MAX, 1)] if one_heap else []),
        )
    )
