"""`python -m mnist_lightning sweep`: search hyperparameters with Optuna, each trial a `fit` of this project's
LightningCLI in its own run folder, `lightning_logs/<study>/trial_NNNN/`.

    python -m mnist_lightning sweep --config configs/sweep.yaml [--study NAME] [--storage URL] [--n_trials N]
        [--workers W] [--model.* / --data.* / --trainer.* overrides for every trial]

The study lives in Optuna's journal file in the study folder (or in `--storage postgresql://...`, which workers on
several machines can share). Re-running the same command continues it: finished trials are kept, trials whose
process died become FAIL, and the total stops at `n_trials` COMPLETE or PRUNED trials.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import multiprocessing
import os
import socket
import sys
import time
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState
from optuna_integration import PyTorchLightningPruningCallback

from mnist_lightning.cli import MNISTLightningCLI, silence_third_party_noise
from mnist_lightning.data import MNISTDataModule
from mnist_lightning.errors import ArgumentError, TrainingDiverged, UserError, one_line_errors
from mnist_lightning.model import MNISTClassifier
from mnist_lightning.runs import LastCheckpoint
from mnist_lightning.sweep_report import report
from mnist_lightning.sweep_space import SweepConfig, check_keys, read_sweep_config

JOURNAL_FILE = "optuna-journal.log"
# RDB storage only: a trial whose worker has not beaten for GRACE_PERIOD seconds (killed, its machine gone) is FAIL.
HEARTBEAT_INTERVAL, GRACE_PERIOD = 10, 60
STORAGE_ATTEMPTS = 3
CLAIMED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
HOST = socket.gethostname()


@dataclass(frozen=True)
class Sweep:
    """Everything a worker needs (it is pickled for the spawned worker processes)."""

    config: SweepConfig
    study_name: str
    storage: str  # an SQLAlchemy URL, or the path of a journal file
    n_trials: int
    workers: int
    fit_args: tuple[str, ...]  # `fit --config BASE` and the user's overrides
    folder: Path  # lightning_logs/<study>: the trials' run folders, the summary, the plots

    def trial_folder(self, number: int) -> Path:
        return self.folder / f"trial_{number:04d}"


def main(args: list[str]) -> None:
    """Run `python -m mnist_lightning sweep ARGS`."""
    silence_sweep_noise()
    sweep = parse_sweep(args)
    study = open_study(sweep, check_identity=True)
    for number in fail_dead_trials(study):
        print(f"trial {number} was left RUNNING by a process that is gone: marked FAIL")
    claimed = len(study.get_trials(deepcopy=False, states=CLAIMED))
    print(f"Study {sweep.study_name}: {claimed} of {sweep.n_trials} trials done or running ({sweep.storage})")
    failed_workers: list[str] = []
    if claimed < sweep.n_trials:
        try:
            # No more workers than trials to run: each would start one, and the extra ones would not run.
            failed_workers = run_workers(sweep, min(sweep.workers, sweep.n_trials - claimed))
        except (KeyboardInterrupt, SIGTERMException):
            print(
                "\nStopped: the running trials are marked FAIL, finished ones are kept; re-run the same command to "
                "continue the study.",
                file=sys.stderr,
            )
            raise SystemExit(130) from None
    for number in fail_dead_trials(study):
        print(f"trial {number} was left RUNNING by a worker that died: marked FAIL")
    report(study, sweep)
    for line in failed_workers:
        print(f"error: {line}; re-run the same command to finish the study", file=sys.stderr)
    if failed_workers:
        raise SystemExit(1)


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


def parse_sweep(args: list[str]) -> Sweep:
    """The sweep's own flags; every other flag is a fit override, checked by LightningCLI before any trial runs."""
    parser = argparse.ArgumentParser(
        prog="python -m mnist_lightning sweep",
        allow_abbrev=False,
        description="Search hyperparameters with Optuna; any --model.*, --data.*, --trainer.* flag reaches every "
        "trial.",
    )
    parser.add_argument("--config", required=True, type=Path, help="the sweep file, e.g. configs/sweep.yaml")
    parser.add_argument("--study", help="study name (default: the sweep file's name)")
    parser.add_argument("--storage", help="postgresql://USER@HOST/DB (default: a journal file in the study folder)")
    parser.add_argument("--n_trials", type=int, help="COMPLETE + PRUNED trials to reach (default: the sweep file's)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes on this machine (default 1)")
    own, overrides = parser.parse_known_args(args)
    if own.workers < 1 or (own.n_trials is not None and own.n_trials < 1):
        raise ArgumentError("--workers and --n_trials must be positive integers")
    config = read_sweep_config(own.config)
    searched = {p.key for p in config.space}
    for flag in overrides:
        key = flag.removeprefix("--").split("=", 1)[0]
        if flag.startswith("--") and key in searched:
            raise ArgumentError(
                f"--{key} is searched by {own.config}: drop the flag, or remove {key} from search_space"
            )
    fit_args = ("fit", f"--config={config.fit}", *overrides)
    logs_root = check_fit_args(fit_args, config)
    study_name = own.study or own.config.stem
    if not study_name or "/" in study_name or study_name.startswith("."):
        raise ArgumentError(f"--study {study_name!r}: a study name must be a plain folder name")
    folder = logs_root / study_name
    return Sweep(
        config=config,
        study_name=study_name,
        storage=database_url(own.storage) if own.storage else str(folder / JOURNAL_FILE),
        n_trials=own.n_trials or config.n_trials,
        workers=own.workers,
        fit_args=fit_args,
        folder=folder,
    )


