"""utils/cpu_defaults.py: the per-CPU-class training defaults and the reason printed with them."""

from __future__ import annotations

import getpass
import os
import subprocess
import sys
import tempfile

import pytest
import torch

from utils import cpu_defaults as cd
from utils.device import compile_model, inductor_cache_for

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_avx512_bf16_keeps_bf16_channels_last_in_place():
    d = cd.cpu_defaults(capability="AVX512", bf16=True)
    assert (d.amp, d.channels_last, d.inplace, d.cpu_class) == ("bf16", True, True, "avx512-bf16")
    assert "AVX-512" in d.reason and "native bf16" in d.reason


def test_avx2_picks_float32_and_the_measured_layout(monkeypatch):
    # Through torch's own report, as train.py will call it: no arguments.
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    monkeypatch.setattr(cd, "native_bf16", lambda: False)
    d = cd.cpu_defaults()
    assert d.cpu_class == "avx2"
    assert d.amp == "off"  # bf16 is emulated there: hundreds of times slower than float32
    amp, channels_last, inplace, _ = cd.RULES["avx2"]
    assert (d.channels_last, d.inplace) == (channels_last, inplace)
    assert d.channels_last is True and d.inplace is True  # measured: not slower than NCHW, less memory
    assert "AVX2" in d.reason and "float32" in d.reason
    assert d.describe().startswith(
        "CPU defaults (avx2): AVX2 only, bf16 emulated: float32, channels-last, in place"
    )


@pytest.mark.parametrize(
    "capability,bf16,expected",
    [
        ("AVX512", False, "avx512"),
        ("AVX2", True, "avx512-bf16"),  # oneDNN still runs bf16 natively: bf16 is worth it
        ("DEFAULT", False, "other"),
        ("ZVECTOR", False, "other"),
        ("avx2", False, "avx2"),  # ATEN_CPU_CAPABILITY's spelling
    ],
)
def test_class_from_capability(capability, bf16, expected):
    assert cd.cpu_class(capability, bf16) == expected
    assert cd.cpu_defaults(capability, bf16).cpu_class == expected


def test_no_native_bf16_never_defaults_to_bf16():
    for capability in ("AVX512", "AVX2", "DEFAULT"):
        assert cd.cpu_defaults(capability, bf16=False).amp == "off"


def test_every_rule_is_well_formed():
    for klass, (amp, channels_last, inplace, reason) in cd.RULES.items():
        assert amp in ("bf16", "off") and isinstance(channels_last, bool) and isinstance(inplace, bool)
        assert reason and "\n" not in reason, klass


@pytest.mark.parametrize(
    "capability,bf16,amp,channels_last",
    [("AVX512", True, "bf16", True), ("AVX2", False, "off", True), ("DEFAULT", False, "off", False)],
)
def test_train_and_evaluation_defaults_follow_the_cpu_class(
    monkeypatch, capability, bf16, amp, channels_last
):
    from training.config import setup
    from training.flags import get_args_parser
    from training.model import default_inplace_abn
    from utils.device import default_amp

    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    monkeypatch.setattr(cd, "native_bf16", lambda: bf16)
    cfg = setup(get_args_parser().parse_args(["--device", "cpu"]))
    assert (cfg.amp, cfg.channels_last) == (amp, channels_last)
    assert default_amp(cfg.device) == amp and default_inplace_abn(cfg.device) is True
    # What the user asks for wins over the class's choice.
    cfg = setup(get_args_parser().parse_args(["--device", "cpu", "--amp", "off", "--no-channels-last"]))
    assert (cfg.amp, cfg.channels_last) == ("off", False)


_FAULTS = """
import resource, sys
import numpy as np
from utils.cpu_defaults import keep_freed_memory
tuned = keep_freed_memory() if sys.argv[1] == "reuse" else False
faults = []
for _ in range(3):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = np.ones(64 << 20, np.uint8)  # 64 MiB: above glibc's largest mmap threshold
    del block
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(tuned, *faults)
"""


def _fresh_process(script: str, mode: str) -> list[str]:
    """The words ``script`` prints when run with ``mode`` in a fresh interpreter (glibc's allocator
    settings are per process and cannot be undone)."""
    done = subprocess.run(
        [sys.executable, "-c", script, mode],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, PYTHONPATH=ROOT),
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.split()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_keep_freed_memory_reuses_blocks_without_page_faults():
    """An activation-sized block freed and allocated again: glibc's defaults map it anew and fault
    every page in each time; with keep_freed_memory (train.py's --malloc reuse) the second and third
    allocations reuse the heap and fault nothing."""
    runs = {}
    for mode in ("reuse", "system"):
        tuned, *faults = _fresh_process(_FAULTS, mode)
        runs[mode] = (tuned, [int(f) for f in faults])
    assert runs["reuse"][0] == "True" and runs["system"][0] == "False"
    assert max(runs["reuse"][1][1:]) < 20, runs  # reused: no new pages
    assert min(runs["system"][1][1:]) > 100, runs  # mapped and faulted in again each time


