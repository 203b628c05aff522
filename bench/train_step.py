"""Benchmark one DFPnet training step: the project's default configuration against the authors' way.

    python -m bench.train_step --device cpu --batch-size 2 --input-size 384,384 --iters 5 \
        --configs default,baseline --json outputs/bench/train_step_cpu.json

One step = ``training.step.train_step``, the step train.py runs: forward under autocast, the
five-output ``training.loss.parsing_loss``, backward, finite-loss check, SGD step with the recipe's
momentum 0.9 and weight decay 5e-4 (docs/reference.md section 6), on a fixed random batch.

Configurations (``--configs``, comma-separated, in the order they alternate):

* ``default``: what train.py runs by default: InPlace-ABN (``DFPNet``'s default norm layer, libs'
  backend choice; in place on the CPU, under plain autograd on CUDA: ``--inplace-abn auto``;
  ``inplace-on`` and ``inplace-off`` force either), bf16 autocast where the device runs it
  natively (``utils.device.default_amp``), channels-last, eager (torch.compile makes CPU
  training slower and costs minutes; on CUDA it is the separate ``compiled`` config until
  measured). On the CPU, precision, layout and in-place mode are ``utils.cpu_defaults``'s
  choice for this CPU class (AVX2 only: float32, NCHW, in place);
* ``baseline``: the authors' way: float32, eager, NCHW, ``libs.ABN`` (batch norm then a separate
  activation under plain autograd, no in-place memory trick);
* ``authors``: the authors' code as people run it without InPlace-ABN: ``torch.nn.BatchNorm2d``
  then a (not in-place) leaky ReLU, float32, NCHW, the stock ``F.cross_entropy`` loss and a bare
  SGD step (zero_grad, forward, loss, backward, step). Its scale is ``weight``, not
  ``|weight| + eps``: same cost, different math, so it exists to check that ``baseline`` costs
  what the authors' step costs;
* single-change configs that show where the gain comes from: ``fp32-cl`` (baseline +
  channels-last), ``bf16-nchw`` (baseline + bf16), ``bf16-cl`` (baseline + bf16 + channels-last,
  i.e. default without InPlace-ABN), ``iabn-fp32`` (baseline + InPlace-ABN);
* ``compiled``: default + ``torch.compile`` (slow to start);
* ``ckpt-layer3`` / ``ckpt-backbone`` / ``ckpt-all``: default + ``train.py --activation-checkpointing
  layer3`` / ``backbone`` / ``all`` (the bottlenecks of layer3, or of layer1-4, and with ``all`` the
  full-size heads too, recompute their activations in backward); ``update-in-backward``: default +
  ``--update-in-backward``; ``lean``: default + both, ``all`` and ``--update-in-backward``;
* candidates for a per-CPU-class float32 default (``utils.cpu_defaults``): ``iabn-fp32-cl``
  (InPlace-ABN in place, float32, channels-last), ``plain-fp32`` / ``plain-fp32-cl`` (InPlace-ABN
  layers under plain autograd, float32, NCHW / channels-last).

Timings alternate the configurations (A B A B ...) in one process and report medians with the
inter-quartile range. Peak memory is measured for each configuration in a FRESH process (this
``training.measure.measure_fresh``): CUDA ``max_memory_allocated``, CPU the peak RSS (VmHWM), with
the RSS after building the model and optimizer reported too, so what the step itself adds
(gradients, momentum, activations) is visible. On the CPU, configurations sharing a process also
share glibc's allocator state (its mmap threshold adapts to the largest blocks freed), which
changes page-fault counts: ``--isolate`` times each configuration in fresh processes instead,
alternating them (A B A B ...), as one training run sees it. In fresh processes the ``default``
configuration, and those that change one of its flags, also get train.py's ``--malloc reuse``
(glibc keeps freed memory: no page faults per activation), which a process shared with other
configurations cannot give them alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from bench.common import (
    alternate,
    environment,
    format_environment,
    format_table,
    log,
    matmul_tflops,
    summarize,
    synchronize,
    write_json,
)
from training import tune as tuning
from training.flags import CHECKPOINTED_LAYERS
from training.loss import parsing_loss
from training.measure import AUTHORS, StepConfig, TrainStep, make_batch, measure_fresh
from training.model import default_inplace_abn
from utils import recipe
from utils.cli import DefaultsHelpFormatter, parse_size, positive_int
from utils.cpu_defaults import cpu_defaults
from utils.device import default_amp
from utils.labels import DOG, IGNORE_LABEL

Config = StepConfig  # the name this benchmark's configurations have always had


BASELINE = Config(norm="abn", amp="off", channels_last=False)
DEFAULT = Config(norm="inplace", amp="bf16", channels_last=True, malloc_reuse=True)
CONFIGS: dict[str, Config] = {
    "default": DEFAULT,
    "baseline": BASELINE,
    "fp32-cl": replace(BASELINE, channels_last=True),
    "bf16-nchw": replace(BASELINE, amp="bf16"),
    "bf16-cl": replace(BASELINE, amp="bf16", channels_last=True),
    "iabn-fp32": replace(BASELINE, norm="inplace"),
    "compiled": replace(DEFAULT, compile=True),
    "ckpt-layer3": replace(DEFAULT, checkpointed=CHECKPOINTED_LAYERS["layer3"]),
    "ckpt-backbone": replace(DEFAULT, checkpointed=CHECKPOINTED_LAYERS["backbone"]),
    "ckpt-all": replace(DEFAULT, checkpointed=CHECKPOINTED_LAYERS["all"]),
    "update-in-backward": replace(DEFAULT, update_in_backward=True),
    "lean": replace(DEFAULT, checkpointed=CHECKPOINTED_LAYERS["all"], update_in_backward=True),
    "inplace-on": replace(DEFAULT, inplace=True),
    "inplace-off": replace(DEFAULT, inplace=False),
    "authors": AUTHORS,
    "iabn-fp32-cl": Config(norm="inplace", amp="off", channels_last=True, inplace=True),
    "plain-fp32": Config(norm="inplace", amp="off", channels_last=False, inplace=False),
    "plain-fp32-cl": Config(norm="inplace", amp="off", channels_last=True, inplace=False),
    "iabn-fp32-compiled": Config(norm="inplace", amp="off", channels_last=False, backend="compiled"),
    "iabn-fp32-cl-compiled": Config(norm="inplace", amp="off", channels_last=True, backend="compiled"),
    "iabn-fp32-pure": Config(norm="inplace", amp="off", channels_last=False, backend="pure"),
    "iabn-fp32-cl-pure": Config(norm="inplace", amp="off", channels_last=True, backend="pure"),
}
# Fixed configurations that configs_for must not re-resolve for the device.
_FIXED = (
    "authors",
    "iabn-fp32-cl",
    "plain-fp32",
    "plain-fp32-cl",
    "iabn-fp32-compiled",
    "iabn-fp32-cl-compiled",
    "iabn-fp32-pure",
    "iabn-fp32-cl-pure",
)


def configs_for(device: torch.device) -> dict[str, Config]:
    """CONFIGS with the default's precision and in-place choice resolved as train.py resolves them
    for ``device`` (bf16 where the CPU or GPU runs it natively, else float32; in place on the CPU)."""

    amp, inplace = default_amp(device), default_inplace_abn(device)
    configs = {
        name: (
            replace(config, amp=amp)
            if config.norm == "inplace" and config.channels_last and name not in _FIXED
            else config
        )
        for name, config in CONFIGS.items()
    }
    resolved = (
        "default",
        "compiled",
        "ckpt-layer3",
        "ckpt-backbone",
        "ckpt-all",
        "update-in-backward",
        "lean",
    )  # the default, plus one change (or two: lean)
    for name in resolved:
        configs[name] = replace(configs[name], inplace=inplace)
    if device.type == "cpu":
        # The per-CPU-class defaults train.py takes from utils.cpu_defaults (float32 and NCHW on
        # AVX2-only CPUs, where bf16 is emulated).

        chosen = cpu_defaults()
        for name in resolved:
            configs[name] = replace(
                configs[name], amp=chosen.amp, channels_last=chosen.channels_last, inplace=chosen.inplace
            )
    return configs


def parse_configs(text: str) -> list[str]:
    """``"default,baseline"`` -> names checked against CONFIGS (argparse type)."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in CONFIGS]
    if not names or unknown or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(
            f"expected distinct names from {', '.join(CONFIGS)} separated by commas, got {text!r}"
        )
    return names


