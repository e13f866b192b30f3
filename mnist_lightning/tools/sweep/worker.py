"""A sweep's workers and trials: each trial a `fit` of the project's LightningCLI in the trial's own run folder,
pruned by Optuna, with Ctrl-C and dead workers leaving the study consistent."""

from __future__ import annotations

import logging
import multiprocessing
import os
import warnings
import zlib
from pathlib import Path
from typing import Any

import optuna
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException
from optuna.trial import FrozenTrial, TrialState
from optuna_integration import PyTorchLightningPruningCallback

from mnist_lightning.cli import build_cli
from mnist_lightning.defaults import silence_third_party_noise
from mnist_lightning.errors import ArgumentError, TrainingDiverged, UserError, one_line_errors
from mnist_lightning.files import process_start
from mnist_lightning.tools.sweep.study import CLAIMED, HOST, JOURNAL_FILE, Sweep, open_study


def silence_sweep_noise() -> None:
    """Keep a sweep's output to one line per trial: Lightning's start-up notes and model summary repeat every trial,
    and Optuna's own lines for failed trials carry a traceback the sweep replaces with the trial's error."""
    silence_third_party_noise()
    # Trials hand LightningCLI their arguments, which it warns about when sys.argv holds others (the sweep's).
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    optuna.logging.disable_default_handler()
    optuna_logger = optuna.logging.get_logger("optuna")
    if OPTUNA_HANDLER not in optuna_logger.handlers:
        optuna_logger.addHandler(OPTUNA_HANDLER)


OPTUNA_HANDLER = logging.StreamHandler()
OPTUNA_HANDLER.addFilter(lambda record: not record.getMessage().startswith("Trial "))


def run_workers(sweep: Sweep, count: int) -> list[str]:
    """Run the trials: in this process for one worker, else in `count` spawned processes that share the cores.
    Returns a line for each worker that ended with an error."""
    if count == 1:
        run_worker(sweep, 0)
        return []
    context = multiprocessing.get_context("spawn")  # a fresh interpreter each: no forked threads or torch state
    processes = [context.Process(target=worker_process, args=(sweep, index, count)) for index in range(count)]
    for process in processes:
        process.start()
    try:
        for process in processes:
            process.join()
    except KeyboardInterrupt:  # the workers got Ctrl-C too: let them mark their trials FAIL
        for process in processes:
            process.join()
        raise
    if any(process.exitcode == 130 for process in processes):
        raise KeyboardInterrupt
    return [
        f"worker {index} " + (f"was killed by signal {-code}" if code < 0 else f"exited with status {code}")
        for index, code in enumerate(process.exitcode for process in processes)
        if code != 0
    ]


def worker_process(sweep: Sweep, index: int, count: int) -> None:
    """Entry point of a spawned worker: its share of the cores, and Ctrl-C as exit status 130."""
    silence_sweep_noise()
    torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // count))
    with one_line_errors():
        try:
            run_worker(sweep, index)
        except (KeyboardInterrupt, SIGTERMException):
            raise SystemExit(130) from None


def run_worker(sweep: Sweep, index: int) -> None:
    """Run trials until the study holds `n_trials` COMPLETE, PRUNED or RUNNING ones."""
    study = open_study(sweep)
    # Workers of one command differ by index; the same command on several machines (a shared --storage) also needs
    # a seed of its own per process, and such a study's order depends on timing anyway.
    offset = index if sweep.storage.endswith(JOURNAL_FILE) else index + zlib.crc32(f"{HOST}:{os.getpid()}".encode())
    study.sampler = sweep.config.make_sampler(offset)
    study.pruner = sweep.config.make_pruner()
    prefix = f"[worker {index}] " if sweep.workers > 1 else ""
    failure_limit = FailureLimit(sweep.n_trials)
    study.optimize(
        Objective(sweep),
        catch=(TrainingDiverged, SurplusTrial),
        # The running trials count, so that workers stop together at n_trials rather than each starting one more;
        # a trial that later fails leaves its worker to run another.
        callbacks=[
            optuna.study.MaxTrialsCallback(sweep.n_trials, states=CLAIMED),
            TrialPrinter(sweep, prefix),
            failure_limit,
        ],
    )
    if failure_limit.stopped:
        raise TrainingDiverged(f"the last {sweep.n_trials} trials of this worker all failed: narrow the search space")


class SurplusTrial(Exception):
    """Two workers asked for the study's last trial at the same moment; the later one does not run."""