_HEAPS = """
import ctypes, sys, tempfile, threading
from utils.cpu_defaults import keep_freed_memory
print(keep_freed_memory(one_heap=sys.argv[1] == "one"))
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.fopen.restype, libc.fopen.argtypes = ctypes.c_void_p, [ctypes.c_char_p, ctypes.c_char_p]
libc.malloc_info.argtypes, libc.fclose.argtypes = [ctypes.c_int, ctypes.c_void_p], [ctypes.c_void_p]
def work():  # a thread's first allocations, as an OpenMP worker's
    ctypes.memset(libc.malloc(1 << 20), 1, 1 << 20)
threads = [threading.Thread(target=work) for _ in range(3)]
[t.start() for t in threads]
[t.join() for t in threads]
with tempfile.NamedTemporaryFile(suffix=".xml") as out:
    f = libc.fopen(out.name.encode(), b"w")
    libc.malloc_info(0, f)
    libc.fclose(f)
    print(open(out.name).read().count("<heap nr="))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_the_memory_lean_flags_keep_one_heap_for_every_thread():
    """keep_freed_memory(one_heap=True), which the memory-lean flags ask for, makes threads that
    allocate share the main heap (glibc's malloc_info counts the heaps); without it each gets one."""
    heaps = {}
    for mode in ("one", "per-thread"):
        tuned, count = _fresh_process(_HEAPS, mode)
        assert tuned == "True"
        heaps[mode] = int(count)
    assert heaps["one"] == 1 and heaps["per-thread"] >= 2, heaps


def test_train_keeps_one_heap_only_with_a_memory_lean_flag(monkeypatch):
    from training import config
    from training.flags import get_args_parser

    asked = []
    monkeypatch.setattr(config, "keep_freed_memory", lambda one_heap=False: asked.append(one_heap) or True)
    for flags in ([], ["--update-in-backward"], ["--activation-checkpointing", "layer3"]):
        config.setup(get_args_parser().parse_args(["--device", "cpu", "--tune", "off", *flags]))
    assert asked == [False, True, True]


def test_train_resolves_the_malloc_choice():
    from training.config import setup
    from training.flags import get_args_parser

    assert (
        setup(get_args_parser().parse_args(["--device", "cpu", "--malloc", "system"])).malloc_reuse is False
    )
    cfg = setup(get_args_parser().parse_args(["--device", "cpu", "--tune", "off"]))
    assert cfg.malloc_reuse is sys.platform.startswith("linux")
    # With --tune auto (the default) the allocator waits for the tuner's choice (tests/test_tune.py).
    cfg = setup(get_args_parser().parse_args(["--device", "cpu"]))
    assert cfg.malloc == "reuse" and cfg.malloc_reuse is False


def test_compile_under_an_aten_ceiling_caches_apart_from_native(monkeypatch, tmp_path):
    # A native compile and one under ATEN_CPU_CAPABILITY=avx2 sharing inductor's cache served each
    # other garbage (bench/RESULTS.md s.12): the ceiling's compile gets a folder of its own.
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir  # (private: test only)

    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", None)  # gettempdir() reads TMPDIR again
    native = default_cache_dir()
    assert inductor_cache_for(None) == native == str(tmp_path / f"torchinductor_{getpass.getuser()}")
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "AVX2")
    for already in (None, native):  # unset, or set by importing torch's compiler
        if already is None:
            monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
        else:
            monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", already)
        compiled = compile_model(torch.nn.Linear(2, 2))
        assert isinstance(compiled, torch._dynamo.eval_frame.OptimizedModule)
        assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == inductor_cache_for("avx2") == f"{native}-aten-avx2"


def test_compile_leaves_a_chosen_cache_and_native_runs_alone(monkeypatch, tmp_path):
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    compile_model(torch.nn.Linear(2, 2))
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "mine")
    monkeypatch.delenv("ATEN_CPU_CAPABILITY")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", inductor_cache_for(None))
    compile_model(torch.nn.Linear(2, 2))
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == inductor_cache_for(None)  # as torch.compile
