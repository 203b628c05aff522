"""Pick the training configuration by measuring it on the machine at hand (``train.py --tune``).

The per-CPU-class defaults (``utils.cpu_defaults``) come from a few CPUs, and within a class the
fastest float32 configuration differs by CPU model: enough to make the default slower
than the authors' step on one machine and faster on the next (bench/RESULTS.md section 14). As
cuDNN's benchmark mode does for kernels, the tuner times each candidate configuration at the run's
own batch size and crop, on the real network and a real batch, and keeps the fastest whose peak
memory stays within the authors' configuration's (measured the same way) or ``--max-memory``.

Each candidate runs in a fresh process (``training.measure.measure_fresh``): only there does a CPU
configuration get its own peak memory and its own allocator setting. Timings are medians of
``recipe.TUNE_STEPS`` whole training steps (forward, loss, backward, SGD update) after
``recipe.TUNE_WARMUP`` unmeasured ones. The result is cached per machine, thread count, torch
version, batch and crop, so a resumed or repeated run does not measure again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import default_collate

from libs import BACKEND
from training import distributed as du
from training.config import TrainConfig, memory_lean
from training.data import TrainData
from training.measure import AUTHORS, StepConfig, measure_fresh, summarize
from utils import recipe
from utils.checkpoint import save_atomic
from utils.cpu_defaults import (
    cpu_class,
    cpu_defaults,
    cpu_model,
    keep_freed_memory,
    native_bf16,
)
from utils.device import default_amp
from utils.files import write_error, write_json_atomic

# Bumped whenever the candidates or the measurement change: older cache entries are then ignored.
TUNER_VERSION = 1


@dataclass(frozen=True)
class Candidate:
    """One training configuration the tuner can choose: what --amp, --channels-last, --inplace-abn and
    --malloc would otherwise set, plus InPlace-ABN's backend (``None``: libs' own choice)."""

    amp: str
    channels_last: bool
    inplace: bool
    backend: str | None = None
    malloc_reuse: bool = True

    def step_config(self) -> StepConfig:
        return StepConfig(
            norm="inplace",
            amp=self.amp,
            channels_last=self.channels_last,
            inplace=self.inplace,
            backend=self.backend,
            malloc_reuse=self.malloc_reuse,
        )

    @property
    def label(self) -> str:
        return (
            f"{'bf16' if self.amp == 'bf16' else 'fp32'}, "
            f"{'channels-last' if self.channels_last else 'NCHW'}, "
            f"{'in place' if self.inplace else 'plain autograd'}"
            f"{' (inplace-abn kernels)' if self.backend == 'compiled' else ''}"
            f"{', malloc reuse' if self.malloc_reuse else ', system malloc'}"
        )


def candidates(device: torch.device, given: dict[str, object] | None = None) -> list[Candidate]:
    """The configurations worth timing on ``device``, restricted to the flags the user gave.

    ``given`` maps ``amp``, ``channels_last``, ``inplace`` and ``malloc_reuse`` to a value the command
    line fixed (absent or None: the tuner chooses). Precision: bf16 only where the device runs it
    natively (elsewhere it is emulated, several times slower); float32 always. On the CPU InPlace-ABN
    runs on ATen's batch norm (libs' own choice there); the inplace-abn package's CPU kernels are a
    candidate too where they can run: float32, NCHW, the package installed.
    """
    given = {k: v for k, v in (given or {}).items() if v is not None}
    cpu = device.type == "cpu"
    amps = ["off", "bf16"] if cpu and native_bf16() else (["off"] if cpu else [default_amp(device)])
    found = []
    for amp in amps:
        for channels_last in (False, True):
            for inplace, backend in ((True, None), (True, "compiled"), (False, None)):
                # The package's CPU kernels run float32 only, and on channels-last tensors a loop
                # strided by the channel count (libs/abn.py): NCHW float32 is their one chance.
                if backend and not (cpu and amp == "off" and not channels_last and BACKEND == "compiled"):
                    continue
                for reuse in (True, False) if cpu else (False,):
                    found.append(Candidate(amp, channels_last, inplace, backend, reuse))
    keep = [c for c in found if all(getattr(c, key) == value for key, value in given.items())]
    if not keep:
        raise ValueError(f"no configuration to tune matches {given}")
    return keep


def class_default(device: torch.device) -> Candidate:
    """What train.py runs without tuning: the CPU class's defaults (utils.cpu_defaults), or CUDA's."""
    if device.type == "cpu":
        chosen = cpu_defaults()
        return Candidate(chosen.amp, chosen.channels_last, chosen.inplace, None, True)
    return Candidate(default_amp(device), True, False, None, False)


def cache_key(device: torch.device, batch_size: int, input_size: tuple[int, int], num_classes: int) -> dict:
    """What a cached choice depends on: the machine, its thread count, torch, the batch and crop."""
    return {
        "tuner": TUNER_VERSION,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model(),
        "cpu_class": cpu_class() if device.type == "cpu" else "cuda",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "abn_backend": BACKEND,
        "batch_size": batch_size,
        "input_size": list(input_size),
        "num_classes": num_classes,
    }


def _key_id(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def cache_dir() -> str:
    """``$DFPNET_CACHE_DIR``, else ``$XDG_CACHE_HOME/dfpnet``, else ``~/.cache/dfpnet``."""
    if os.environ.get("DFPNET_CACHE_DIR"):
        return os.environ["DFPNET_CACHE_DIR"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "dfpnet")


def read_cache(path: str, key: dict) -> dict | None:
    """The cached result for ``key`` in the JSON file ``path`` (None: absent, unreadable or stale)."""
    try:
        with open(path, encoding="utf-8") as f:
            entries = json.load(f)
    except (OSError, ValueError):
        return None
    entry = entries.get(_key_id(key)) if isinstance(entries, dict) else None
    if not isinstance(entry, dict) or entry.get("key") != key:
        return None
    return entry


def write_cache(path: str, key: dict, result: dict) -> None:
    """Add ``result`` under ``key`` to the JSON file ``path`` (written atomically; other keys kept)."""
    try:
        with open(path, encoding="utf-8") as f:
            entries = json.load(f)
        if not isinstance(entries, dict):
            entries = {}
    except (OSError, ValueError):
        entries = {}
    entries[_key_id(key)] = {**result, "key": key}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_json_atomic(entries, path)


@dataclass
class Measured:
    """One measured configuration: median step seconds and peak memory (MiB), or why it failed."""

    label: str
    step_s: float | None
    peak_mb: float | None
    samples: list[float] = dataclasses.field(default_factory=list)
    error: str | None = None


Measure = Callable[[StepConfig], dict]


def measure_all(
    candidates_: list[Candidate], measure: Measure, log: Callable[[str], None]
) -> dict[str, Measured]:
    """The authors' configuration, then each candidate, each measured by ``measure`` (a fresh process)."""
    results: dict[str, Measured] = {}
    for name, config in [("authors", AUTHORS), *((c.label, c.step_config()) for c in candidates_)]:
        try:
            run = measure(config)
        except RuntimeError as exc:  # out of memory, say: that candidate is out, the others count
            results[name] = Measured(name, None, None, error=str(exc))
            log(f"tune: {name}: failed ({exc})")
            continue
        step = summarize(run["step_samples"])["median"]
        results[name] = Measured(name, step, run["peak_mem_mb"], list(run["step_samples"]))
        log(f"tune: {name}: {step:.3f} s/step, peak {run['peak_mem_mb']:.0f} MiB")
    return results


