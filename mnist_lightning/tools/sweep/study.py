"""A sweep's study: what the sweep is (`Sweep`), where its study lives (a journal file, or a database that workers on
several machines share), and the study's own records of what it is and which of its trials died."""

from __future__ import annotations

import importlib.util
import json
import socket
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from mnist_lightning.errors import ArgumentError
from mnist_lightning.files import is_running
from mnist_lightning.tools.sweep.config import SweepConfig

JOURNAL_FILE = "optuna-journal.log"
# RDB storage only: a trial whose worker has not beaten for GRACE_PERIOD seconds (killed, its machine gone) is FAIL.
HEARTBEAT_INTERVAL, GRACE_PERIOD = 10, 60
STORAGE_ATTEMPTS = 3
MAX_RETRIES = 2  # a parameter set whose trials die three times is not tried again
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
    fixed: dict[str, Any]  # every setting of the trials that is not searched: what makes them one experiment
    folder: Path  # lightning_logs/<study>: the trials' run folders, the summary, the plots

    def trial_folder(self, number: int) -> Path:
        return self.folder / f"trial_{number:04d}"


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
                return RDBStorage(
                    url_or_path,
                    heartbeat_interval=HEARTBEAT_INTERVAL,
                    grace_period=GRACE_PERIOD,
                    heartbeat_stale_trial_callback=retry_stale,
                )
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
    if check_identity:
        check_it_is_the_same_experiment(study, sweep)
    return study


def check_it_is_the_same_experiment(study: optuna.Study, sweep: Sweep) -> None:
    """Record what the study is (space, metric, the trials' fixed settings) when it is new; refuse to continue it
    with anything else, naming the difference."""
    identity = {**sweep.config.identity(), "fixed": sweep.fixed}
    saved = {key: study.user_attrs[key] for key in identity if key in study.user_attrs}
    for key in identity.keys() - saved.keys():  # a new study (or one of an earlier version without "fixed")
        study.set_user_attr(key, identity[key])
    new_name = "or pass --study NEW_NAME to start a new study"
    for key in ("metric", "direction", "search_space"):
        if saved.get(key, identity[key]) != identity[key]:
            raise ArgumentError(
                f"study {sweep.study_name} in {sweep.storage} was made with another {key} ({saved[key]}): restore "
                f"{sweep.config.path}, {new_name}"
            )
    before, now = saved.get("fixed", sweep.fixed), sweep.fixed
    differences = [
        f"{key} {json.dumps(before.get(key))} then, {json.dumps(now.get(key))} now"
        for key in sorted(set(before) | set(now))
        if before.get(key) != now.get(key)
    ]
    if differences:
        raise ArgumentError(
            f"study {sweep.study_name} was made with other fixed settings ({'; '.join(differences)}): its trials "
            f"and these would be two experiments; pass the same flags, {new_name}"
        )


def reap_dead_trials(study: optuna.Study) -> list[int]:
    """Mark FAIL the RUNNING trials whose worker process on this machine is gone (killed, or its job requeued), and
    queue each one's parameters again; on other machines that is the RDB storage's heartbeat's job. Returns the
    numbers of the trials this process failed.

    Several processes may find the same dead trial at once: the RUNNING → FAIL transition succeeds in exactly one of
    them, and only that one queues the retry.
    """
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get("worker")
        if not worker or worker["host"] != HOST or is_running(worker["pid"], worker.get("started")):
            continue
        try:
            study.tell(trial.number, state=TrialState.FAIL)
        except (UpdateFinishedTrialError, ValueError):
            continue  # another process failed it first, and retries it
        failed.append(trial.number)
        retry(study, trial, f"its worker (pid {worker['pid']} on {HOST}) died")
    return failed


def retry(study: optuna.Study, failed: FrozenTrial, why: str) -> None:
    """Queue the parameters of a trial that died or was interrupted, at most MAX_RETRIES times per parameter set."""
    origin = failed.user_attrs.get("retry_of", failed.number)
    attempt = failed.user_attrs.get("attempt", 0) + 1
    if attempt <= MAX_RETRIES:
        study.enqueue_trial(failed.params, user_attrs={"retry_of": origin, "attempt": attempt, "why": why})


def retry_stale(study: optuna.Study, trial: FrozenTrial) -> None:
    """RDB storage's callback for a trial whose worker stopped beating (it has made the trial FAIL)."""
    retry(study, trial, f"its worker stopped beating for {GRACE_PERIOD} s")
