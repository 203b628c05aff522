"""The training loop: epochs of steps, the evaluation and snapshot cadence, TensorBoard, saves, stop
signals, --time-budget planning, and the run's last line."""

from __future__ import annotations

import datetime
import os
import signal
import sys
import time

import torch
from tqdm import tqdm

from libs import BACKEND_DESCRIPTION
from training import PROG
from training import distributed as du
from training.config import TrainConfig
from training.curves import Curves
from training.data import TrainData
from training.evaluation import evaluate, log_training_images
from training.model import Network
from training.schedule import evaluation_due, plan_iterations, poly_lr, snapshot_due
from training.signals import StopSignals
from training.snapshots import (
    SaveError,
    Snapshots,
    capture_rng_state,
    planned_iterations,
    restore_training_state,
    training_state,
)
from training.step import DataError, NonFiniteLossError, StepInfo, train_one_epoch
from utils import recipe
from utils.cpu_defaults import cpu_defaults
from utils.device import autocast


def process_age() -> float:
    """Seconds since this process started (Linux; elsewhere 0: since the caller asked)."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22, after the name
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0


class Trainer:
    """The training loop and what it changes as it goes: the position, the planned epochs, the best
    result, the saves."""

    def __init__(self, cfg: TrainConfig, data: TrainData, net: Network, snapshots: Snapshots) -> None:
        self.cfg, self.data, self.net, self.snapshots = cfg, data, net, snapshots
        self.device = cfg.device
        self.iters_per_epoch = data.iters_per_epoch
        self.epochs = cfg.epochs  # None until --time-budget has fixed it (plan_schedule)
        self.total_iters: int | None = self.epochs * self.iters_per_epoch if self.epochs else None
        self.started = time.perf_counter() - process_age()  # --time-budget counts from here
        self.step_seconds: list[float] = []
        # --time-budget: re-plan at every epoch end from what the run has measured so far.
        self.replanning = False
        self.timed = {"eval": None, "save": None}  # seconds of the latest evaluation and save
        self.step_s = 0.0  # wall time per step of the latest whole epoch (or of the timed steps)
        self.epoch_started = (0.0, 0)  # when the current epoch's steps began, and at which iteration
        self.iteration = cfg.start_epoch * self.iters_per_epoch  # steps done over the whole run
        self.best: dict = {"mean_iou": -1.0, "epoch": -1, "split": None}
        self.signals = StopSignals(PROG)
        self.stop_signal = 0  # the signal every process agreed to stop on
        self.writer = None
        self.bar = None
        self.tuning = ""  # what --tune decided, for TensorBoard (training.tune)

    # ---- state
    def restore(self, state: dict | None, path: str | None) -> None:
        """Continue from a training state (training.snapshots.restore_training_state), or start."""
        cfg = self.cfg
        if state is None:
            torch.manual_seed(du.derive_seed(cfg.random_seed, "dropout", cfg.rank))
            return
        planned = planned_iterations(state, self.iters_per_epoch) if cfg.time_budget is not None else None
        if planned:  # the schedule the budget fixed
            self.total_iters = planned
            self.epochs = -(-planned // self.iters_per_epoch)
        self.iteration, best = restore_training_state(
            state,
            path,
            optimizer=self.net.optimizer,
            scaler=self.net.scaler,
            device=self.device,
            seed=cfg.random_seed,
            rank=cfg.rank,
            world_size=cfg.world_size,
            iters_per_epoch=self.iters_per_epoch,
            total_iters=self.total_iters,
        )
        self.best = best or self.best

    def save_last(self) -> None:
        if self.writer is not None:
            self.writer.flush()  # best effort: a kill still loses what the writer's queue holds
        cfg = self.cfg
        rng = du.all_gather_objects(capture_rng_state(self.device))  # every process's, for an exact resume
        schedule = {
            "base_lr": cfg.learning_rate,
            "power": cfg.power,
            "total_iters": self.total_iters,
            "iters_per_epoch": self.iters_per_epoch,
            "epochs": self.epochs,
        }
        state = training_state(
            self.net.model,
            self.net.optimizer,
            self.net.scaler,
            epoch=self.iteration // self.iters_per_epoch,
            iteration=self.iteration,
            schedule=schedule,
            rng=rng,
            best=self.best,
            args=cfg.record(),
        )
        tick = time.perf_counter()
        with self.signals.saving():
            self.snapshots.save_last(state)
        self.timed["save"] = time.perf_counter() - tick

    # ---- callbacks of train_one_epoch
    def lr_at(self, iteration: int) -> float:
        if self.total_iters is None:  # the timing steps of --time-budget: poly's start
            return self.cfg.learning_rate
        return poly_lr(self.cfg.learning_rate, iteration, self.total_iters, self.cfg.power)

    def on_step(self, info: StepInfo) -> None:
        cfg, it = self.cfg, info.iteration
        self.iteration = it
        self.step_seconds.append(info.seconds)
        rate = info.images.shape[0] * cfg.world_size / max(info.seconds, 1e-9)
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{info.loss:.3f}", lr=f"{info.lr:.2e}", img_s=f"{rate:.1f}", refresh=False)
        if self.writer is not None and it % cfg.log_every == 0:
            self.writer.add_scalar("loss", info.loss, it)
            self.writer.add_scalar("learning_rate", info.lr, it)
            self.writer.add_scalar("images_per_second", rate, it)
        if self.writer is not None and it % cfg.image_every == 0:
            log_training_images(self.writer, info, cfg.save_num_images, self.data.label_set)
        # The epoch's last step is saved at the epoch end, after its evaluation.
        if cfg.save_every and it % cfg.save_every == 0 and it % self.iters_per_epoch != 0:
            self.save_last()
        ipe = self.iters_per_epoch
        if self.replanning and it > (self.epochs - 1) * ipe and it % ipe:
            # The last epoch: plan again after each step, from its own steps once a few have run,
            # so that the end the budget set holds even where this epoch runs faster or slower.
            steps = it - self.epoch_started[1]
            step_s = (time.perf_counter() - self.epoch_started[0]) / steps if steps >= 5 else self.step_s
            self.replan(it // ipe, step_s)

    def should_stop(self) -> bool:
        """Did any process get a stop signal, or has a --time-budget run reached its planned end?
        Asked by every process at the same points."""
        self.stop_signal = du.max_over_processes(self.signals.signum, self.device)
        planned_end = self.replanning and self.iteration >= (self.total_iters or 0)
        return self.stop_signal > 0 or planned_end

    # ---- epochs
    def train_epoch(self, epoch: int, stop_at: int | None = None) -> bool:
        """One epoch (or what is left of it), its evaluation and saves; False if it was cut short
        (--max-iters, a stop signal, or ``stop_at`` steps done in all)."""
        cfg, data = self.cfg, self.data
        epoch_start = time.perf_counter()
        self.epoch_started = (epoch_start, self.iteration)
        data.sampler.set_epoch(epoch, self.iteration - epoch * self.iters_per_epoch)
        data.generator.manual_seed(du.derive_seed(cfg.random_seed, "loader", epoch, cfg.rank))
        self.bar.set_description(f"epoch {epoch + 1}/{self.epochs or '?'}")
        stats = train_one_epoch(
            self.net.train_model,
            self.net.optimizer,
            data.loader,
            self.device,
            iteration=self.iteration,
            lr_at=self.lr_at,
            amp=cfg.amp,
            scaler=self.net.scaler,
            channels_last=cfg.channels_last,
            ignore_label=cfg.ignore_label,
            stop_at=min(filter(None, (cfg.max_iters, stop_at)), default=None),
            on_step=self.on_step,
            should_stop=self.should_stop,
        )
        if self.replanning and stats.iterations and self.iteration == (epoch + 1) * self.iters_per_epoch:
            # The epoch's wall time per step: data loading, logging and the loader's start included.
            self.replan(epoch, (time.perf_counter() - epoch_start) / stats.iterations)
        epoch_end = (epoch + 1) * self.iters_per_epoch
        if self.total_iters is not None:
            epoch_end = min(epoch_end, self.total_iters)  # the last epoch of a --time-budget run
        if self.iteration < epoch_end:  # --max-iters, a stop signal or the steps --time-budget times
            return False
        line = (
            f"epoch {epoch + 1}/{self.epochs}  iter {self.iteration}/{self.total_iters}  "
            f"loss {stats.mean_loss:.4f}  lr {stats.last_lr:.3e}  {stats.images_per_second:.2f} img/s  "
            f"{datetime.timedelta(seconds=round(time.perf_counter() - epoch_start))}"
        )
        if data.eval_sets and evaluation_due(epoch, self.epochs, cfg.eval_every):
            tick = time.perf_counter()
            results = evaluate(self.net.model, data.eval_sets, cfg, self.writer, epoch, data.label_set)
            self.timed["eval"] = time.perf_counter() - tick
            line += "  " + "  ".join(f"{split} mIoU {r['mean_iou']:.2f}" for split, r in results.items())
            first = next(iter(results))  # val, unless it is missing
            if results[first]["mean_iou"] > self.best["mean_iou"]:
                self.best = {"mean_iou": results[first]["mean_iou"], "epoch": epoch, "split": first}
                self.snapshots.save_best(self.net.model)
                line += "  (best)"
        if snapshot_due(epoch, self.epochs, cfg.snapshot_every):
            self.snapshots.save_epoch(self.net.model, epoch)
        self.save_last()
        if du.is_main_process():
            (self.bar.write if not self.bar.disable else print)(line)
            sys.stdout.flush()
        return True

    def fit(self) -> int:
        """Train to the end of the schedule, --max-iters or a stop signal; the exit status."""
        if self.total_iters is not None and self.iteration >= self.total_iters:
            du.log(
                f"nothing to do: the training state is at iteration {self.iteration} of {self.total_iters}, "
                f"the run is complete (--resume none starts anew)"
            )
            return 0
        run_start = time.perf_counter()
        try:
            # From the first line on, a stop signal is a clean stop (the last step is saved).
            with self.signals:
                if self.iteration:
                    du.log(
                        f"starting at epoch {self.iteration // self.iters_per_epoch}, iteration "
                        f"{self.iteration} (lr {self.lr_at(self.iteration):.3e})"
                    )
                if du.is_main_process():
                    # purge_step hides what an interrupted run logged after its last save.
                    self.writer = Curves(
                        self.cfg.snapshot_dir, self.iteration + 1 if self.iteration else None, du.warn
                    )
                    self.writer.add_text("label_set", self.data.label_set.summary(), self.iteration)
                    if self.tuning:
                        self.writer.add_text("tuning", self.tuning, self.iteration)
                self.bar = tqdm(
                    total=self.total_iters,
                    initial=self.iteration,
                    unit="it",
                    dynamic_ncols=True,
                    disable=not (du.is_main_process() and sys.stderr.isatty()),
                )
                if self.total_iters is None:
                    self.plan_schedule()
                self.run_epochs()
                if self.stop_signal:  # this step is done: save it before going
                    if self.snapshots.last_saved != self.iteration:
                        self.save_last()
                    raise KeyboardInterrupt
        except KeyboardInterrupt:  # a stop signal, or a second one that abandoned the step
            return self.stopped_by_signal()
        except NonFiniteLossError as exc:
            return self.stopped_by_nan(exc)
        except DataError as exc:
            return self.stopped_by_data(exc)
        except SaveError as exc:
            self._close_bar()
            print(f"{PROG}: error: {exc}", file=sys.stderr, flush=True)
            return 1
        finally:
            if self.writer is not None:
                self.writer.close()
        self.bar.close()
        self.report(datetime.timedelta(seconds=round(time.perf_counter() - run_start)))
        return 0

    def run_epochs(self) -> None:
        epoch = self.iteration // self.iters_per_epoch
        while epoch < (self.epochs or 0):  # a --time-budget run re-plans self.epochs as it goes
            if self.cfg.max_iters is not None and self.iteration >= self.cfg.max_iters:
                break
            # A re-planning run ends where its latest plan says (should_stop), not at a fixed step.
            stop_at = None if self.replanning else self.total_iters
            if self.should_stop() or not self.train_epoch(epoch, stop_at=stop_at):
                break
            epoch += 1

    def stopped_by_signal(self) -> int:
        if self.bar is not None:
            self.bar.close()
        signum = self.signals.signum or signal.SIGINT
        if du.launched_rank() == 0:  # every rank stopped at the same step; one says so
            print(
                f"{PROG}: interrupted by {signal.Signals(signum).name}; {self.snapshots.where()}: run the "
                f"same command again to continue from there",
                file=sys.stderr,
                flush=True,
            )
        return 128 + signum

    def _close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def stopped_by_data(self, exc: DataError) -> int:
        """A picture or label went bad after the start-up check: the weights are the last step's, so
        they are saved (if this run has not saved that step yet) before the one-line error."""
        self._close_bar()
        where = "no training state was saved by this run"
        if self.iteration:
            try:
                if self.snapshots.last_saved != self.iteration:
                    self.save_last()
                where = self.snapshots.where()
            except SaveError as save_exc:
                where = f"the last good state could not be saved ({save_exc})"
        if str(exc).startswith("DataLoader worker"):  # killed, most often by the kernel's OOM killer
            hint = "fewer --workers or a smaller --batch-size need less memory"
        else:
            hint = (
                f"once the data is whole again (python -m dataset.check {self.cfg.data_dir} names bad files)"
            )
        print(
            f"{PROG}: error: {exc}; {where}; run the same command again to continue: {hint}",
            file=sys.stderr,
            flush=True,
        )
        return 1

    def stopped_by_nan(self, exc: NonFiniteLossError) -> int:
        if self.bar is not None:
            self.bar.close()
        where = (
            f"{self.snapshots.last_path} (saved after iteration {self.snapshots.last_saved}) is the "
            f"last good state"
            if self.snapshots.last_saved is not None
            else "no training state was saved by this run"
        )
        hint = "lower --learning-rate" + (" or try --amp off" if self.cfg.amp != "off" else "")
        print(
            f"{PROG}: error: {exc}; stopped before updating the weights. {where}; {hint}.",
            file=sys.stderr,
            flush=True,
        )
        return 1

    def plan_schedule(self) -> None:
        """--time-budget: time the first steps of epoch 0, then plan how many iterations fit.

        The timed steps are real training steps (at the base LR, where poly starts); the first
        two are warm-up and not counted. The plan counts every step, evaluation (estimated from a
        forward pass until one has run) and save (the first last.pth, timed here) the run will
        make, and the budget counts from the process start. It is made again at every epoch end
        from the epoch's measured wall time per step, and in the last epoch after every step
        (:meth:`replan`), so a run whose steps speed up or slow down still ends on time; the last
        epoch may be partial.
        """
        cfg, ipe = self.cfg, self.iters_per_epoch
        epoch = self.iteration // ipe
        # Within the epoch where it can: its end (evaluation, snapshots) wants the plan made.
        timing_steps = max(1, min(recipe.TIMING_STEPS, ipe - self.iteration % ipe - 1))
        self.epochs = epoch + 2  # provisional: the epoch being timed is not the last
        self.train_epoch(epoch, stop_at=self.iteration + timing_steps)
        if self.stop_signal or not self.step_seconds:
            self.epochs = None  # stopped while timing: nothing is planned, nothing more runs
            return
        counted = self.step_seconds[2:] or self.step_seconds[-1:]
        step_s = sorted(counted)[len(counted) // 2]
        self.timed["eval"] = self.time_evaluation()
        self.epochs, self.total_iters = epoch + 1, (epoch + 1) * ipe  # provisional, for the timed save
        self.save_last()
        left = self.replan(epoch, step_s, saves_first=1)
        self.save_last()  # the plan, for --resume
        self.replanning = True
        du.log(
            f"--time-budget {cfg.time_budget:g} min: {step_s:.2f} s per step (median of {len(counted)} "
            f"timed), ~{self.timed['eval']:.0f} s per evaluation, {self.timed['save']:.1f} s per save, "
            f"{left:.0f} s left: {self.total_iters} iterations = {self.total_iters / ipe:.1f} epochs "
            f"(poly LR over them), planned again after every epoch"
        )

    def replan(self, next_end: int, step_s: float, saves_first: int = 0) -> float:
        """Fit the rest of the run into what is left of --time-budget: set the total iterations
        (and the poly schedule over them) from ``step_s`` and the latest evaluation and save
        times; the seconds that were left. ``next_end`` is the first epoch whose end is still to
        come; ``saves_first`` saves happen before the steps do. Every process takes rank 0's plan,
        so all stop at the same step."""
        cfg = self.cfg
        self.step_s = step_s
        save_s = self.timed["save"] or 0.0
        left = cfg.time_budget * 60 - (time.perf_counter() - self.started) - saves_first * save_s
        plan = plan_iterations(
            left - recipe.EXIT_SECONDS,
            iters_per_epoch=self.iters_per_epoch,
            done=self.iteration,
            next_end=next_end,
            step_s=step_s,
            eval_s=(self.timed["eval"] or 0.0) if self.data.eval_sets else 0.0,
            save_s=save_s,
            eval_every=cfg.eval_every,
            snapshot_every=cfg.snapshot_every,
        )
        self.total_iters = du.all_gather_objects(plan[0])[0]
        self.epochs = -(-self.total_iters // self.iters_per_epoch)
        self.bar.reset(total=self.total_iters)
        self.bar.update(self.iteration)
        if self.writer is not None:
            self.writer.add_scalar("planned_iterations", self.total_iters, self.iteration)
        return left

    def time_evaluation(self) -> float:
        """Seconds one evaluation of every split takes, from two timed forward passes of one image."""
        cfg = self.cfg
        images = sum(len(dataset) for dataset, _ in self.data.eval_sets.values()) / cfg.world_size
        if not images:
            return 0.0
        x = torch.zeros(1, 3, *cfg.eval_size, device=self.device)
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        model = self.net.model
        model.eval()
        with torch.no_grad(), autocast(self.device.type, cfg.amp):
            model(x)
            tick = time.perf_counter()
            model(x)
            forward_s = time.perf_counter() - tick
        model.train()
        return images * forward_s * 1.2  # + the warp back, the scoring and the pictures (a guess)

    def report(self, elapsed: datetime.timedelta) -> None:
        note = str(elapsed)
        if self.cfg.time_budget is not None:  # since the process started, as the budget counts
            spent = time.perf_counter() - self.started
            budget = self.cfg.time_budget * 60
            note = f"{elapsed} ({spent:.1f} s of the {budget:g} s budget since start)"
        if self.iteration < self.total_iters:  # --max-iters
            if self.snapshots.last_saved != self.iteration:
                self.save_last()
            # A short run may stop before its first evaluation: say what to deploy instead of best.pth.
            no_best = (
                ""
                if os.path.isfile(self.snapshots.best_path)
                else f"; no evaluation has run yet, so there is no {self.snapshots.best_path}: export.py, "
                f"evaluate.py and parse_images.py take {self.snapshots.last_path} as well"
            )
            du.log(
                f"stopped at iteration {self.iteration} of {self.total_iters} (--max-iters) after {note}; "
                f"{self.snapshots.last_path} saved: run again (--resume is the default) to continue{no_best}"
            )
        elif self.best["epoch"] >= 0:
            du.log(
                f"done in {note}: best {self.best['split']} mean IU {self.best['mean_iou']:.2f} after "
                f"epoch {self.best['epoch'] + 1} ({self.snapshots.best_path})"
            )
        else:
            du.log(f"done in {note}")

    def log_setup(self) -> None:
        """What the run is about to do, in a few lines."""
        cfg, data, net = self.cfg, self.data, self.net
        n_params = sum(p.numel() for p in net.model.parameters()) / 1e6
        du.log(f"label set: {data.label_set.summary()}")
        warning = self.snapshots.space_warning(net.model) if du.is_main_process() else None
        if warning:
            du.warn(warning)
        du.log(f"DFPnet: {n_params:.2f} M parameters, {net.init_note}")
        # Synchronised layers keep the in-place Function under DDP whatever --inplace-abn says.
        abn_mode = "in place" if net.inplace or cfg.distributed else "under plain autograd"
        du.log(
            f"device {cfg.device} x {cfg.world_size} process(es), amp {cfg.amp}, channels-last "
            f"{cfg.channels_last}, compile {cfg.compile}, activation checkpointing "
            f"{cfg.activation_checkpointing}{', SGD update in backward' if cfg.update_in_backward else ''}, "
            f"InPlace-ABN {abn_mode}, {BACKEND_DESCRIPTION}"
        )
        if cfg.device.type == "cpu":
            reuse = (
                "glibc malloc keeps freed memory for reuse (--malloc system to turn off)"
                if cfg.malloc_reuse
                else "system malloc"
            )
            du.log(f"{cpu_defaults().describe()}; {reuse}")
        ipe = data.iters_per_epoch
        length = (
            f"{self.epochs} epochs = {self.total_iters} iterations"
            if self.epochs
            else f"epochs to fit --time-budget {cfg.time_budget:g} min"
        )
        du.log(
            f"training {'+'.join(data.splits)}: {len(data.dataset)} images, batch {cfg.batch_size} x "
            f"{cfg.world_size}, {ipe} iterations/epoch x {length}; "
            f"evaluating {', '.join(data.eval_sets) or 'nothing'}"
        )
