"""`python -m mnist_lightning sweep` stopped as users stop it, in fresh processes on synthetic data: Ctrl-C and
SIGTERM during a trial, at start-up and during the report; kill -9 during a trial, then two runs started together;
two workers on one journal; and a full disk (the file size limit) under the journal, the summary and the plots."""

from __future__ import annotations

import contextlib
import csv
import io
import multiprocessing
import os
import resource
import shlex
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from mnist_lightning.commands import main as dispatch
from mnist_lightning.tools.sweep.study import HOST, JournalFile, reap_dead_trials
from tests.helpers import (
    SWEEP,
    assert_one_line_error,
    cli_context,
    hold_at,
    release,
    start_sweep,
    wait_for_phase,
    wait_until_handling_signals,
    with_phase_marker,
    write_sweep,
)

COUNTED = (TrialState.COMPLETE, TrialState.PRUNED)
CONTINUOUS = {"model.lr": {"low": 0.0005, "high": 0.02, "log": True}, "model.hidden_sizes": {"choices": [[16], [32]]}}
# Trials of 2 epochs of 20 steps: held (`held_trials`), they are stopped or killed in their second epoch.
TRIALS = SWEEP["fit"]
# Trials of 2 steps: where what matters happens outside them.
TINY = {**SWEEP["fit"], "trainer": {**SWEEP["fit"]["trainer"], "max_epochs": 1, "limit_train_batches": 2}}
NO_PRUNING = {"n_startup_trials": 100}
RESUMED = "(finished trials are kept, stopped ones are tried again); resume with: python -m mnist_lightning sweep"


def finish(process: subprocess.Popen, timeout: float = 300) -> str:
    """What `process` printed, once it ended; past `timeout`, kill its group and fail."""
    try:
        return process.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        pytest.fail(f"sweep still running after {timeout} s:\n{process.communicate()[0][-3000:]}")


def load(workdir: Path, study: str = "sweep") -> optuna.Study:
    storage = JournalStorage(JournalFileBackend(str(workdir / "lightning_logs" / study / "optuna-journal.log")))
    return optuna.load_study(study_name=study, storage=storage)


def held_trials(markers: Path, processes: int = 1) -> dict[str, Any]:
    """The `fit` of trials that wait after the first step of their second epoch (their first epoch saved) until
    `processes` trials are there, and until the test has stopped or killed them: `release(markers)` lets the later
    runs' trials go on."""
    hold_at(markers, "train-1")
    return with_phase_marker(TRIALS, markers, processes, meet="train-1")


def ran(trial: optuna.trial.FrozenTrial) -> bool:
    return "worker" in trial.user_attrs


def rerun_in_this_process(data_dir: Path, command: str) -> str:
    """The printed resume command (`python -m mnist_lightning sweep ...`), run in this process: what it printed."""
    args = shlex.split(command)
    assert args[:3] == ["python", "-m", "mnist_lightning"], command
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
        dispatch(args[3:])
    return printed.getvalue()


@pytest.mark.parametrize(
    ("signum", "status", "name"), [(signal.SIGINT, 130, "Ctrl-C"), (signal.SIGTERM, 143, "SIGTERM")]
)
def test_a_stopped_trial_is_fail_and_the_resume_command_retries_exactly_its_parameters(
    signum: int, status: int, name: str, synthetic_mnist: Path, workdir: Path
) -> None:
    markers = workdir / "markers"
    fit = held_trials(markers)
    config = write_sweep(workdir, fit=fit, search_space=CONTINUOUS, n_trials=2, pruner=NO_PRUNING)
    process = start_sweep(synthetic_mnist, workdir, f"--config={config}")
    wait_for_phase(markers, "train-1", process)
    process.send_signal(signum)
    output = finish(process)
    assert process.returncode == status, output
    assert "Traceback" not in output and "error:" not in output, output
    last = output.strip().splitlines()[-1]
    assert last.startswith(f"stopped by {name} {RESUMED} --config={config}"), output
    study = load(workdir)
    stopped = study.trials[0]
    assert stopped.state == TrialState.FAIL and stopped.user_attrs["error"] == "stopped by Ctrl-C or a signal"
    (queued,) = [t for t in study.trials if t.state == TrialState.WAITING]
    assert queued.user_attrs == {"retry_of": 0, "attempt": 1, "why": "it was interrupted"}

    release(markers)
    rerun = rerun_in_this_process(synthetic_mnist, last.split("resume with: ", 1)[1])
    assert "retries trial 0 (it was interrupted)" in rerun
    study = load(workdir)
    (retried,) = [t for t in study.trials if t.user_attrs.get("retry_of") == 0]
    assert retried.params == stopped.params and retried.state in COUNTED and ran(retried)
    assert len(study.get_trials(states=COUNTED)) == 2
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))


