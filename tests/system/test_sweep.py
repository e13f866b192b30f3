"""`python -m mnist_lightning sweep` on synthetic data: real processes, a real journal file and a real PostgreSQL."""

from __future__ import annotations

import csv
import os
import re
import signal
import subprocess
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mnist_lightning.tools.sweep.study import database_url
from tests.helpers import (
    DEFAULT_TRIALS,
    DIVERGING_LR,
    GOOD_LR,
    HOPELESS_LR,
    SWEEP,
    assert_one_line_error,
    enqueue_trials,
    hold_at,
    release,
    run_cli,
    start_sweep,
    sweep_error,
    wait_for_phase,
    with_phase_marker,
    write_sweep,
)

COUNTED = (TrialState.COMPLETE, TrialState.PRUNED)


def load(folder: Path, study: str = "sweep") -> optuna.Study:
    storage = JournalStorage(JournalFileBackend(str(folder / "lightning_logs" / study / "optuna-journal.log")))
    return optuna.load_study(study_name=study, storage=storage)


def read_summary(folder: Path, study: str = "sweep") -> list[dict[str, str]]:
    with open(folder / "lightning_logs" / study / "summary.csv") as file:
        return list(csv.DictReader(file))


MAIN_SPACE = {**SWEEP["search_space"], "model.lr": {"choices": [GOOD_LR, HOPELESS_LR, DIVERGING_LR]}}
# Queued, so that the study runs them in this order: two trials that learn (the first is never pruned: no trial has
# finished before it), one that diverges at its first step, then two that cannot learn.
MAIN_TRIALS = [
    {"model.lr": lr, "model.hidden_sizes": widths}
    for lr, widths in [(GOOD_LR, [16]), (GOOD_LR, [32]), (DIVERGING_LR, [16]), (HOPELESS_LR, [16]), (HOPELESS_LR, [32])]
]