class Objective:
    """One trial: a `fit` with the trial's values of the search space, scored by the sweep's metric."""

    def __init__(self, sweep: Sweep) -> None:
        self.sweep = sweep

    def __call__(self, trial: optuna.Trial) -> float:
        earlier = [t for t in trial.study.get_trials(deepcopy=False, states=CLAIMED) if t.number < trial.number]
        if len(earlier) >= self.sweep.n_trials:
            trial.study.stop()
            trial.set_user_attr("error", f"not run: the study already had {self.sweep.n_trials} trials")
            raise SurplusTrial
        trial.set_user_attr("worker", {"host": HOST, "pid": os.getpid(), "started": process_start(os.getpid())})
        flags = [p.flag(p.suggest(trial)) for p in self.sweep.config.space]
        progress = ["--trainer.enable_progress_bar=false"] if self.sweep.workers > 1 else []
        # A pruned or stopped trial is not resumed: no last.ckpt of the moment it stopped.
        args = [
            *self.sweep.fit_args,
            *flags,
            *progress,
            "--test_after_fit=false",
            "--last_checkpoint.save_on_exception=false",
        ]
        monitor = TrialMonitor(trial, monitor=self.sweep.config.metric)
        try:
            # Its config.yaml is an ordinary fit config: `fit --config` on it reproduces the trial.
            cli = build_cli(
                args, run_folder=self.sweep.trial_folder(trial.number), trainer_defaults={"callbacks": [monitor]}
            )
        except (SystemExit, KeyboardInterrupt, SIGTERMException) as e:
            # Lightning turns Ctrl-C into sys.exit(1), which Optuna does not catch: the trial would stay RUNNING.
            trial.set_user_attr("error", "stopped by Ctrl-C or a signal")
            raise KeyboardInterrupt from e
        except UserError as e:
            trial.set_user_attr("error", str(e))
            raise
        metrics = cli.trainer.callback_metrics
        if self.sweep.config.metric not in metrics:
            raise ArgumentError(
                f"metric {self.sweep.config.metric} of {self.sweep.config.path} was never logged; the logged metrics "
                f"are {', '.join(sorted(metrics))}"
            )
        return float(metrics[self.sweep.config.metric])


class TrialMonitor(PyTorchLightningPruningCallback):
    """Optuna's pruning callback, which also puts the trial's values in TensorBoard's HPARAMS tab and notes in the
    trial the epochs it ran and its best checkpoint."""

    def __init__(self, trial: optuna.Trial, monitor: str) -> None:
        super().__init__(trial, monitor)
        self.trial, self.monitor_name, self.epochs = trial, monitor, 0

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        super().on_fit_start(trainer, pl_module)
        if trainer.logger is not None:
            trainer.logger.log_hyperparams(self.trial.params, {self.monitor_name: 0})

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if not trainer.sanity_checking:
            self.epochs = trainer.current_epoch + 1
        super().on_validation_end(trainer, pl_module)

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        self._note(trainer)

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self._note(trainer)

    def _note(self, trainer: Any) -> None:
        self.trial.set_user_attr("epochs", self.epochs)
        checkpoint = trainer.checkpoint_callback
        if checkpoint is not None and checkpoint.best_model_path:
            self.trial.set_user_attr("checkpoint", str(Path(checkpoint.best_model_path).resolve()))


class TrialPrinter:
    """An Optuna callback that prints one line per finished trial."""

    def __init__(self, sweep: Sweep, prefix: str) -> None:
        self.sweep = sweep
        self.prefix = prefix

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if "worker" not in trial.user_attrs:  # a surplus trial, never run
            return
        seconds = trial.duration.total_seconds() if trial.duration else 0.0
        values = " ".join(f"{key}={value}" for key, value in trial.params.items())
        outcome = f"{self.sweep.config.metric}={trial.value:.4f}" if trial.value is not None else ""
        epochs = trial.user_attrs.get("epochs", 0)
        parts = [f"{self.prefix}trial {trial.number}", trial.state.name, outcome, f"{epochs} epochs {seconds:.0f} s"]
        parts += [values, trial.user_attrs.get("error", "")]
        print("  ".join(part for part in parts if part), flush=True)


class FailureLimit:
    """An Optuna callback that stops a worker whose last `limit` trials all failed (a search space where every
    trial diverges), since failed trials do not count towards n_trials."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.failures = 0
        self.stopped = False

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.failures = self.failures + 1 if trial.state == TrialState.FAIL else 0
        if self.failures >= self.limit:
            study.stop()
            self.stopped = True