def get_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.train_step",
        description=__doc__.split("\n")[0],
        formatter_class=DefaultsHelpFormatter,
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda (cuda:N)")
    parser.add_argument("--batch-size", type=positive_int, default=2, help="images per step")
    parser.add_argument(
        "--input-size",
        type=parse_size,
        default=recipe.INPUT_SIZE,
        metavar="H,W",
        help="crop size, height,width (authors' run: 384,384)",
    )
    parser.add_argument("--iters", type=positive_int, default=5, help="measured steps per configuration")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured steps per configuration first")
    parser.add_argument(
        "--configs",
        type=parse_configs,
        default=["default", "baseline"],
        help=f"comma-separated configurations to alternate: {', '.join(CONFIGS)} (default: default,baseline)",
    )
    parser.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="torch intra-op threads (default: torch's choice, the core count)",
    )
    parser.add_argument(
        "--isolate",
        action="store_true",
        help="time each configuration in its own fresh process (alternating processes, "
        "--rounds of them per configuration), as a training run sees it: no allocator "
        "state shared between configurations; memory is measured in the same processes",
    )
    parser.add_argument(
        "--rounds",
        type=positive_int,
        default=2,
        help="with --isolate: processes per configuration, each running --warmup + --iters steps",
    )
    parser.add_argument(
        "--memory-steps",
        type=positive_int,
        default=2,
        help="without --isolate: steps each fresh memory process runs (2: the second has momentum buffers)",
    )
    parser.add_argument(
        "--no-memory", action="store_true", help="skip the per-configuration memory processes"
    )
    parser.add_argument("--no-flops", action="store_true", help="skip the FLOP count and the matmul rates")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="after timing, print torch.profiler's top 15 ops by self CPU time "
        "for each config (2 steps each)",
    )
    parser.add_argument(
        "--tune",
        action="store_true",
        help="instead of --configs: time every configuration train.py --tune chooses from, and the "
        "authors', in fresh processes (--rounds of them, alternated; --warmup + --iters steps each), "
        "and report the table and the choice as train.py --tune would make it",
    )
    parser.add_argument("--json", default=None, metavar="FILE", help="write the results as JSON")
    args = parser.parse_args(argv)
    if args.warmup < 0:
        parser.error(f"argument --warmup: expected an integer >= 0, got {args.warmup}")
    try:
        args.device = torch.device(args.device)
    except (RuntimeError, ValueError):
        parser.error(f"argument --device: {args.device!r} is not a device (cpu, cuda, cuda:N)")
    if args.device.type == "cuda" and not torch.cuda.is_available():
        parser.error("argument --device: CUDA is not available in this PyTorch/on this machine")
    return args