class FitArgsCheck(MNISTLightningCLI):
    """Parses a `fit` command line as the trials will, and stops there."""

    def before_instantiate_classes(self) -> None:
        pass

    def instantiate_classes(self) -> None:
        pass

    def after_instantiate_classes(self) -> None:
        pass

    def _run_subcommand(self, subcommand: str) -> None:
        pass


def check_fit_args(fit_args: tuple[str, ...], config: SweepConfig) -> Path:
    """Parse the trials' fit arguments with both ends of every range and every choice, so that a mistake stops the
    sweep once, before any trial; return the folder the study's folder goes in (lightning_logs)."""
    try:
        check = FitArgsCheck(
            MNISTClassifier,
            MNISTDataModule,
            seed_everything_default=42,
            args=list(fit_args),
            parser_kwargs={"exit_on_error": False},
        )
    except argparse.ArgumentError as e:
        raise ArgumentError(f"{' '.join(str(e).split())} (run `python -m mnist_lightning fit --help`)") from None
    fit = check.config.fit
    check_keys(config.space, [f"{section}.{key}" for section in ("model", "data") for key in fit[section].as_dict()])
    rounds = max(len(p.extremes()) for p in config.space)
    for i in range(rounds):
        values = [p.flag(p.extremes()[min(i, len(p.extremes()) - 1)]) for p in config.space]
        try:
            check.parser.parse_args([*fit_args, *values])
        except argparse.ArgumentError as e:
            raise ArgumentError(f"search_space in {config.path}: {' '.join(str(e).split())}") from None
    logger = fit.trainer.logger
    if not (hasattr(logger, "class_path") and logger.class_path.endswith("TensorBoardLogger")):
        raise ArgumentError(
            "a sweep logs each trial with TensorBoardLogger (lightning_logs/<study>/trial_NNNN): drop the "
            "--trainer.logger setting"
        )
    return Path(logger.init_args.save_dir) / logger.init_args.name


def make_storage(url_or_path: str) -> BaseStorage:
    """RDB storage with heartbeats for a URL, else Optuna's journal file, safe for several processes on one machine
    (Optuna's FAQ advises against SQLite for parallel work)."""
    if "://" not in url_or_path:
        Path(url_or_path).parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(url_or_path))
    for attempt in range(STORAGE_ATTEMPTS):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats are "experimental"
                return RDBStorage(url_or_path, heartbeat_interval=HEARTBEAT_INTERVAL, grace_period=GRACE_PERIOD)
        except ImportError as e:
            raise ArgumentError(
                f"--storage {url_or_path} needs a database driver that is not installed ({e}): "
                "pip install 'mnist-lightning[sweep]' installs psycopg2 for PostgreSQL"
            ) from None
        except Exception as e:  # SQLAlchemy's errors: a refused connection, a bad URL, a missing database
            # Processes that start on an empty database together all create Optuna's tables, and all but one fail;
            # a moment later the tables are there.
            if attempt + 1 < STORAGE_ATTEMPTS:
                time.sleep(1 + attempt)
                continue
            reason = " ".join(str(e).split("\n(Background")[0].split())
            raise ArgumentError(
                f"--storage {url_or_path} cannot be reached ({reason[:300]}): start the database server or fix the URL"
            ) from None
    raise AssertionError("unreachable")


def database_url(url: str) -> str:
    """`url` with the PostgreSQL driver that the sweep extra installs: SQLAlchemy 2.1 reads `postgresql://` as
    psycopg 3, which is not installed with it, and psycopg2 still is."""
    if url.startswith("postgresql://") and importlib.util.find_spec("psycopg") is None:
        return "postgresql+psycopg2://" + url.removeprefix("postgresql://")
    return url


