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
script re-run with ``--worker``): CUDA ``max_memory_allocated``, CPU the peak RSS (VmHWM), with
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
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

import libs
from bench.common import (
    alternate,
    environment,
    format_environment,
    format_table,
    matmul_tflops,
    peak_rss_mb,
    rss_mb,
    summarize,
    synchronize,
    write_json,
)
from networks.dfpnet import DFPNet
from training.flags import CHECKPOINTED_LAYERS
from training.loss import parsing_loss
from training.model import default_inplace_abn
from training.optim import SGDInBackward
from training.step import train_step
from utils import recipe
from utils.cli import DefaultsHelpFormatter, parse_size, positive_int
from utils.cpu_defaults import cpu_defaults, keep_freed_memory
from utils.device import default_amp
from utils.labels import DOG, IGNORE_LABEL


@dataclass(frozen=True)
class Config:
    """How one configuration builds and runs the network."""

    # "inplace": DFPNet's default (libs.InPlaceABNSync); "abn": libs.ABN, plain autograd;
    # "bn": torch.nn.BatchNorm2d + leaky ReLU with the stock loss and step (the authors' code)
    norm: str
    amp: str  # "off" (float32) or "bf16" autocast
    channels_last: bool
    compile: bool = False
    inplace: bool = True  # norm "inplace" only: libs.set_inplace (train.py --inplace-abn)
    backend: str | None = None  # norm "inplace" only: force "compiled" or "pure" (else libs' choice)
    checkpointed: tuple[str, ...] = ()  # backbone layers recomputed in backward (--activation-checkpointing)
    update_in_backward: bool = False  # train.py --update-in-backward (training.optim.SGDInBackward)
    malloc_reuse: bool = False  # CPU, fresh processes only: train.py's --malloc reuse

    @property
    def label(self) -> str:
        norm = {"abn": "ABN", "bn": "BatchNorm2d + F.cross_entropy"}.get(
            self.norm, "InPlace-ABN" if self.inplace else "InPlace-ABN off"
        )
        return (
            f"{norm}, "
            f"{'bf16' if self.amp == 'bf16' else 'fp32'}, "
            f"{'channels-last' if self.channels_last else 'NCHW'}{', compiled' if self.compile else ''}"
            f"{f', {self.backend} backend' if self.backend else ''}"
            f"{', recomputing ' + '+'.join(self.checkpointed) if self.checkpointed else ''}"
            f"{', SGD update in backward' if self.update_in_backward else ''}"
        )


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
    "authors": replace(BASELINE, norm="bn"),
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
    parser.add_argument("--json", default=None, metavar="FILE", help="write the results as JSON")
    parser.add_argument(
        "--worker",
        default=None,
        choices=list(CONFIGS),
        help="internal: run --warmup + --iters steps of this configuration in this (fresh) "
        "process, print its memory and step times as one JSON line and exit",
    )
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


class AuthorsNorm(nn.BatchNorm2d):
    """torch.nn.BatchNorm2d followed by the layer's activation (leaky ReLU, not in place, as
    ``nn.LeakyReLU()``), with the InPlace-ABN constructor signature DFPNet's norm_layer takes."""

    def __init__(self, num_features: int, activation: str = "leaky_relu", activation_param: float = 0.01):
        super().__init__(num_features)
        self.activation, self.activation_param = activation, activation_param

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)
        return nn.functional.leaky_relu(y, self.activation_param) if self.activation == "leaky_relu" else y


