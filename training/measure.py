"""Measuring training steps: the harness shared by train.py's tuner (``training.tune``) and
``bench/train_step.py``.

A :class:`StepConfig` says how DFPnet is built and trained (norm layer, precision, layout, in-place
mode and backend, recomputation, allocator); :class:`TrainStep` runs one training step of it: the
step train.py runs (``training.step.train_step``), or the authors' step for their configuration.
:func:`alternate` times several configurations in turn; :func:`measure_fresh` runs one in a fresh
process (``python -m training.measure``) and returns its step times and peak memory. Only a fresh
process gives a CPU configuration its own peak memory (the peak RSS never goes down) and its own
allocator setting (glibc's is process-wide).

Timing rules: each measured call is synchronised with the device before and after; warm-up calls
absorb one-time costs and are never measured; medians, not means, are what a caller reads.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

import libs
from networks.dfpnet import DFPNet
from training.optim import SGDInBackward
from training.step import train_step
from utils import recipe
from utils.cpu_defaults import keep_freed_memory
from utils.device import compile_model
from utils.labels import IGNORE_LABEL

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# --------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------


def synchronize(device: torch.device | str) -> None:
    """Wait for queued work on ``device`` (a no-op on the CPU, where every op is synchronous)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(
    fn: Callable[[], object], device: torch.device | str, clock: Callable[[], float] = time.perf_counter
) -> float:
    """Seconds that ``fn()`` takes, device work included."""
    synchronize(device)
    start = clock()
    fn()
    synchronize(device)
    return clock() - start


def alternate(
    runs: dict[str, Callable[[], object]],
    iters: int,
    warmup: int,
    device: torch.device | str,
    log: Callable[[str], None] | None = None,
    counters: dict[str, list[dict]] | None = None,
    clock: Callable[[], float] = time.perf_counter,
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
            seconds = timed(fn, device, clock)
            if log:
                log(f"warm-up {i + 1}/{warmup} {name}: {seconds:.3f} s")
    samples: dict[str, list[float]] = {name: [] for name in runs}
    for i in range(iters):
        for name, fn in runs.items():
            before = resource.getrusage(resource.RUSAGE_SELF)
            samples[name].append(timed(fn, device, clock))
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
# One configuration
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StepConfig:
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
    def memory_lean(self) -> bool:
        """Whether a memory-lean flag is on (train.py then keeps one heap for every thread)."""
        return bool(self.checkpointed) or self.update_in_backward

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
            f"{', malloc reuse' if self.malloc_reuse else ''}"
        )

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> StepConfig:
        values = json.loads(text)
        values["checkpointed"] = tuple(values["checkpointed"])
        return cls(**values)


# The authors' configuration: their norm layer, loss and step, float32, NCHW, eager.
AUTHORS = StepConfig(norm="bn", amp="off", channels_last=False)


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


def build_model(config: StepConfig, device: torch.device, num_classes: int, seed: int = 0) -> nn.Module:
    """DFPNet with the configuration's norm layer and memory format, same weights for every config."""

    torch.manual_seed(seed)
    norm_layer = {"inplace": None, "abn": libs.ABN, "bn": AuthorsNorm}[config.norm]
    model = DFPNet(num_classes, norm_layer=norm_layer)
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


def make_batch(batch_size: int, size: tuple[int, int], device: torch.device, num_classes: int, seed: int = 0):
    """A fixed random batch: normalised-looking images and labels with an ignored border."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(batch_size, 3, *size, generator=gen)
    labels = torch.randint(0, num_classes, (batch_size, *size), generator=gen)
    labels[:, :2] = IGNORE_LABEL  # like the 255 border of warped crops
    return images.to(device), labels.to(device)


class TrainStep:
    """One configuration's model, optimizer and batch; calling it runs one training step of
    ``training.step.train_step``, the step train.py runs (autocast forward, the five-output
    ``parsing_loss``, backward, finite-loss check, SGD step), or the authors' step."""

    def __init__(
        self,
        config: StepConfig,
        device: torch.device,
        images: torch.Tensor,
        labels: torch.Tensor,
        num_classes: int,
    ):
        self.config = config
        self.device = device
        self.model = build_model(config, device, num_classes)
        self.forward = compile_model(self.model) if config.compile else self.model
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