def choose(
    candidates_: list[Candidate], results: dict[str, Measured], max_memory_mb: float | None
) -> Candidate | None:
    """The fastest candidate whose peak memory is at most ``max_memory_mb`` (None: no bound).

    Step times within ``recipe.TUNE_TIE`` of the fastest are a tie (repeated medians of one
    configuration on a shared machine spread that much), and a tie goes to the smaller peak memory.
    """
    fitting = [
        c
        for c in candidates_
        if results[c.label].step_s is not None
        and (max_memory_mb is None or results[c.label].peak_mb <= max_memory_mb)
    ]
    if not fitting:
        return None
    fastest = min(results[c.label].step_s for c in fitting)
    tied = [c for c in fitting if results[c.label].step_s <= fastest * (1 + recipe.TUNE_TIE)]
    return min(tied, key=lambda c: (results[c.label].peak_mb, results[c.label].step_s))


def memory_bound(
    device: torch.device, results: dict[str, Measured], max_memory_mb: float | None
) -> float | None:
    """--max-memory, else on CUDA what the card holds, else the authors' configuration's peak."""
    if max_memory_mb is not None:
        return max_memory_mb
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory / 2**20
    authors = results.get("authors")
    return authors.peak_mb if authors is not None and authors.peak_mb is not None else None


