"""A sweep's study: what the sweep is (`Sweep`), where its study lives (a journal file, or a database that workers on
several machines share), and the study's own records of what it is and which of its trials died."""

from __future__ import annotations

import importlib.util
import socket
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from mnist_lightning.errors import ArgumentError
from mnist_lightning.files import is_running
from mnist_lightning.tools.sweep.config import SweepConfig

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


def fail_dead_trials(study: optuna.Study) -> list[int]:
    """Mark FAIL the RUNNING trials whose worker process on this machine is gone (killed, or its machine restarted);
    on other machines that is the RDB storage's heartbeat's job. Returns their numbers."""
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get("worker")
        if not worker or worker["host"] != HOST or is_running(worker["pid"], worker.get("started")):
            continue
        study._storage.set_trial_user_attr(trial._trial_id, "error", f"its worker (pid {worker['pid']}) died")
        study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
        failed.append(trial.number)
    return failed
