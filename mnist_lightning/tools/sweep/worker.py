"""A sweep's workers and trials: each trial a `fit` of the project's LightningCLI in the trial's own run folder,
pruned by Optuna, with Ctrl-C and dead workers leaving the study consistent."""

from __future__ import annotations

import difflib
import json
import logging
import multiprocessing
import os
import signal
import warnings
from pathlib import Path
from typing import Any

import optuna
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException
from optuna.trial import FrozenTrial, TrialState
from optuna_integration import PyTorchLightningPruningCallback

from mnist_lightning import compat, interrupts, threads
from mnist_lightning.cli import build_cli
from mnist_lightning.defaults import silence_third_party_noise
from mnist_lightning.errors import ArgumentError, TrainingDiverged, UserError, one_line_errors
from mnist_lightning.files import process_start
from mnist_lightning.tools.sweep.report import note, params_text, shown
from mnist_lightning.tools.sweep.study import (
    CLAIMED,
    HOST,
    PROCESS,
    WORKER,
    Sweep,
    open_study,
    reap_dead_trials,
    retry,
)


def silence_sweep_noise() -> None:
    """Keep a sweep's output to one line per trial: Lightning's start-up notes and model summary repeat every trial,
    and Optuna's own lines for failed trials carry a traceback the sweep replaces with the trial's error."""
    silence_third_party_noise()
    # Trials hand LightningCLI their arguments, which it warns about when sys.argv holds others (the sweep's).
    warnings.filterwarnings("ignore", message=compat.CLI_ARGS_BESIDE_ARGV)
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
    except KeyboardInterrupt:  # pass the signal on (a Ctrl-C reached them already), and let them stop their trials
        for process in processes:
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, interrupts.received() or signal.SIGINT)
        for process in processes:
            process.join()
        raise
    return [
        f"worker {index} " + (f"was killed by signal {-code}" if code < 0 else f"exited with status {code}")
        for index, code in enumerate(process.exitcode for process in processes)
        if code != 0
    ]