def open_study(sweep: Sweep, check_identity: bool = False) -> optuna.Study:
    """Create the study, or load it; refuse one made with another search space or metric."""
    storage = make_storage(sweep.storage)
    try:  # loading first: on a journal, even a create_study that finds the study appends a line
        study = optuna.load_study(study_name=sweep.study_name, storage=storage)
    except KeyError:
        study = optuna.create_study(
            storage=storage, study_name=sweep.study_name, direction=sweep.config.direction, load_if_exists=True
        )
    if not check_identity:
        return study
    identity = sweep.config.identity()
    saved = {key: study.user_attrs[key] for key in identity if key in study.user_attrs}
    if not saved:
        for key, value in identity.items():
            study.set_user_attr(key, value)
    elif saved != identity:
        differ = [key for key in identity if saved.get(key) != identity[key]]
        raise ArgumentError(
            f"study {sweep.study_name} in {sweep.storage} was made with another {' and '.join(differ)} "
            f"({saved.get(differ[0])}): pass --study NEW_NAME for a new study, or restore {sweep.config.path}"
        )
    return study


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
        try:
            cli = TrialCLI(trial, self.sweep, [*self.sweep.fit_args, *flags, *progress, "--test_after_fit=false"])
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


class TrialCLI(MNISTLightningCLI):
    """The project's LightningCLI running one trial's `fit`: in `lightning_logs/<study>/trial_NNNN/`, pruned by
    Optuna, with the trial's values in TensorBoard's HPARAMS tab. Its config.yaml is an ordinary fit config."""

    def __init__(self, trial: optuna.Trial, sweep: Sweep, args: list[str]) -> None:
        self.trial = trial
        self.sweep = sweep
        super().__init__(MNISTClassifier, MNISTDataModule, seed_everything_default=42, args=args)  # as cli_main

    def before_instantiate_classes(self) -> None:
        # The trial's folder is set for the instantiation only, so that the saved config.yaml (which the config
        # callback reads from this namespace later) stays free of it: `fit --config` on it starts a new run.
        logger = self.config.fit.trainer.logger.init_args
        self._configured_logger = (logger.save_dir, logger.name, logger.version)
        folder = self.sweep.trial_folder(self.trial.number)
        logger.save_dir, logger.name, logger.version = str(folder.parent.parent), folder.parent.name, folder.name
        super().before_instantiate_classes()

    def after_instantiate_classes(self) -> None:
        super().after_instantiate_classes()
        logger = self.config.fit.trainer.logger.init_args
        logger.save_dir, logger.name, logger.version = self._configured_logger
        for callback in self.trainer.callbacks:
            if isinstance(callback, LastCheckpoint):
                callback.save_on_exception = False  # a pruned or stopped trial is not resumed
        self.trainer.callbacks.append(TrialMonitor(self.trial, monitor=self.sweep.config.metric))
        self.trainer.logger.log_hyperparams(self.trial.params, {self.sweep.config.metric: 0})


class TrialMonitor(PyTorchLightningPruningCallback):
    """Optuna's pruning callback, which also notes in the trial the epochs it ran and its best checkpoint."""

    epochs = 0

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if not trainer.sanity_checking:
            self.epochs = trainer.current_epoch + 1
        super().on_validation_end(trainer, pl_module)

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        self._note(trainer)

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self._note(trainer)

    def _note(self, trainer: Any) -> None:
        self._trial.set_user_attr("epochs", self.epochs)
        checkpoint = trainer.checkpoint_callback
        if checkpoint is not None and checkpoint.best_model_path:
            self._trial.set_user_attr("checkpoint", str(Path(checkpoint.best_model_path).resolve()))


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


def process_start(pid: int) -> str | None:
    """When process `pid` started (Linux's clock ticks since boot), telling it from a later process with its pid."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def fail_dead_trials(study: optuna.Study) -> list[int]:
    """Mark FAIL the RUNNING trials whose worker process on this machine is gone (killed, or its machine restarted);
    on other machines that is the RDB storage's heartbeat's job. Returns their numbers."""
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get("worker")
        if not worker or worker["host"] != HOST or is_alive(worker["pid"], worker.get("started")):
            continue
        study._storage.set_trial_user_attr(trial._trial_id, "error", f"its worker (pid {worker['pid']}) died")
        study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
        failed.append(trial.number)
    return failed


def is_alive(pid: int, started: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # someone else's process holds the pid now, or still does
    return started is None or process_start(pid) == started