@pytest.fixture(scope="module")
def swept(synthetic_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """One sweep of 4 counted trials (5 in all) in a fresh process: (its working folder, what it printed)."""
    workdir = tmp_path_factory.mktemp("sweep")
    config = write_sweep(workdir, search_space=MAIN_SPACE)
    enqueue_trials(workdir, *MAIN_TRIALS)
    output = run_cli(synthetic_dir, workdir, "sweep", f"--config={config}")
    return workdir, output


def test_each_trial_is_a_run_folder_with_config_checkpoints_and_hparams(swept: tuple[Path, str]) -> None:
    workdir, _ = swept
    study = load(workdir)
    assert sorted(t.number for t in study.trials) == [0, 1, 2, 3, 4]
    folders = sorted(p.name for p in (workdir / "lightning_logs" / "sweep").glob("trial_*"))
    assert folders == ["trial_0000", "trial_0001", "trial_0002", "trial_0003", "trial_0004"]
    for trial in study.trials:
        folder = workdir / "lightning_logs" / "sweep" / f"trial_{trial.number:04d}"
        config = yaml.safe_load((folder / "config.yaml").read_text())
        assert config["model"]["lr"] == trial.params["model.lr"]
        assert str(config["model"]["hidden_sizes"]).replace(" ", "") == trial.params["model.hidden_sizes"]
        # The trial's folder is not in its config, so that `fit --config` on it starts a run of its own.
        assert config["trainer"]["logger"]["init_args"]["version"] is None
        if trial.state == TrialState.COMPLETE:
            assert list((folder / "checkpoints").glob("epoch*.ckpt"))
        events = EventAccumulator(str(folder))
        events.Reload()
        assert events.PluginTagToContent("hparams"), "no HPARAMS for TensorBoard"
        if trial.state in COUNTED:  # (a trial that failed before its first validation logged no metric)
            assert all(event.step > 0 for event in events.Scalars(SWEEP["metric"])), "only values of validations"
    assert not (workdir / "lightning_logs" / "version_0").exists()


def test_summary_lists_every_trial_and_the_best_ones_test_accuracy(swept: tuple[Path, str]) -> None:
    workdir, output = swept
    rows = read_summary(workdir)
    assert [row["trial"] for row in rows] == ["0", "1", "2", "3", "4"]
    assert set(rows[0]) >= {"state", "model.lr", "model.hidden_sizes", "val/loss", "epochs", "seconds", "test/acc"}
    best = load(workdir).best_trial
    tested = [row for row in rows if row["test/acc"]]
    assert [row["trial"] for row in tested] == [str(best.number)]
    test_acc = float(tested[0]["test/acc"])
    assert 0.5 < test_acc <= 1
    assert re.search(rf"test accuracy\s+{test_acc:.4f}", output)
    assert load(workdir).user_attrs["best_test"]["test_acc"] == pytest.approx(test_acc, abs=1e-6)
    # The best trial's test is a run of its own, in the trial's folder.
    assert (workdir / "lightning_logs" / "sweep" / f"trial_{best.number:04d}" / "test" / "config.yaml").is_file()
    for plot in ("history", "importances", "parallel_coordinates"):
        assert (workdir / "lightning_logs" / "sweep" / f"{plot}.png").stat().st_size > 1000
    assert "optuna-dashboard lightning_logs/sweep/optuna-journal.log" in output


def test_a_hopeless_learning_rate_is_pruned_after_its_first_epoch(swept: tuple[Path, str]) -> None:
    workdir, output = swept
    trials = load(workdir).trials
    hopeless = [t for t in trials if t.params["model.lr"] == HOPELESS_LR]
    assert hopeless and all(t.state == TrialState.PRUNED for t in hopeless), output
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert all(t.user_attrs["epochs"] == 1 for t in pruned)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert complete and all(t.user_attrs["epochs"] == 2 for t in complete)


def test_a_diverging_trial_fails_with_its_message_and_the_sweep_goes_on(swept: tuple[Path, str]) -> None:
    workdir, output = swept
    trials = load(workdir).trials
    diverged = [t for t in trials if t.params["model.lr"] == DIVERGING_LR]
    assert diverged and all(t.state == TrialState.FAIL for t in diverged)
    assert all("training loss became nan" in t.user_attrs["error"] for t in diverged)
    assert max(t.number for t in trials) > max(t.number for t in diverged)
    assert len([t for t in trials if t.state in COUNTED]) == 4
    assert re.search(r"trial \d+  FAIL .*training loss became nan", output)
    assert "Traceback" not in output


def test_a_rerun_continues_the_study_without_new_trials_or_a_second_test(
    swept: tuple[Path, str], synthetic_dir: Path
) -> None:
    workdir, _ = swept
    output = run_cli(synthetic_dir, workdir, "sweep", f"--config={workdir / 'sweep.yaml'}")
    assert "4 of 4 trials" in output
    assert len(load(workdir).trials) == 5
    assert "Testing trial" not in output and "test accuracy" in output
    assert len(read_summary(workdir)) == 5


def test_a_trials_config_reproduces_its_metric_with_fit(swept: tuple[Path, str], synthetic_dir: Path) -> None:
    workdir, _ = swept
    trial = next(t for t in reversed(load(workdir).trials) if t.state == TrialState.COMPLETE)
    config = workdir / "lightning_logs" / "sweep" / f"trial_{trial.number:04d}" / "config.yaml"
    run_cli(synthetic_dir, workdir, "fit", f"--config={config}")
    events = EventAccumulator(str(workdir / "lightning_logs" / "version_0"))
    events.Reload()
    assert events.Scalars("val/loss")[-1].value == pytest.approx(trial.value, rel=1e-6)


def sweep_process(synthetic_dir: Path, workdir: Path, *args: str) -> subprocess.Popen:
    """`sweep` in a process group of its own, so that a test can stop it with its workers."""
    return start_sweep(synthetic_dir, workdir, f"--config={workdir / 'sweep.yaml'}", *args)


def finish(process: subprocess.Popen, timeout: float) -> str:
    """Wait for `process` and return what it printed; past `timeout`, kill its group and fail."""
    try:
        return process.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        pytest.fail(f"sweep still running after {timeout} s:\n{process.communicate()[0][-3000:]}")


@pytest.fixture(scope="module")
def two_workers_one_killed(synthetic_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int, str]:
    """`--workers 2` on the journal file, one worker killed with SIGKILL during a trial, then the same command again:
    (the working folder, the killed trial's number, what the second command printed)."""
    workdir = tmp_path_factory.mktemp("workers")
    # The first two trials, which learn, wait in their second epoch until both are there, and until the kill.
    markers = hold_at(workdir / "markers", "train-1")
    write_sweep(workdir, fit=with_phase_marker(SWEEP["fit"], markers, processes=2, meet="train-1"))
    enqueue_trials(workdir, *DEFAULT_TRIALS)
    first = sweep_process(synthetic_dir, workdir, "--workers=2")
    wait_for_phase(markers, "train-1", first, processes=2)
    victim = next(t for t in load(workdir).trials if t.state == TrialState.RUNNING)
    os.kill(victim.user_attrs["worker"]["pid"], signal.SIGKILL)
    release(markers)
    output = finish(first, 300)
    assert first.returncode == 1, output
    assert_one_line_error(output, "worker", "killed by signal 9")
    second = sweep_process(synthetic_dir, workdir, "--workers=2")
    output = finish(second, 300)
    assert second.returncode == 0, output
    return workdir, victim.number, output


def test_two_workers_share_the_journal_with_unique_trial_numbers(two_workers_one_killed: tuple[Path, int, str]) -> None:
    workdir, _, rerun = two_workers_one_killed
    trials = load(workdir).trials
    # Two workers; the killed one's trial is retried by the other, or, when that one had stopped already (the killed
    # trial counted as running), by the one worker of the same command run again.
    rerun_had_work = "4 of 4 trials done or running" not in rerun
    assert len({t.user_attrs["worker"]["pid"] for t in trials if "worker" in t.user_attrs}) == 2 + rerun_had_work
    assert len({t.number for t in trials}) == len(trials)


def test_a_killed_workers_trial_becomes_fail_and_the_rerun_reaches_exactly_n_trials(
    two_workers_one_killed: tuple[Path, int, str],
) -> None:
    workdir, killed, _ = two_workers_one_killed
    study = load(workdir)
    assert study.trials[killed].state == TrialState.FAIL
    (retried,) = [t for t in study.trials if t.user_attrs.get("retry_of") == killed]
    assert "died" in retried.user_attrs["why"] and retried.params == study.trials[killed].params
    assert len(study.get_trials(states=COUNTED)) == 4
    assert not study.get_trials(states=(TrialState.RUNNING,))
    # Every trial that ran is in the summary (not those a worker drew and never ran: surplus or duplicate parameters).
    assert len(read_summary(workdir)) == len([t for t in study.trials if "worker" in t.user_attrs])


def test_two_processes_share_one_postgresql_study(synthetic_dir: Path, tmp_path: Path, postgres: str) -> None:
    folders = [tmp_path / "machine_a", tmp_path / "machine_b"]
    # The first trial of each waits at its first step until the other's is there: both run trials.
    fit = with_phase_marker(SWEEP["fit"], tmp_path / "markers", processes=2)
    for folder in folders:
        folder.mkdir()
        write_sweep(folder, fit=fit)
    enqueue_trials(postgres, *DEFAULT_TRIALS)
    processes = [sweep_process(synthetic_dir, folder, f"--storage={postgres}") for folder in folders]
    outputs = [finish(process, 300) for process in processes]
    assert [process.returncode for process in processes] == [0, 0], outputs
    trials = optuna.load_study(study_name="sweep", storage=database_url(postgres)).get_trials()
    assert len([t for t in trials if t.state in COUNTED]) == 4
    assert len({t.user_attrs["worker"]["pid"] for t in trials if "worker" in t.user_attrs}) == 2
    ran = [sorted(p.name for p in (folder / "lightning_logs" / "sweep").glob("trial_*")) for folder in folders]
    assert ran[0] and ran[1] and not set(ran[0]) & set(ran[1])


def test_a_study_with_another_search_space_is_refused(
    swept: tuple[Path, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, tmp_path: Path
) -> None:
    workdir, _ = swept
    monkeypatch.chdir(workdir)
    before = (workdir / "lightning_logs" / "sweep" / "optuna-journal.log").read_bytes()
    other = write_sweep(tmp_path, search_space={"model.lr": {"low": 0.001, "high": 0.01}})
    line = sweep_error(capsys, f"--config={other}", "--study=sweep")
    assert "study sweep" in line and "another search_space" in line and "--study NEW_NAME" in line
    line = sweep_error(capsys, f"--config={write_sweep(tmp_path, metric='val/acc')}", "--study=sweep")
    assert "another metric" in line
    assert (workdir / "lightning_logs" / "sweep" / "optuna-journal.log").read_bytes() == before