def test_ctrl_c_stops_every_worker_and_queues_each_stopped_trial(synthetic_dir: Path, tmp_path: Path) -> None:
    markers = tmp_path / "markers"
    fit = held_trials(markers, processes=2)  # a trial of each worker, both running
    config = write_sweep(tmp_path, fit=fit, search_space=CONTINUOUS, n_trials=3, pruner=NO_PRUNING)
    process = start_sweep(synthetic_dir, tmp_path, f"--config={config}", "--workers=2")
    wait_for_phase(markers, "train-1", process, processes=2)
    os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole process group
    output = finish(process)
    assert process.returncode == 130, output
    assert "Traceback" not in output and output.strip().splitlines()[-1].startswith(f"stopped by Ctrl-C {RESUMED}")
    study = load(tmp_path)
    stopped = [t.number for t in study.trials if t.state == TrialState.FAIL]
    assert len(stopped) == 2 and all(ran(study.trials[n]) for n in stopped)
    queued = [t.user_attrs["retry_of"] for t in study.trials if t.state == TrialState.WAITING]
    assert sorted(queued) == stopped


def reap_at_the_barrier(journal: str, name: str, barrier: Any, results: Any) -> None:
    study = optuna.load_study(study_name=name, storage=JournalStorage(JournalFile(journal)))
    seen = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    study.get_trials = lambda *args, **kwargs: seen  # every racer has seen the trial RUNNING, as at one moment
    barrier.wait()
    results.put(reap_dead_trials(study))


def test_processes_that_find_one_dead_trial_at_the_same_moment_retry_it_once(tmp_path: Path) -> None:
    journal = str(tmp_path / "journal.log")
    ended = subprocess.Popen(["true"])
    ended.wait()  # its pid is that of no process now
    context = multiprocessing.get_context("fork")  # the modules are imported already: the racers start at once
    for round in range(3):
        study = optuna.create_study(study_name=f"race{round}", storage=JournalStorage(JournalFile(journal)))
        trial = study.ask()
        trial.suggest_float("x", 0, 1)
        trial.set_user_attr("process", {"host": HOST, "pid": ended.pid, "started": None})
        barrier, results = context.Barrier(6), context.Queue()
        racers = [
            context.Process(target=reap_at_the_barrier, args=(journal, f"race{round}", barrier, results))
            for _ in range(6)
        ]
        for racer in racers:
            racer.start()
        reaped = [results.get(timeout=60) for _ in racers]
        for racer in racers:
            racer.join(timeout=60)
        assert [racer.exitcode for racer in racers] == [0] * 6, "a racer crashed"
        assert sorted(map(len, reaped)) == [0, 0, 0, 0, 0, 1], reaped
        assert study.trials[0].state == TrialState.FAIL
        (retry,) = study.get_trials(states=(TrialState.WAITING,))
        assert retry.user_attrs["retry_of"] == 0 and retry.user_attrs["attempt"] == 1


def test_a_killed_sweeps_trial_is_retried_once_when_two_runs_start_together(
    synthetic_dir: Path, tmp_path: Path
) -> None:
    markers = tmp_path / "markers"
    config = write_sweep(tmp_path, fit=held_trials(markers), search_space=CONTINUOUS, n_trials=2, pruner=NO_PRUNING)
    first = start_sweep(synthetic_dir, tmp_path, f"--config={config}")
    wait_for_phase(markers, "train-1", first)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(timeout=60)
    release(markers)
    assert load(tmp_path).trials[0].state == TrialState.RUNNING, "kill -9 leaves the trial RUNNING"

    runs = [start_sweep(synthetic_dir, tmp_path, f"--config={config}") for _ in range(2)]
    outputs = [finish(run) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    reaped = "trial 0 was left RUNNING by a process that is gone: marked FAIL, its parameters queued again"
    assert sum(output.count(reaped) for output in outputs) == 1, outputs
    study = load(tmp_path)
    killed = study.trials[0]
    assert killed.state == TrialState.FAIL
    (retried,) = [t for t in study.trials if t.user_attrs.get("retry_of") == 0]
    assert "died" in retried.user_attrs["why"] and retried.params == killed.params and retried.state in COUNTED
    assert len(study.get_trials(states=COUNTED)) == 2
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))


@pytest.mark.parametrize(
    ("signum", "status", "name"), [(signal.SIGINT, 130, "Ctrl-C"), (signal.SIGTERM, 143, "SIGTERM")]
)
def test_a_signal_during_start_up_ends_with_one_line_and_writes_nothing(
    signum: int, status: int, name: str, synthetic_dir: Path, tmp_path: Path
) -> None:
    config = write_sweep(tmp_path)
    process = start_sweep(synthetic_dir, tmp_path, f"--config={config}")
    # The command's handlers are in place before it imports Lightning and Optuna (seconds of imports).
    wait_until_handling_signals(process)
    process.send_signal(signum)
    output = finish(process, 60)
    assert process.returncode == status, output
    assert output.strip().splitlines() == [f"stopped by {name}"], output
    assert sorted(path.name for path in tmp_path.iterdir()) == ["sweep.yaml"]


