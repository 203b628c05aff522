"""train.py --tune (training.tune): the choice follows the measurements, within the memory bound,
cached per machine and run shape; measurements come from a fake here, never from timing."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest
import torch

from training import tune as tuning
from training.measure import AUTHORS, StepConfig, alternate
from utils import recipe

CPU = torch.device("cpu")


class FakeMeasure:
    """What measure_fresh would return, from a table: step seconds and peak MiB per configuration."""

    def __init__(
        self, seconds: dict[StepConfig, float], memory: dict[StepConfig, float], default_s: float = 5.0
    ):
        self.seconds, self.memory, self.default_s = seconds, memory, default_s
        self.calls: list[StepConfig] = []

    def __call__(self, config: StepConfig) -> dict:
        self.calls.append(config)
        step = self.seconds.get(config, self.default_s)
        return {
            "step_samples": [step * 1.1, step, step * 0.95],
            "peak_mem_mb": self.memory.get(config, 1000.0),
        }


def _tune(mode="on", measure=None, tmp_path=None, batch_size=2, planned=10**6, **kwargs):
    def batch():
        raise AssertionError("a fake measurement reads no batch")

    return tuning.tune(
        mode,
        CPU,
        batch_size=batch_size,
        input_size=(32, 32),
        batch=batch,
        num_classes=8,
        planned_steps=planned,
        cache_path=str(tmp_path / "tune.json"),
        measure=measure,
        log=lambda line: None,
        **kwargs,
    )


def test_alternate_reads_the_clock_it_is_given():
    ticks = iter([0.0, 1.5, 10.0, 10.25, 20.0, 23.0, 30.0, 30.5])  # start, end per call
    samples = alternate(
        {"a": lambda: None, "b": lambda: None}, iters=2, warmup=0, device=CPU, clock=lambda: next(ticks)
    )
    assert samples == {"a": [1.5, 3.0], "b": [0.25, 0.5]}


def test_picks_what_the_measurements_say_is_fastest(tmp_path):
    pool = tuning.candidates(CPU)
    assert len(pool) >= 4 and len(set(pool)) == len(pool)
    fastest = pool[-1]
    fake = FakeMeasure(
        {c.step_config(): 3.0 + i / 10 for i, c in enumerate(pool[:-1])} | {fastest.step_config(): 2.0}, {}
    )
    result = _tune(measure=fake, tmp_path=tmp_path)
    assert result.candidate == fastest and result.source == "measured"
    assert fake.calls[0] == AUTHORS and len(fake.calls) == len(pool) + 1  # the authors' first, then each once
    assert f"| {fastest.label} | 2.000 |" in result.table and "chosen" in result.table
    assert "tuned: " + fastest.label in result.reason


def test_the_memory_bound_excludes_a_faster_but_larger_candidate(tmp_path):
    pool = tuning.candidates(CPU)
    fast_big, slower_small = pool[0], pool[1]
    seconds = {fast_big.step_config(): 1.0, slower_small.step_config(): 2.0}
    memory = {AUTHORS: 1500.0, fast_big.step_config(): 1600.0, slower_small.step_config(): 1400.0}
    result = _tune(measure=FakeMeasure(seconds, memory), tmp_path=tmp_path)
    assert result.candidate == slower_small  # within the authors' 1500 MiB
    assert f"| {fast_big.label} | 1.000 | " in result.table and "over the memory bound" in result.table
    # --max-memory replaces the authors' bound.
    result = _tune(measure=FakeMeasure(seconds, memory), tmp_path=tmp_path, max_memory_mb=2000.0)
    assert result.candidate == fast_big
    # Nothing fits: the class defaults, with the table that shows why.
    result = _tune(measure=FakeMeasure(seconds, memory), tmp_path=tmp_path, max_memory_mb=10.0)
    assert result.candidate == tuning.class_default(CPU) and result.source == "defaults"
    assert "no configuration fits" in result.reason and "| authors |" in result.table


def test_a_failed_candidate_is_left_out(tmp_path):
    pool = tuning.candidates(CPU)
    fake = FakeMeasure({pool[1].step_config(): 2.0}, {})

    def measure(config):
        if config == pool[0].step_config():
            raise RuntimeError("the fresh process failed (exit -9): out of memory")
        return fake(config)

    result = _tune(measure=measure, tmp_path=tmp_path)
    assert result.candidate == pool[1]
    assert f"| {pool[0].label} | failed |" in result.table


def test_the_cache_is_used_and_invalidated_when_its_key_changes(tmp_path):
    pool = tuning.candidates(CPU)
    first = FakeMeasure({pool[2].step_config(): 1.0}, {})
    assert _tune("on", first, tmp_path).candidate == pool[2]
    entries = json.loads((tmp_path / "tune.json").read_text())
    (entry,) = entries.values()
    assert entry["key"]["batch_size"] == 2 and entry["key"]["input_size"] == [32, 32]
    assert entry["key"]["torch"] == torch.__version__ and entry["key"]["threads"] == torch.get_num_threads()

    def must_not_measure(config):
        raise AssertionError("measured although cached")

    cached = _tune("auto", must_not_measure, tmp_path)
    assert cached.candidate == pool[2] and cached.source == "cached" and cached.table == entry["table"]
    # Another batch size or crop is another key: measured again, and both entries kept.
    second = FakeMeasure({pool[3].step_config(): 1.0}, {})
    assert _tune("auto", second, tmp_path, batch_size=4).candidate == pool[3] and second.calls
    assert len(json.loads((tmp_path / "tune.json").read_text())) == 2
    # --tune on measures even with a cache entry.
    third = FakeMeasure({pool[0].step_config(): 1.0}, {})
    assert _tune("on", third, tmp_path).candidate == pool[0] and third.calls
    # Another torch version (say) does not read the old entry.
    key = tuning.cache_key(CPU, 2, (32, 32), 8)
    assert (
        tuning.read_cache(
            str(tmp_path / "tune.json"), {**key, "torch": "0.4.0", "given": {}, "max_memory_mb": None}
        )
        is None
    )


def test_off_and_short_runs_keep_the_class_defaults_without_measuring(tmp_path):
    def must_not_measure(config):
        raise AssertionError("measured")

    default = tuning.class_default(CPU)
    off = _tune("off", must_not_measure, tmp_path)
    assert off.candidate == default and off.source == "defaults"
    pool = tuning.candidates(CPU)
    short = tuning.tuning_steps(len(pool)) * 50  # tuning would cost 2 % of it
    auto = _tune("auto", must_not_measure, tmp_path, planned=short)
    assert auto.candidate == default and "not tuned" in auto.reason and "--tune on" in auto.reason
    assert f"costs over 1% of this run's {short} steps; --tune on forces it" in auto.reason
    unknown = _tune("auto", must_not_measure, tmp_path, planned=None)  # --time-budget
    assert unknown.candidate == default
    assert unknown.reason.endswith(
        "costs over 1% of a run whose length is not known before it starts (--time-budget); "
        "--tune on forces it"
    ), unknown.reason
    assert not os.path.exists(tmp_path / "tune.json")
    long = tuning.tuning_steps(len(pool)) * 101
    fake = FakeMeasure({}, {})
    assert _tune("auto", fake, tmp_path, planned=long).source == "measured" and fake.calls
    assert recipe.TUNE_MAX_SHARE == 0.01


def test_flags_given_on_the_command_line_are_not_tuned(tmp_path):
    pool = tuning.candidates(CPU, {"amp": "off", "channels_last": True, "malloc_reuse": True})
    assert pool and all(c.amp == "off" and c.channels_last and c.malloc_reuse for c in pool)
    assert {c.inplace for c in pool} == {True, False}
    fake = FakeMeasure({}, {})
    result = _tune(
        measure=fake, tmp_path=tmp_path, given={"amp": "off", "channels_last": True, "malloc_reuse": True}
    )
    assert len(fake.calls) == len(pool) + 1
    assert result.candidate.amp == "off" and result.candidate.channels_last
    off = _tune("off", None, tmp_path, given={"channels_last": False})
    assert off.candidate == dataclasses.replace(tuning.class_default(CPU), channels_last=False)
    with pytest.raises(ValueError, match="no configuration to tune matches"):
        tuning.candidates(CPU, {"amp": "fp8"})


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    from dataset.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("tune") / "data"
    generate_dataset(str(root), 8, 2, 0, seed=3, min_size=40, max_size=56)
    return str(root)


def _train(data_dir: str, snap, *flags: str) -> subprocess.CompletedProcess:
    argv = ["--data-dir", data_dir, "--snapshot-dir", str(snap), "--input-size", "32,32", "--batch-size", "2"]
    argv += [
        "--workers",
        "0",
        "--restore-from",
        "none",
        "--max-iters",
        "1",
        "--amp",
        "off",
        "--channels-last",
    ]
    argv += ["--malloc", "reuse", *flags]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return subprocess.run(
        [sys.executable, "train.py", *argv], cwd=root, capture_output=True, text=True, timeout=600
    )


@pytest.mark.slow
def test_train_py_measures_then_reads_its_cache(data_dir, tmp_path):
    """--tune on times each open configuration in fresh processes (here the flags leave InPlace-ABN's
    mode and backend open), prints the table and the choice, trains with it and caches it; --tune auto
    then takes the cached choice without measuring."""
    # At 32x32 every peak is the runtime's, give or take noise: the authors' bound is lifted here.
    first = _train(data_dir, tmp_path / "a", "--tune", "on", "--max-memory", "100000")
    assert first.returncode == 0, first.stderr[-2000:]
    pool = tuning.candidates(CPU, {"amp": "off", "channels_last": True, "malloc_reuse": True})
    rows = [
        line for line in first.stdout.splitlines() if line.startswith("| ") and "configuration" not in line
    ]
    assert len(rows) == len(pool) + 1 and rows[0].startswith("| authors |")
    # Every configuration was measured: no failed row, a positive step time and peak memory each.
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[1] != "failed", row
        assert float(cells[1]) > 0 and float(cells[3]) > 0, row
    (chosen_row,) = [row for row in rows if row.rstrip().endswith("| chosen |")]
    (chosen,) = [c for c in pool if chosen_row.startswith(f"| {c.label} |")]
    assert f"tuned: {chosen.label}" in first.stdout
    mode = "in place" if chosen.inplace else "under plain autograd"
    assert (
        f"amp off, channels-last True, compile False, activation checkpointing off, InPlace-ABN {mode}"
        in first.stdout
    )
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "a"), size_guidance={"tensors": 0})
    events.Reload()
    (text,) = events.Tensors("tuning/text_summary")
    logged = text.tensor_proto.string_val[0].decode()
    assert logged.startswith(f"tuned: {chosen.label}") and "| authors |" in logged
    (entry,) = json.loads(open(os.path.join(os.environ["DFPNET_CACHE_DIR"], "tune.json")).read()).values()
    assert entry["candidate"] == dataclasses.asdict(chosen) and entry["key"]["input_size"] == [32, 32]

    second = _train(data_dir, tmp_path / "b", "--tune", "auto", "--max-memory", "100000")
    assert second.returncode == 0, second.stderr[-2000:]
    assert "tuned before on this machine" in second.stdout and "tune: timing" not in second.stdout
    assert f"InPlace-ABN {mode}" in second.stdout


def test_a_tie_in_time_goes_to_the_smaller_memory(tmp_path):
    pool = tuning.candidates(CPU)
    fastest, close, far = pool[0], pool[1], pool[2]
    seconds = {
        fastest.step_config(): 2.0,
        close.step_config(): 2.0 * (1 + recipe.TUNE_TIE * 0.8),
        far.step_config(): 2.3,
    }
    memory = {
        AUTHORS: 5000.0,
        fastest.step_config(): 1400.0,
        close.step_config(): 1200.0,
        far.step_config(): 900.0,
    }
    assert _tune(measure=FakeMeasure(seconds, memory), tmp_path=tmp_path).candidate == close
    seconds[close.step_config()] = 2.0 * (1 + recipe.TUNE_TIE * 1.2)  # no longer a tie
    assert _tune(measure=FakeMeasure(seconds, memory), tmp_path=tmp_path).candidate == fastest


def test_the_allocator_is_set_once_the_choice_is_made(monkeypatch):
    """glibc's adaptive mmap threshold cannot be restored once mallopt has set anything, and the
    'system malloc' candidates were measured with it: so setup leaves malloc alone while the tuner
    may choose, and the choice (or the class default) sets it."""
    import training.config as config_module
    from training.flags import get_args_parser

    calls: list[str] = []
    monkeypatch.setattr(tuning, "keep_freed_memory", lambda one_heap=False: calls.append("tuner") or True)
    monkeypatch.setattr(
        config_module, "keep_freed_memory", lambda one_heap=False: calls.append("setup") or True
    )
    cfg = config_module.setup(get_args_parser().parse_args(["--device", "cpu"]))
    assert calls == [] and cfg.malloc == "reuse" and not cfg.malloc_reuse
    system = dataclasses.replace(tuning.class_default(CPU), malloc_reuse=False)
    assert tuning.apply(cfg, system).malloc == "system" and calls == []
    chosen = tuning.apply(cfg, tuning.class_default(CPU))
    assert chosen.malloc == "reuse" and chosen.malloc_reuse and calls == ["tuner"]
    for flags in (["--tune", "off"], ["--malloc", "reuse"]):
        assert config_module.setup(get_args_parser().parse_args(["--device", "cpu", *flags])).malloc_reuse
    assert calls == ["tuner", "setup", "setup"]