def table(
    candidates_: list[Candidate], results: dict[str, Measured], chosen: Candidate | None, bound: float | None
) -> str:
    """The measured configurations as a Markdown table, the authors' first, the choice marked."""
    authors = results.get("authors")
    lines = ["| configuration | step s | vs authors | peak MiB | vs authors | |", "|---|---|---|---|---|---|"]
    for name, measured in results.items():
        if measured.step_s is None:
            lines.append(f"| {name} | failed | | | | {measured.error} |")
            continue
        time_ratio = mem_ratio = ""
        if authors is not None and authors.step_s:
            time_ratio = f"{measured.step_s / authors.step_s:.2f}x"
            mem_ratio = f"{measured.peak_mb / authors.peak_mb:.2f}x" if authors.peak_mb else ""
        mark = ""
        if chosen is not None and name == chosen.label:
            mark = "chosen"
        elif name != "authors" and bound is not None and measured.peak_mb > bound:
            mark = "over the memory bound"
        lines.append(
            f"| {name} | {measured.step_s:.3f} | {time_ratio} | "
            f"{measured.peak_mb:.0f} | {mem_ratio} | {mark} |"
        )
    return "\n".join(lines)


@dataclass
class TuneResult:
    """What the tuner decided and why: the candidate, where it came from, and the table to log."""

    candidate: Candidate
    source: str  # "measured", "cached" or "defaults"
    reason: str  # one line for the log
    table: str = ""
    seconds: float = 0.0  # what measuring cost


def tuning_steps(n_candidates: int) -> int:
    """Tuning's cost in training steps: each candidate and the authors' configuration run warm-up and
    measured steps in a fresh process whose start and model build cost about recipe.TUNE_START_STEPS."""
    return (n_candidates + 1) * (recipe.TUNE_WARMUP + recipe.TUNE_STEPS + recipe.TUNE_START_STEPS)


def worth_tuning(planned_steps: int | None, n_candidates: int) -> bool:
    """``--tune auto``: measure when that costs under recipe.TUNE_MAX_SHARE of the planned steps
    (unknown, as with --time-budget: no)."""
    return planned_steps is not None and tuning_steps(n_candidates) < recipe.TUNE_MAX_SHARE * planned_steps


def tune(
    mode: str,
    device: torch.device,
    *,
    batch_size: int,
    input_size: tuple[int, int],
    batch: Callable[[], tuple[torch.Tensor, torch.Tensor]],
    num_classes: int,
    planned_steps: int | None,
    given: dict[str, object] | None = None,
    max_memory_mb: float | None = None,
    cache_path: str | None = None,
    measure: Measure | None = None,
    log: Callable[[str], None] = print,
    clock: Callable[[], float] | None = None,
) -> TuneResult:
    """The configuration to train with under ``--tune mode`` (auto, on or off).

    ``batch()`` gives a real batch (images, labels) of ``batch_size`` x ``input_size``, read only when
    measuring; ``planned_steps`` the
    run's length in steps (None when unknown). ``measure`` times one StepConfig and returns
    ``measure_fresh``'s dict (tests pass a fake); ``clock`` times the tuning itself.
    """
    clock = clock or time.perf_counter
    default = class_default(device)
    fixed = {k: v for k, v in (given or {}).items() if v is not None}
    if fixed:
        default = dataclasses.replace(default, **fixed)
    if mode == "off":
        return TuneResult(default, "defaults", "tuning off: the CPU class's defaults")
    pool = candidates(device, given)
    key = {
        **cache_key(device, batch_size, input_size, num_classes),
        "given": fixed,
        "max_memory_mb": max_memory_mb,
    }
    path = cache_path or os.path.join(cache_dir(), "tune.json")
    if mode == "auto":
        cached = read_cache(path, key)
        if cached is not None:
            candidate = Candidate(**cached["candidate"])
            return TuneResult(
                candidate, "cached", f"tuned before on this machine ({path})", cached.get("table", "")
            )
        if not worth_tuning(planned_steps, len(pool)):
            run = (
                "a run whose length is not known before it starts (--time-budget)"
                if planned_steps is None
                else f"this run's {planned_steps} steps"
            )
            return TuneResult(
                default,
                "defaults",
                f"not tuned: measuring {len(pool)} configurations (about {tuning_steps(len(pool))} steps) "
                f"costs over {recipe.TUNE_MAX_SHARE:.0%} of {run}; --tune on forces it",
            )
    start = clock()
    with tempfile.TemporaryDirectory(prefix="dfpnet-tune-") as tmp:
        if measure is None:
            images, labels = batch()
            batch_file = os.path.join(tmp, "batch.pt")
            try:
                save_atomic({"images": images.cpu(), "labels": labels.cpu()}, batch_file)
            except OSError as exc:  # a full temporary folder: tuning is an option, the run goes on
                return TuneResult(default, "defaults", f"not tuned: {exc}")

            def measure(config: StepConfig) -> dict:
                return measure_fresh(
                    config,
                    device,
                    batch_size=batch_size,
                    input_size=input_size,
                    num_classes=num_classes,
                    warmup=recipe.TUNE_WARMUP,
                    iters=recipe.TUNE_STEPS,
                    threads=torch.get_num_threads(),
                    batch_file=batch_file,
                )

        log(
            f"tune: timing {len(pool)} configurations and the authors' at batch {batch_size}, "
            f"{input_size[0]}x{input_size[1]} ({recipe.TUNE_WARMUP} + {recipe.TUNE_STEPS} steps each)"
        )
        results = measure_all(pool, measure, log)
    seconds = clock() - start
    bound = memory_bound(device, results, max_memory_mb)
    chosen = choose(pool, results, bound)
    text = table(pool, results, chosen, bound)
    if chosen is None:
        reason = "no configuration fits the memory bound; the class defaults stay"
        return TuneResult(default, "defaults", reason, text, seconds)
    within = f"within {bound:.0f} MiB" if bound is not None else "no memory bound"
    reason = (
        f"tuned: {chosen.label}, {results[chosen.label].step_s:.3f} s/step ({within}); "
        f"measuring took {seconds:.0f} s"
    )
    try:
        write_cache(path, key, {"candidate": dataclasses.asdict(chosen), "table": text, "seconds": seconds})
    except OSError as exc:  # the choice holds for this run; the next one measures again
        log(f"tune: the choice is not cached: {write_error(path, exc)}")
    return TuneResult(chosen, "measured", reason, text, seconds)