# --------------------------------------------------------------------------------------------
# One configuration
# --------------------------------------------------------------------------------------------


def run_worker(name: str, args: argparse.Namespace, warmup: int, iters: int) -> dict:
    """Configuration ``name`` measured in a fresh process (training.measure.measure_fresh)."""
    return measure_fresh(
        configs_for(args.device)[name],
        args.device,
        batch_size=args.batch_size,
        input_size=args.input_size,
        num_classes=DOG.num_classes,
        warmup=warmup,
        iters=iters,
        threads=args.threads,
    )


def count_flops(step: TrainStep) -> tuple[float, float]:
    """(forward, forward+backward) FLOPs per image of the network, counted by FlopCounterMode
    (convolutions and matmuls, 2 FLOPs per multiply-add) on the step's batch in float32.

    The batch is the step's own: training batch norm needs more than one value per channel,
    which ASPP's pooled 1 x 1 branch only has with two images or more.
    """

    n = step.images.shape[0]
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        step.model(step.images)
    forward = counter.get_total_flops()
    step.optimizer.zero_grad(set_to_none=True)
    with FlopCounterMode(display=False) as counter:
        outputs = step.model(step.images)
        parsing_loss(outputs, step.labels, ignore_label=IGNORE_LABEL).backward()
    step.optimizer.zero_grad(set_to_none=True)
    return float(forward) / n, float(counter.get_total_flops()) / n