def test_ctrl_c_during_the_report_ends_with_one_line_and_the_next_run_reports(
    synthetic_mnist: Path, workdir: Path
) -> None:
    # The report tests the best checkpoint (then writes the summary and plots): the test waits after its first batch.
    markers = hold_at(workdir / "markers", "test")
    config = write_sweep(workdir, fit=with_phase_marker(TINY, markers), search_space=CONTINUOUS, n_trials=1)
    process = start_sweep(synthetic_mnist, workdir, f"--config={config}")
    wait_for_phase(markers, "test", process)
    process.send_signal(signal.SIGINT)
    output = finish(process, 120)
    assert process.returncode == 130, output
    assert "Testing trial 0's best checkpoint" in output, output
    assert "Traceback" not in output
    last = output.strip().splitlines()[-1]
    assert last.startswith(f"stopped by Ctrl-C {RESUMED}"), output
    assert len(load(workdir).get_trials(states=COUNTED)) == 1
    release(markers)
    rerun = rerun_in_this_process(synthetic_mnist, last.split("resume with: ", 1)[1])
    assert "Study sweep: 1 of 1 trials done or running" in rerun and "test accuracy" in rerun
    with open(workdir / "lightning_logs" / "sweep" / "summary.csv") as file:
        (row,) = csv.DictReader(file)
    assert 0 < float(row["test/acc"]) <= 1


def test_two_workers_never_run_the_same_parameters_and_stop_at_n_trials(synthetic_dir: Path, tmp_path: Path) -> None:
    # The first trial of each worker waits at its first step until the other's is there: both run trials.
    fit = with_phase_marker(TINY, tmp_path / "markers", processes=2)
    config = write_sweep(tmp_path, fit=fit, search_space=CONTINUOUS, n_trials=6, pruner=NO_PRUNING)
    process = start_sweep(synthetic_dir, tmp_path, f"--config={config}", "--workers=2")
    output = finish(process)
    assert process.returncode == 0, output
    study = load(tmp_path)
    trials = [t for t in study.trials if ran(t)]
    assert len({t.user_attrs["worker"]["pid"] for t in trials}) == 2, "both workers ran trials"
    assert len({tuple(sorted(t.params.items())) for t in trials}) == len(trials), "a parameter set ran twice"
    assert 6 <= len(study.get_trials(states=COUNTED)) <= 7


@pytest.fixture(scope="module")
def finished_study(synthetic_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A working folder with a study of 1 trial, summary, plots (run in this process)."""
    workdir = tmp_path_factory.mktemp("finished")
    config = write_sweep(workdir, fit=TINY, search_space=CONTINUOUS, n_trials=1)
    with cli_context(synthetic_dir, workdir), contextlib.redirect_stdout(io.StringIO()):
        dispatch(["sweep", f"--config={config}", f"--data.data_dir={synthetic_dir}"])
    return workdir


@pytest.mark.parametrize("where", ["optuna-journal.log", "summary.csv", "history.png"])
def test_a_full_disk_is_one_line_and_keeps_what_was_there(
    where: str, finished_study: Path, synthetic_mnist: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file size limit (ulimit -f) stands for a full disk: a write that goes past it fails with EFBIG."""
    shutil.copytree(finished_study, tmp_path, dirs_exist_ok=True)
    study = tmp_path / "lightning_logs" / "sweep"
    target = study / where
    before = target.read_bytes()
    # The journal: just above its size, so that the next trial's first line does not fit (a re-run with a trial
    # more); the summary: below its size; the plot: above the summary's size, below the plot's.
    limit = {"optuna-journal.log": len(before) + 10, "summary.csv": 100, "history.png": 4096}[where]
    assert (study / "summary.csv").stat().st_size < 4096 < (study / "history.png").stat().st_size

    def limit_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    n_trials = "--n_trials=2" if where == "optuna-journal.log" else "--n_trials=1"
    process = start_sweep(
        synthetic_mnist, tmp_path, f"--config={tmp_path / 'sweep.yaml'}", n_trials, preexec_fn=limit_file_size
    )
    output = finish(process, 120)
    assert process.returncode == 2, output
    name = "the journal " if where == "optuna-journal.log" else ""
    line = assert_one_line_error(output, f"could not write {name}lightning_logs/sweep/{where} (File too large)")
    assert line.startswith(
        f"error: could not write {name}lightning_logs/sweep/{where} (File too large): raise the file"
    )
    assert target.read_bytes() == before, "what was there is kept as it was"

    # Once there is room, the same command finishes (the journal: with its trial more).
    monkeypatch.chdir(tmp_path)
    command = f"python -m mnist_lightning sweep --config={tmp_path / 'sweep.yaml'} {n_trials}"
    rerun = rerun_in_this_process(synthetic_mnist, f"{command} --data.data_dir={synthetic_mnist}")
    assert "Summary" in rerun
    assert len(load(tmp_path).get_trials(states=COUNTED)) == int(n_trials[-1])