# --------------------------------------------------------------------------------------------
# A training run
# --------------------------------------------------------------------------------------------


def first_batch(dataset, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The run's first ``batch_size`` training samples, collated as the loader collates them."""
    samples = [dataset[i % len(dataset)] for i in range(batch_size)]
    batch = default_collate(samples)
    return batch[0], batch[1]


def given_by_flags(cfg: TrainConfig) -> dict[str, object]:
    """The candidate fields the command line fixed (what --tune must not change)."""
    values = {
        "amp": cfg.amp,
        "channels_last": cfg.channels_last,
        "inplace": cfg.inplace_abn == "on",
        "malloc_reuse": cfg.malloc_reuse,
    }
    return {name: values[name] for name in cfg.fixed_by_flags}


def planned_steps(cfg: TrainConfig, iters_per_epoch: int) -> int | None:
    """The steps this run plans from its start epoch (None: --time-budget decides later)."""
    if cfg.epochs is None:
        return None
    steps = (cfg.epochs - cfg.start_epoch) * iters_per_epoch
    if cfg.max_iters is not None:
        steps = min(steps, max(cfg.max_iters - cfg.start_epoch * iters_per_epoch, 0))
    return steps


def apply(cfg: TrainConfig, candidate: Candidate) -> TrainConfig:
    """``cfg`` with the candidate's settings and the allocator set to match (setup leaves glibc as it
    is while the tuner may choose, which is how the candidates were measured)."""
    reuse = cfg.malloc_reuse
    if cfg.device.type == "cpu" and candidate.malloc_reuse and not reuse:
        reuse = keep_freed_memory(memory_lean(cfg.activation_checkpointing, cfg.update_in_backward))
    return dataclasses.replace(
        cfg,
        amp=candidate.amp,
        channels_last=candidate.channels_last,
        inplace_abn="on" if candidate.inplace else "off",
        abn_backend=candidate.backend,
        malloc="reuse" if reuse else "system",
        malloc_reuse=reuse,
    )


def tune_run(cfg: TrainConfig, data: TrainData) -> tuple[TrainConfig, TuneResult]:
    """train.py's --tune: the run's configuration after tuning, and what the tuner decided. Under
    torchrun the first process measures (one process's step) and the others take its choice."""
    result = None
    if not cfg.distributed or cfg.rank == 0:
        result = tune(
            cfg.tune,
            cfg.device,
            batch_size=cfg.batch_size,
            input_size=cfg.input_size,
            batch=lambda: first_batch(data.dataset, cfg.batch_size),
            num_classes=data.label_set.num_classes,
            planned_steps=planned_steps(cfg, data.iters_per_epoch),
            given=given_by_flags(cfg),
            max_memory_mb=cfg.max_memory,
            log=du.log,
        )
    if cfg.distributed:
        shared = [result]
        dist.broadcast_object_list(shared, src=0)
        result = shared[0]
    du.log(result.reason)
    if result.source != "cached" and result.table:  # measured now, whatever it chose
        du.log(result.table)
    if cfg.tune == "off":  # setup has applied the flags and the class defaults
        return cfg, result
    return apply(cfg, result.candidate), result