def print_profile(step: TrainStep, steps: int = 2) -> str:

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if step.device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        synchronize(step.device)
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15)
    print(f"\nTop 15 ops by self CPU time, {steps} steps of {step.config.label}:\n{table}")
    return table


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------

COLUMNS = [
    ("config", "config", ""),
    ("label", "setup", ""),
    ("step_s", "step s (median)", ".3f"),
    ("step_iqr", "IQR s", ""),
    ("images_per_s", "images/s", ".2f"),
    ("peak_mem_mb", "peak MiB", ".0f"),
    ("model_mem_mb", "after model MiB", ".0f"),
    ("step_mem_mb", "step adds MiB", ".0f"),
    ("achieved_tflops", "TFLOP/s", ".3f"),
    ("matmul_share", "of matmul", ".0%"),
    ("minor_faults_per_step", "page faults/step", ".0f"),
    ("system_s_per_step", "kernel CPU s/step", ".2f"),
]


@dataclass
class Measured:
    """What the timing rounds produced, per configuration name."""

    samples: dict[str, list[float]]  # step seconds
    counters: dict[str, list[dict]]  # per-step page faults and CPU times
    losses: dict[str, float]
    memory: dict[str, dict]  # peak and per-step memory (fresh processes)
    steps: dict[str, TrainStep]  # the in-process steps (alternated timing only)


def measure_isolated(args: argparse.Namespace, log: Callable[[str], None]) -> Measured:
    """Each configuration in fresh processes, ``args.rounds`` times (memory from the same runs)."""
    out = Measured({n: [] for n in args.configs}, {n: [] for n in args.configs}, {}, {}, {})
    for i in range(args.rounds):
        for name in args.configs:
            run = run_worker(name, args, args.warmup, args.iters)
            out.samples[name] += run.pop("step_samples")
            out.counters[name] += run.pop("counters")
            out.losses[name] = run["loss"]
            if name not in out.memory or run["peak_mem_mb"] > out.memory[name]["peak_mem_mb"]:
                out.memory[name] = run
            times = ", ".join(f"{t:.3f}" for t in out.samples[name][-args.iters :])
            log(f"round {i + 1}/{args.rounds} {name}: steps {times} s, peak {run['peak_mem_mb']:.0f} MiB")
    return out


def measure_alternated(
    args: argparse.Namespace, configs: dict[str, Config], device: torch.device, log: Callable[[str], None]
) -> Measured:
    """Memory first, in fresh processes while this one holds nothing big; then every configuration's
    steps alternated in this process, so that they share the machine's load."""
    memory: dict[str, dict] = {}
    if not args.no_memory:
        for name in args.configs:
            t0 = time.perf_counter()
            memory[name] = run_worker(name, args, 0, args.memory_steps)
            del memory[name]["step_samples"], memory[name]["counters"]
            seconds = time.perf_counter() - t0
            log(f"memory {name}: peak {memory[name]['peak_mem_mb']:.0f} MiB ({seconds:.0f} s)")
    images, labels = make_batch(args.batch_size, args.input_size, device, DOG.num_classes)
    steps = {name: TrainStep(configs[name], device, images, labels, DOG.num_classes) for name in args.configs}
    counters: dict[str, list[dict]] = {name: [] for name in args.configs}
    samples = alternate(steps, args.iters, args.warmup, device, log=log, counters=counters)
    return Measured(samples, counters, {name: step.last_loss for name, step in steps.items()}, memory, steps)