def worker_process(sweep: Sweep, index: int, count: int) -> None:
    """Entry point of a spawned worker: its share of the cores; stopped by a signal, it exits with 128 + its number
    (the sweep's own process says what happened)."""
    silence_sweep_noise()
    torch.set_num_threads(max(1, threads.usable_cpus() // count))  # then ThreadsFollowLoad, in each trial
    with one_line_errors(), interrupts.handled(say=False):
        run_worker(sweep, index)


def run_worker(sweep: Sweep, index: int) -> None:
    """Run trials until the study holds `n_trials` COMPLETE, PRUNED or RUNNING ones."""
    study = open_study(sweep)
    study.sampler = sweep.config.make_sampler()
    study.pruner = sweep.config.make_pruner()
    prefix = f"[worker {index}] " if sweep.workers > 1 else ""
    limit = TrialLimits(sweep.n_trials)
    objective = Objective(sweep)
    try:
        study.optimize(
            objective,
            catch=(TrainingDiverged, SurplusTrial, DuplicateTrial),
            # The running trials count, so that workers stop together at n_trials rather than each starting one
            # more; dead workers' trials are failed (and retried) first, so that they do not count.
            callbacks=[
                lambda study, trial: reap_dead_trials(study),
                optuna.study.MaxTrialsCallback(sweep.n_trials, states=CLAIMED),
                TrialPrinter(sweep, prefix),
                limit,
            ],
        )
    except KeyboardInterrupt:
        if objective.running is not None:
            stopped = next(t for t in study.get_trials(deepcopy=False) if t.number == objective.running)
            if stopped.state == TrialState.FAIL:  # Optuna made it FAIL (not one that ended before the signal)
                retry(study, stopped, "it was interrupted")
        raise
    if limit.problem:
        raise (TrainingDiverged if limit.failures else ArgumentError)(limit.problem)


class SurplusTrial(Exception):
    """Two workers asked for the study's last trial at the same moment; the later one does not run."""


class DuplicateTrial(Exception):
    """The sampler proposed parameters that the study has already tried (a space of choices only can run out)."""


class Objective:
    """One trial: a `fit` with the trial's values of the search space, scored by the sweep's metric."""

    def __init__(self, sweep: Sweep) -> None:
        self.sweep = sweep
        self.running: int | None = None  # the number of the trial this worker runs

    def __call__(self, trial: optuna.Trial) -> float:
        self.running = None
        process = {"host": HOST, "pid": os.getpid(), "started": process_start(os.getpid())}
        trial.set_user_attr(PROCESS, process)  # first: a kill from here on leaves a trial the next run reaps
        values = [p.suggest(trial) for p in self.sweep.config.space]  # a queued retry's: those it retries
        trials = [t for t in trial.study.get_trials(deepcopy=False) if t.number != trial.number]
        if sum(t.state in CLAIMED and t.number < trial.number for t in trials) >= self.sweep.n_trials:
            trial.study.stop()
            trial.set_user_attr("error", f"not run: the study already had {self.sweep.n_trials} trials")
            if "retry_of" in trial.user_attrs:  # a queued retry stays queued, for a run with a larger --n_trials
                trial.study.enqueue_trial(trial.params, user_attrs=retry_attributes(trial.user_attrs))
            raise SurplusTrial
        # Every trial that ran, runs or is queued; not those that never ran (surplus or duplicate ones).
        tried = [t for t in trials if t.state != TrialState.FAIL or WORKER in t.user_attrs]
        same = next((t.number for t in tried if t.params == trial.params), None)
        if same is not None and "retry_of" not in trial.user_attrs:
            trial.set_user_attr("error", f"not run: the parameters of trial {same}")
            raise DuplicateTrial
        trial.set_user_attr(WORKER, process)
        self.running = trial.number
        flags = [p.flag(value) for p, value in zip(self.sweep.config.space, values, strict=True)]
        # One line per trial: no model summary each time (unless the fit config asks for one with a ModelSummary
        # callback, which Lightning refuses beside this flag), nor progress bars of several workers on one line.
        summary = "ModelSummary" in json.dumps(self.sweep.fixed.get("trainer.callbacks"))
        progress = [] if summary else ["--trainer.enable_model_summary=false"]
        progress += ["--trainer.enable_progress_bar=false"] if self.sweep.workers > 1 else []
        # A pruned or stopped trial is not resumed: no last.ckpt of the moment it stopped.
        args = [
            *self.sweep.fit_args,
            *flags,
            *progress,
            "--test_after_fit=false",
            "--last_checkpoint.save_on_exception=false",
        ]
        monitor = TrialMonitor(trial, monitor=self.sweep.config.metric, sweep_file=self.sweep.config.path)
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
        if self.sweep.config.metric not in metrics:  # no validation ran (--trainer.limit_val_batches 0, say)
            raise never_logged(self.sweep.config.metric, metrics, self.sweep.config.path)
        return float(metrics[self.sweep.config.metric])


def never_logged(metric: str, metrics: dict[str, Any], path: Path) -> ArgumentError:
    if metric.startswith("val/") and not any(name.startswith("val/") for name in metrics):
        return ArgumentError(
            f"metric {metric} of {path} is not logged by the trials: they ran no validation; let them validate "
            "(--trainer.check_val_every_n_epoch, --trainer.limit_val_batches)"
        )
    close = difflib.get_close_matches(metric, list(metrics), n=1)
    hint = f"did you mean {close[0]}? " if close else ""
    return ArgumentError(
        f"metric {metric} of {path} is not logged by the trials: {hint}the logged metrics are "
        f"{', '.join(sorted(metrics)) or 'none (no validation ran)'}; correct metric: in {path}"
    )


def retry_attributes(user_attrs: dict[str, Any]) -> dict[str, Any]:
    return {key: user_attrs[key] for key in ("retry_of", "attempt", "why") if key in user_attrs}


class TrialMonitor(PyTorchLightningPruningCallback):
    """Optuna's pruning callback, which also puts the trial's values in TensorBoard's HPARAMS tab and notes in the
    trial the epochs it ran and its best checkpoint."""

    def __init__(self, trial: optuna.Trial, monitor: str, sweep_file: Path) -> None:
        super().__init__(trial, monitor)
        self.trial, self.monitor_name, self.sweep_file, self.epochs = trial, monitor, sweep_file, 0

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        super().on_fit_start(trainer, pl_module)
        if trainer.logger is not None:
            # Without metrics: given one, Lightning's loggers also log it as a value (0 at step 0, in every curve of
            # the metric); the dashboard's Hparams panel declares the metric columns.
            trainer.logger.log_hyperparams(self.trial.params)

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if not trainer.sanity_checking:
            self.epochs = trainer.current_epoch + 1
            metrics = trainer.callback_metrics
            if self.monitor_name not in metrics:
                # By the second epoch's validation, the first epoch has logged all its metrics (the training ones
                # after its validation): a metric still missing is misspelt; stop there, not after a whole trial.
                if trainer.current_epoch >= 1:
                    raise never_logged(self.monitor_name, metrics, self.sweep_file)
                return  # (Optuna's callback would warn that it cannot prune on it)
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
        if WORKER not in trial.user_attrs:  # a surplus or duplicate trial, never run
            return
        seconds = trial.duration.total_seconds() if trial.duration else 0.0
        values = params_text(trial)
        outcome = f"{self.sweep.config.metric}={shown(trial.value)}" if trial.value is not None else ""
        epochs = trial.user_attrs.get("epochs", 0)
        parts = [f"{self.prefix}trial {trial.number}", trial.state.name, outcome, f"{epochs} epochs {seconds:.0f} s"]
        parts += [values, note(trial)]
        print("  ".join(part for part in parts if part), flush=True)


class TrialLimits:
    """An Optuna callback that stops a worker whose last `limit` trials all failed (a search space where every trial
    diverges) or all proposed parameters already tried (a space of choices the study has exhausted), since neither
    counts towards n_trials; `problem` then says which."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.failures = self.duplicates = 0
        self.problem = ""

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        duplicate = trial.user_attrs.get("error", "").startswith("not run: the parameters of trial")
        self.duplicates = self.duplicates + 1 if duplicate else 0
        self.failures = self.failures + 1 if trial.state == TrialState.FAIL and not duplicate else 0
        if self.failures >= self.limit:
            self.problem = f"the last {self.limit} trials of this worker all failed: narrow the search space"
        elif self.duplicates >= max(self.limit, 20):
            self.problem = (
                f"the sampler proposed only parameters the study has tried, {self.duplicates} times in a row: "
                "the search space is exhausted; widen it, or lower --n_trials"
            )
        if self.problem:
            study.stop()
