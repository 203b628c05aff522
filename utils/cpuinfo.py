"""What this CPU runs fast without PyTorch: native bf16 and int8 dot products (VNNI), from
/proc/cpuinfo and oneDNN's ISA ceiling.

Torch-free (``parse_images.py --onnx`` decides a model's precision with it where torch is not
installed; ``utils.cpu_defaults`` asks torch itself for the training defaults). The ceiling
``ONEDNN_MAX_CPU_ISA`` (or ``DNNL_MAX_CPU_ISA``) is how a lower CPU class is emulated on a newer
CPU; OpenVINO's CPU plugin obeys it, so a bf16 request must too: under ``AVX2`` OpenVINO still
reports bf16 but cannot run it.
"""

from __future__ import annotations

import functools
import os

# oneDNN's ISA names, lowest first; a ceiling at or above an entry keeps what it brings.
_ISA_ORDER = (
    "SSE41",
    "AVX",
    "AVX2",
    "AVX2_VNNI",
    "AVX2_VNNI_2",
    "AVX512_CORE",
    "AVX512_CORE_VNNI",
    "AVX512_CORE_BF16",
    "AVX512_CORE_FP16",
    "AVX512_CORE_AMX",
    "AVX512_CORE_AMX_FP16",
    "AVX10_1_512",
    "AVX10_1_512_AMX",
    "AVX10_1_512_AMX_FP16",
    "AVX10_2_512",
    "AVX10_2_512_AMX_2",
)
ISA_ENV = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")


@functools.cache  # read once a process: every model opened and every bench row asks
def cpu_flags(path: str = "/proc/cpuinfo") -> frozenset[str]:
    """The first processor's flags (empty where /proc/cpuinfo cannot be read)."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def isa_ceiling(environ: dict[str, str] | None = None) -> str | None:
    """oneDNN's ISA ceiling from the environment (None: the CPU's own ISA)."""
    environ = os.environ if environ is None else environ
    for key in ISA_ENV:
        value = environ.get(key, "").strip().upper()
        if value and value != "ALL":
            return value
    return None


def allows_isa(ceiling: str | None, isa: str) -> bool:
    if ceiling is None or ceiling not in _ISA_ORDER:
        return True
    return _ISA_ORDER.index(ceiling) >= _ISA_ORDER.index(isa)


def native_bf16(flags: frozenset[str] | None = None, ceiling: str | None = "env") -> bool:
    """bf16 dot products in hardware (AVX512-BF16 or AMX-BF16) and allowed by the ceiling."""
    flags = cpu_flags() if flags is None else flags
    ceiling = isa_ceiling() if ceiling == "env" else ceiling
    return bool({"avx512_bf16", "amx_bf16"} & flags) and allows_isa(ceiling, "AVX512_CORE_BF16")


def int8_dot_product(flags: frozenset[str] | None = None, ceiling: str | None = "env") -> bool:
    """int8 dot products without saturation (AVX512-VNNI, AVX-VNNI or AMX-INT8) allowed by the ceiling.

    Without them, u8 x s8 products are summed pairwise in 16 bits (``vpmaddubsw``) and can saturate:
    the reason int8 weights are quantized to 7 bits (``reduce_range``) for such CPUs.
    """
    flags = cpu_flags() if flags is None else flags
    ceiling = isa_ceiling() if ceiling == "env" else ceiling
    if {"avx512_vnni", "amx_int8"} & flags and allows_isa(ceiling, "AVX512_CORE_VNNI"):
        return True
    return "avx_vnni" in flags and allows_isa(ceiling, "AVX2_VNNI")