def config_entry(
    name: str,
    config: Config,
    measured: Measured,
    args: argparse.Namespace,
    flops: float | None,
    rates: dict[str, float],
) -> dict:
    """One configuration's row: step time quartiles, throughput, counters, memory, FLOP rate."""
    stats = summarize(measured.samples[name])
    entry = {
        "config": name,
        "label": config.label,
        **asdict(config),
        "step_s": stats["median"],
        "step_s_q1": stats["q1"],
        "step_s_q3": stats["q3"],
        "step_s_min": stats["min"],
        "step_s_max": stats["max"],
        "step_samples": measured.samples[name],
        "images_per_s": args.batch_size / stats["median"],
        "loss": measured.losses[name],
    }
    for key in ("minor_faults", "user_s", "system_s"):  # per step, median over the measured steps
        entry[f"{key}_per_step"] = summarize([c[key] for c in measured.counters[name]])["median"]
    entry.update(measured.memory.get(name, {}))
    if flops:
        entry["achieved_tflops"] = 3.0 * flops * args.batch_size / stats["median"] / 1e12
        entry["matmul_share"] = entry["achieved_tflops"] / rates["bf16" if config.amp == "bf16" else "fp32"]
    return entry


def default_over_baseline(result: dict, with_memory: bool) -> dict[str, float]:
    ratios = {"step_time": result["default"]["step_s"] / result["baseline"]["step_s"]}
    if with_memory:
        ratios["peak_mem"] = result["default"]["peak_mem_mb"] / result["baseline"]["peak_mem_mb"]
        ratios["step_mem"] = result["default"]["step_mem_mb"] / result["baseline"]["step_mem_mb"]
    return ratios


def run_tuner(args: argparse.Namespace, log: Callable[[str], None]) -> dict:
    """train.py --tune's candidates and the authors' configuration, each in ``args.rounds`` fresh
    processes (the rounds alternate them), with the tuner's own measurement, bound and choice."""
    pool = tuning.candidates(args.device)

    def measure(config: StepConfig) -> dict:
        return measure_fresh(
            config,
            args.device,
            batch_size=args.batch_size,
            input_size=args.input_size,
            num_classes=DOG.num_classes,
            warmup=args.warmup,
            iters=args.iters,
            threads=args.threads,
        )

    merged: dict[str, tuning.Measured] = {}
    round_seconds = []
    for i in range(args.rounds):
        start = time.perf_counter()
        for name, got in tuning.measure_all(pool, measure, log).items():
            seen = merged.setdefault(name, got)
            if seen is not got and got.step_s is not None and seen.step_s is not None:
                samples = seen.samples + got.samples
                merged[name] = tuning.Measured(
                    name, summarize(samples)["median"], max(seen.peak_mb, got.peak_mb), samples
                )
        round_seconds.append(time.perf_counter() - start)
        log(f"round {i + 1}/{args.rounds}: {round_seconds[-1]:.0f} s")
    bound = tuning.memory_bound(args.device, merged, None)
    chosen = tuning.choose(pool, merged, bound)
    default = tuning.class_default(args.device)
    text = tuning.table(pool, merged, chosen, bound)
    authors = merged["authors"]
    ratios = {
        label: {
            "step_time": merged[label].step_s / authors.step_s,
            "peak_mem": merged[label].peak_mb / authors.peak_mb,
        }
        for label in ({default.label} | ({chosen.label} if chosen else set()))
        if merged.get(label) and merged[label].step_s is not None
    }
    print(text)
    print(f"class default: {default.label}; tuned choice: {chosen.label if chosen else 'none fits'}")
    for label, ratio in ratios.items():
        print(f"{label} / authors: time {ratio['step_time']:.2f}x, peak memory {ratio['peak_mem']:.2f}x")
    print(f"one tuning (one round): {statistics.median(round_seconds):.0f} s")
    return {
        "tuner": {
            "rows": {name: dataclasses.asdict(m) for name, m in merged.items()},
            "memory_bound_mb": bound,
            "chosen": chosen.label if chosen else None,
            "class_default": default.label,
            "ratios_to_authors": ratios,
            "seconds_per_tuning": statistics.median(round_seconds),
            "table": text,
        }
    }


