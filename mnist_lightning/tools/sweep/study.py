"""A sweep's study: what the sweep is (`Sweep`), where its study lives (a journal file, or a database that workers on
several machines share), and the study's own records of what it is and which of its trials died."""

from __future__ import annotations

import errno
import importlib.util
import json
import os
import re
import socket
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock
from optuna.trial import FrozenTrial, TrialState

from mnist_lightning.errors import ArgumentError, UserError
from mnist_lightning.files import is_running, obstacle, write_failure
from mnist_lightning.tools.sweep.config import SweepConfig

JOURNAL_FILE = "optuna-journal.log"
# RDB storage only: a trial whose worker has not beaten for GRACE_PERIOD seconds (killed, its machine gone) is FAIL.
HEARTBEAT_INTERVAL, GRACE_PERIOD = 10, 60
STORAGE_ATTEMPTS = 3
MAX_RETRIES = 2  # a parameter set whose trials die three times is not tried again
CLAIMED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
# Trial user attributes: the process that drew the trial (its first act, so that a kill at any later moment leaves
# a trial the next run can tell is dead), and the same once the trial runs a fit (surplus and duplicate trials don't).
PROCESS, WORKER = "process", "worker"
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


STORAGE_HELP = (
    "pass postgresql://USER:PASSWORD@HOST/DB (a database that several machines share), or the path of a journal file "
    f"(by default lightning_logs/<study>/{JOURNAL_FILE})"
)
NOT_A_JOURNAL = f"pass a new path, or the journal of a sweep (lightning_logs/<study>/{JOURNAL_FILE})"


def check_storage(storage: str) -> str:
    """`--storage` as the sweep uses it: a database URL with its driver, or a journal file's path; a URL that names
    no database kind SQLAlchemy knows, or cannot be read, is refused here, before anything is written."""
    if "://" not in storage:
        if re.match(r"[A-Za-z][\w+.-]*:/", storage):
            raise ArgumentError(f"--storage {storage} is not a database URL (scheme://...): {STORAGE_HELP}")
        return storage
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError as URLError
    from sqlalchemy.exc import NoSuchModuleError

    url = database_url(storage)
    try:
        make_url(url).get_dialect()
    except NoSuchModuleError:
        kind = url.split("://", 1)[0]
        raise ArgumentError(
            f"--storage {shown_storage(storage)}: no database of kind {kind!r}: {STORAGE_HELP}"
        ) from None
    except (URLError, ValueError) as e:
        raise ArgumentError(f"--storage {shown_storage(storage)} is not a database URL ({e}): {STORAGE_HELP}") from None
    return url


def shown_storage(storage: str) -> str:
    """The storage as messages show it: a URL without its password."""
    if "://" not in storage:
        return storage
    from sqlalchemy.engine import make_url

    try:
        return make_url(storage).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy can parse: show only its kind
        return storage.split("://", 1)[0] + "://..."


def check_journal_path(path: Path) -> None:
    """Refuse a journal path that is a folder, or whose folder cannot be written, before anything is written."""
    if path.is_dir():
        raise ArgumentError(f"journal {path} is a folder: {NOT_A_JOURNAL}")
    if path.exists() and not os.access(path, os.R_OK | os.W_OK, effective_ids=True):
        raise ArgumentError(
            f"journal {path} cannot be written: it is read-only: make it writable (chmod u+rw), or pass --storage "
            "with another path"
        )
    problem = unwritable(path.parent)
    if problem:  # the journal's lock file goes beside it, even when the journal exists
        raise ArgumentError(
            f"journal {path} cannot be written: {problem}, or pass --storage with a path in a writable folder"
        )


def unwritable(folder: Path) -> str | None:
    """Why files cannot be made in `folder` (or in the folders that would be made for it), with the fix; None when
    they can."""
    found = obstacle(folder)
    if found is None:
        return None
    path, code = found
    if code == errno.ENOTDIR:
        return f"{path} is a file, where a folder is needed: move it away"
    return f"the folder {path} is read-only: make it writable"


class JournalFile(JournalFileBackend):
    """Optuna's journal file, whose appends are whole lines or nothing.

    Optuna appends a line per change. A write cut short (a full disk, a quota, the file size limit) would leave part
    of a line, and the next append would run on from it: a line that is not JSON, after which Optuna reads nothing
    (every later trial lost). Here a failed write is taken back, and a part of a line that an earlier writer left at
    the end (Optuna ignores a last line without its newline) is removed before the next line is written after it.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        # A lock left by a killed writer is taken over after Optuna's grace period (30 s without a journal write),
        # which stats the lock symlink's target. A relative target resolves beside the link, not from here: a
        # dangling link that Optuna's stat never reads, so a relative path waited for that lock forever, at 100 % CPU.
        self.lock = JournalFileSymlinkLock(os.path.abspath(path))
        try:
            super().__init__(path, self.lock)  # creates an empty file where there is none
        except OSError as e:
            raise journal_write_error(path, e) from None

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        data = "".join(json.dumps(log, separators=(",", ":")) + "\n" for log in logs).encode()
        try:
            self.lock.acquire()
        except OSError as e:
            raise journal_write_error(self.path, e) from None
        try:
            descriptor = os.open(self.path, os.O_RDWR | os.O_APPEND)
            try:
                end = complete_lines_end(descriptor)
                os.ftruncate(descriptor, end)
                try:
                    written = 0
                    while written < len(data):
                        written += os.write(descriptor, data[written:])
                    os.fsync(descriptor)
                except BaseException:
                    os.ftruncate(descriptor, end)  # shrinking a file works on a full disk too
                    raise
            finally:
                os.close(descriptor)
        except OSError as e:
            raise journal_write_error(self.path, e) from None
        finally:
            self.lock.release()


def complete_lines_end(descriptor: int) -> int:
    """The length of a file's complete lines: its size, less a last line without its newline."""
    end = os.fstat(descriptor).st_size
    while end > 0:
        start = max(0, end - 4096)
        chunk = os.pread(descriptor, end - start, start)
        newline = chunk.rfind(b"\n")
        if newline >= 0:
            return start + newline + 1
        end = start
    return 0