def measure_here(
    config: StepConfig,
    device: torch.device,
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    warmup: int,
    iters: int,
) -> dict:
    """Memory and step times of ``config`` in this process, which must be fresh.

    Memory: CUDA ``max_memory_allocated``; CPU the peak RSS (VmHWM) of the process, and the RSS
    after building the model and optimizer, so that what the steps add (gradients, momentum
    buffers, activations, allocator slack) shows as ``step_mem_mb``.
    """
    cuda = device.type == "cuda"
    # train.py's default on the CPU (--malloc reuse); other configurations keep glibc's defaults,
    # as the authors' code ran. Only a fresh process can make the difference (it is process-wide).
    reuse = not cuda and config.malloc_reuse and keep_freed_memory(config.memory_lean)
    start_mb = torch.cuda.memory_allocated(device) / 2**20 if cuda else rss_mb()
    step = TrainStep(config, device, images.to(device), labels.to(device), num_classes)
    synchronize(device)
    model_mb = torch.cuda.memory_allocated(device) / 2**20 if cuda else rss_mb()
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    counters: dict[str, list[dict]] = {}
    samples = alternate({"config": step}, iters, warmup, device, counters=counters)
    peak_mb = torch.cuda.max_memory_allocated(device) / 2**20 if cuda else peak_rss_mb()
    return {
        "start_mem_mb": start_mb,
        "model_mem_mb": model_mb,
        "peak_mem_mb": peak_mb,
        "step_mem_mb": peak_mb - model_mb,
        "loss": step.last_loss,
        "step_samples": samples["config"],
        "counters": counters["config"],
        "malloc": "reuse" if reuse else "system",
        "memory_kind": "cuda max_memory_allocated" if cuda else "peak RSS (VmHWM) of a fresh process",
    }


def measure_fresh(
    config: StepConfig,
    device: torch.device,
    *,
    batch_size: int,
    input_size: tuple[int, int],
    num_classes: int,
    warmup: int,
    iters: int,
    threads: int | None = None,
    batch_file: str | None = None,
) -> dict:
    """:func:`measure_here` in a fresh ``python -m training.measure`` process (same environment).

    The batch is ``batch_file`` (``torch.save`` of ``{"images", "labels"}``: a real batch) or a fixed
    random one of ``batch_size`` x ``input_size``. Raises RuntimeError with the process's last line
    when it fails (out of memory, say).
    """
    cmd = [sys.executable, "-m", "training.measure", "--config", config.to_json(), "--device", str(device)]
    cmd += ["--batch-size", str(batch_size), "--input-size", f"{input_size[0]},{input_size[1]}"]
    cmd += ["--num-classes", str(num_classes), "--warmup", str(warmup), "--iters", str(iters)]
    if threads:
        cmd += ["--threads", str(threads)]
    if batch_file:
        cmd += ["--batch-file", batch_file]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"the fresh process for {config.label} failed (exit {done.returncode}): {tail}")
    return json.loads(lines[-1])


def _main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m training.measure", description="internal: see measure_fresh"
    )
    parser.add_argument("--config", required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--input-size", required=True)
    parser.add_argument("--num-classes", type=int, required=True)
    parser.add_argument("--warmup", type=int, required=True)
    parser.add_argument("--iters", type=int, required=True)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--batch-file", default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    config = StepConfig.from_json(args.config)
    if device.type == "cpu" and config.malloc_reuse:  # as train.py: before anything else allocates
        keep_freed_memory(config.memory_lean)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # one fixed input size: pick kernels once
    if args.batch_file:
        batch = torch.load(args.batch_file, weights_only=True)
        images, labels = batch["images"], batch["labels"]
    else:
        height, width = (int(v) for v in args.input_size.split(","))
        images, labels = make_batch(args.batch_size, (height, width), torch.device("cpu"), args.num_classes)
    print(json.dumps(measure_here(config, device, images, labels, args.num_classes, args.warmup, args.iters)))


if __name__ == "__main__":
    _main()