def main(args: argparse.Namespace) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # one fixed input size: pick kernels once

    if args.tune:
        info = environment(device)
        log(f"{info['device']}: batch {args.batch_size}, {args.input_size[0]}x{args.input_size[1]}, tuner")
        result = run_tuner(args, log)
        result.update({"device": info["device"], "command": info["command"], "environment": info})
        print(format_environment(info))
        if args.json:
            write_json(result, args.json)
        return result

    info = environment(device)
    log(
        f"{info['device']}: batch {args.batch_size}, {args.input_size[0]}x{args.input_size[1]}, "
        f"configs {', '.join(args.configs)}{', isolated processes' if args.isolate else ''}"
    )
    configs = configs_for(device)
    measured = measure_isolated(args, log) if args.isolate else measure_alternated(args, configs, device, log)

    def step_of(name: str) -> TrainStep:  # for the FLOP count and the profile; built here if isolated
        if name not in measured.steps:
            measured.steps[name] = TrainStep(
                configs[name],
                device,
                *make_batch(args.batch_size, args.input_size, device, DOG.num_classes),
                DOG.num_classes,
            )
        return measured.steps[name]

    flops = train_flops = None
    rates: dict[str, float] = {}
    if not args.no_flops:
        flops, train_flops = count_flops(step_of(args.configs[-1]))
        # Only the precisions the configurations run: bf16 where it is emulated (AVX2) is so slow
        # that its matmul rate alone would take minutes, and no measured step would be read against it.
        used = {"bf16" if configs[name].amp == "bf16" else "fp32" for name in args.configs}
        dtypes = {"bf16": torch.bfloat16, "fp32": torch.float32}
        rates = {key: matmul_tflops(device, dtypes[key]) for key in sorted(used)}

    result: dict = {
        name: config_entry(name, configs[name], measured, args, flops, rates) for name in args.configs
    }
    rows = [
        {**result[name], "step_iqr": f"{result[name]['step_s_q1']:.3f}-{result[name]['step_s_q3']:.3f}"}
        for name in args.configs
    ]
    result.update(
        {
            "configs": args.configs,
            "device": info["device"],
            "batch_size": args.batch_size,
            "input_size": list(args.input_size),
            "iters": args.iters,
            "warmup": args.warmup,
            "timing": (
                f"{args.rounds} fresh processes per configuration"
                if args.isolate
                else "alternated in one process"
            ),
            "flops_per_image": flops,
            "train_flops_per_image": train_flops,
            "matmul_tflops": rates,
            "versions": {k: info[k] for k in ("python", "torch", "numpy", "opencv", "abn_backend")},
            "command": info["command"],
            "environment": info,
        }
    )
    if "default" in result and "baseline" in result:
        result["ratios"] = default_over_baseline(result, bool(measured.memory))

    print(format_table(rows, [c for c in COLUMNS if any(c[0] in r for r in rows)]))
    if flops:
        print(
            f"network: {flops / 1e9:.1f} GFLOP/image forward, {train_flops / 1e9:.1f} GFLOP/image "
            f"forward+backward (counted); matmul "
            + ", ".join(f"{rate:.3f} TFLOP/s {key}" for key, rate in rates.items())
        )
    if "ratios" in result:
        print("default / baseline: " + ", ".join(f"{k} {v:.2f}x" for k, v in result["ratios"].items()))
    print(format_environment(info))
    if args.profile:
        # Every config, so that where their times differ shows op by op (same process, same load).
        result["profile"] = {name: print_profile(step_of(name)) for name in args.configs}
    if args.json:
        write_json(result, args.json)
    return result


if __name__ == "__main__":
    main(get_arguments())