def journal_write_error(path: str, error: OSError) -> UserError:
    """A failed write of the journal as one line (files.write_failure), with its fix."""
    kept = "the journal keeps every trial written before, as it was"
    return write_failure(f"the journal {path}", error.errno, "or pass --storage with another path", kept)


def check_journal(path: Path) -> None:
    """Refuse a file that is not an Optuna journal before anything is appended to it: every whole line one JSON
    record of Optuna's (Optuna itself ignores a last line that is not, and would then write after it)."""
    try:
        with path.open("rb") as file:
            for number, line in enumerate(file, start=1):
                if not line.endswith(b"\n"):
                    break  # a part of a line, left by a writer that was stopped: JournalFile removes it
                try:
                    record = json.loads(line)
                except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
                    raise not_a_journal(path, f"line {number}: {type(e).__name__}: {e}") from None
                if not isinstance(record, dict) or "op_code" not in record:
                    raise not_a_journal(path, f"line {number} is not a record of Optuna's")
    except FileNotFoundError:
        pass  # a new study's journal
    except OSError as e:
        raise ArgumentError(f"journal {path} cannot be read ({e.strerror}): make it readable") from None


def not_a_journal(path: Path | str, reason: str) -> ArgumentError:
    return ArgumentError(
        f"{path} is not an Optuna journal file, or is damaged ({' '.join(reason.split())[:120]}); it was left as it "
        f"was: {NOT_A_JOURNAL}"
    )


def make_storage(url_or_path: str) -> BaseStorage:
    """RDB storage with heartbeats for a URL, else Optuna's journal file, safe for several processes on one machine
    (Optuna's FAQ advises against SQLite for parallel work)."""
    if "://" not in url_or_path:
        try:
            Path(url_or_path).parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise journal_write_error(url_or_path, e) from None
        check_journal(Path(url_or_path))
        backend = JournalFile(url_or_path)
        try:
            return JournalStorage(backend)  # reads the whole journal
        except (ValueError, KeyError, TypeError, AttributeError, IndexError) as e:
            raise not_a_journal(url_or_path, f"{type(e).__name__}: {' '.join(str(e).split())[:100]}") from None
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
                f"--storage {shown_storage(url_or_path)} needs a database driver that is not installed ({e}): "
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
                f"--storage {shown_storage(url_or_path)} cannot be reached ({reason[:300]}): start the database "
                "server or fix the URL"
            ) from None
    raise AssertionError("unreachable")


def database_url(url: str) -> str:
    """`url` with the PostgreSQL driver that the sweep extra installs: SQLAlchemy 2.1 reads `postgresql://` as
    psycopg 3, which is not installed with it, and psycopg2 still is. (`postgres://`, which some hosts print, is
    PostgreSQL too.)"""
    if url.startswith("postgres://"):
        url = "postgresql://" + url.removeprefix("postgres://")
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
    with anything else, naming the difference. A study without a trial that ran to an end (only failed ones, say a
    first trial stopped by a misspelt metric) takes the new settings: it holds nothing they would be mixed with."""
    identity = {**sweep.config.identity(), "fixed": sweep.fixed}
    saved = {key: study.user_attrs[key] for key in identity if key in study.user_attrs}
    new_name = "or pass --study NEW_NAME to start a new study"
    kept = study.get_trials(deepcopy=False, states=(*CLAIMED, TrialState.WAITING))
    for key in ("metric", "direction", "search_space") if kept else ():
        if saved.get(key, identity[key]) != identity[key]:
            raise ArgumentError(
                f"study {sweep.study_name} in {shown_storage(sweep.storage)} was made with another {key} "
                f"({saved[key]}): restore {sweep.config.path}, {new_name}"
            )
    before, now = saved.get("fixed", sweep.fixed), sweep.fixed
    differences = [
        f"{key} {json.dumps(before.get(key))} then, {json.dumps(now.get(key))} now"
        for key in sorted(set(before) | set(now))
        if before.get(key) != now.get(key)
    ]
    if differences and kept:
        raise ArgumentError(
            f"study {sweep.study_name} was made with other fixed settings ({'; '.join(differences)}): its trials "
            f"and these would be two experiments; pass the same flags, {new_name}"
        )
    if sweep.config.direction != study.direction.name.lower():  # Optuna cannot change a study's direction
        raise ArgumentError(
            f"study {sweep.study_name} {study.direction.name.lower()}s its metric, and {sweep.config.path} says "
            f"{sweep.config.direction}: restore it, {new_name}"
        )
    for key in identity:  # a new study, one of an earlier version without "fixed", or one without finished trials
        if saved.get(key) != identity[key]:
            study.set_user_attr(key, identity[key])


def reap_dead_trials(study: optuna.Study) -> list[int]:
    """Mark FAIL the RUNNING trials whose worker process on this machine is gone (killed, or its job requeued), and
    queue each one's parameters again; on other machines that is the RDB storage's heartbeat's job. Returns the
    numbers of the trials this process failed.

    Several processes may find the same dead trial at once: the RUNNING → FAIL transition succeeds in exactly one of
    them, and only that one queues the retry.
    """
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get(PROCESS) or trial.user_attrs.get(WORKER)  # WORKER: studies of before
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