def authors_step(
    model: nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """The authors' training step: the sum over outputs of the stock cross-entropy of each output
    resized (bilinear, align_corners=True) to the labels, then backward and SGD."""

    optimizer.zero_grad(set_to_none=True)
    outputs = model(images)
    loss = sum(
        F.cross_entropy(
            F.interpolate(out, size=labels.shape[-2:], mode="bilinear", align_corners=True),
            labels,
            ignore_index=IGNORE_LABEL,
        )
        for out in outputs
    )
    loss.backward()
    optimizer.step()
    return loss.detach()


def build_model(config: Config, device: torch.device, seed: int = 0) -> nn.Module:
    """DFPNet with the configuration's norm layer and memory format, same weights for every config."""

    torch.manual_seed(seed)
    norm_layer = {"inplace": None, "abn": libs.ABN, "bn": AuthorsNorm}[config.norm]
    model = DFPNet(DOG.num_classes, norm_layer=norm_layer)
    model.layer5_pred3x3.requires_grad_(False)  # unused in forward; train.py freezes it too
    model.set_activation_checkpointing(config.checkpointed)
    if config.norm == "inplace":
        libs.set_inplace(model, config.inplace)
        if config.backend:
            for layer in model.modules():
                if isinstance(layer, libs.InPlaceABN):
                    layer.backend = config.backend
    model.to(device).train()
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def make_batch(batch_size: int, size: tuple[int, int], device: torch.device, seed: int = 0):
    """A fixed random batch: normalised-looking images and labels with an ignored border."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(batch_size, 3, *size, generator=gen)
    labels = torch.randint(0, DOG.num_classes, (batch_size, *size), generator=gen)
    labels[:, :2] = IGNORE_LABEL  # like the 255 border of warped crops
    return images.to(device), labels.to(device)


class TrainStep:
    """One configuration's model, optimizer and batch; calling it runs one training step of
    ``training.step.train_step``, the step train.py runs (autocast forward, the five-output
    ``parsing_loss``, backward, finite-loss check, SGD step)."""

    def __init__(self, config: Config, device: torch.device, images: torch.Tensor, labels: torch.Tensor):
        self.config = config
        self.device = device
        self.model = build_model(config, device)
        self.forward = torch.compile(self.model) if config.compile else self.model
        # As train.py: the SGD recipe over the parameters that train.
        self.optimizer = (SGDInBackward if config.update_in_backward else torch.optim.SGD)(
            [p for p in self.model.parameters() if p.requires_grad],
            lr=recipe.LEARNING_RATE,
            momentum=recipe.MOMENTUM,
            weight_decay=recipe.WEIGHT_DECAY,
        )
        self.images = images.contiguous(memory_format=torch.channels_last) if config.channels_last else images
        self.labels = labels
        self.last_loss = float("nan")

    def __call__(self) -> None:

        if self.config.norm == "bn":
            self.last_loss = float(authors_step(self.forward, self.optimizer, self.images, self.labels))
            return
        losses, _ = train_step(
            self.forward,
            self.optimizer,
            self.images,
            self.labels,
            lr=recipe.LEARNING_RATE,
            iteration=0,
            amp=self.config.amp,
            ignore_label=IGNORE_LABEL,
        )
        self.last_loss = float(sum(losses))


def worker(name: str, args: argparse.Namespace) -> dict:
    """Memory and step times of configuration ``name`` in this process, which must be fresh.

    Memory: CUDA ``max_memory_allocated``; CPU the peak RSS (VmHWM) of the process, and the RSS
    after building the model and optimizer, so that what the steps add (gradients, momentum
    buffers, activations, allocator slack) shows as ``step_mem_mb``.
    """
    device = args.device
    cuda = device.type == "cuda"
    # train.py's default on the CPU (--malloc reuse: Config.malloc_reuse); the others keep glibc's
    # defaults, as the authors' code ran. Only a fresh process can make the difference (process-wide).
    config = configs_for(device)[name]
    reuse = not cuda and config.malloc_reuse and keep_freed_memory()
    images, labels = make_batch(args.batch_size, args.input_size, device)
    start_mb = torch.cuda.memory_allocated(device) / 2**20 if cuda else rss_mb()
    step = TrainStep(config, device, images, labels)
    synchronize(device)
    model_mb = torch.cuda.memory_allocated(device) / 2**20 if cuda else rss_mb()
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    counters: dict[str, list[dict]] = {}
    samples = alternate({name: step}, args.iters, args.warmup, device, counters=counters)
    peak_mb = torch.cuda.max_memory_allocated(device) / 2**20 if cuda else peak_rss_mb()
    return {
        "start_mem_mb": start_mb,
        "model_mem_mb": model_mb,
        "peak_mem_mb": peak_mb,
        "step_mem_mb": peak_mb - model_mb,
        "loss": step.last_loss,
        "step_samples": samples[name],
        "counters": counters[name],
        "malloc": "reuse" if reuse else "system",
        "memory_kind": "cuda max_memory_allocated" if cuda else "peak RSS (VmHWM) of a fresh process",
    }


def run_worker(name: str, args: argparse.Namespace, warmup: int, iters: int) -> dict:
    """Run this script with ``--worker name`` in a fresh process (same environment) and read its JSON line."""
    cmd = [
        sys.executable,
        "-m",
        "bench.train_step",
        "--worker",
        name,
        "--device",
        str(args.device),
        "--batch-size",
        str(args.batch_size),
        "--input-size",
        ",".join(map(str, args.input_size)),
        "--warmup",
        str(warmup),
        "--iters",
        str(iters),
    ]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run(cmd, cwd=root, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"the fresh process for config {name!r} failed (exit {done.returncode}): {tail}")
    return json.loads(lines[-1])


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
    images, labels = make_batch(args.batch_size, args.input_size, device)
    steps = {name: TrainStep(configs[name], device, images, labels) for name in args.configs}
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


def main(args: argparse.Namespace) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # one fixed input size: pick kernels once
    if args.worker:
        print(json.dumps(worker(args.worker, args)))
        return {}

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

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
                configs[name], device, *make_batch(args.batch_size, args.input_size, device)
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
