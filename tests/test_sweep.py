"""`python -m mnist_lightning sweep` on synthetic data: real processes, a real journal file and a real PostgreSQL."""

from __future__ import annotations

import csv
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mnist_lightning.commands import main as dispatch
from mnist_lightning.sweep import database_url
from tests.postgres import free_port, postgres_server
from tests.synthetic import cli_command, run_cli, subprocess_env

COUNTED = (TrialState.COMPLETE, TrialState.PRUNED)
GOOD_LR, HOPELESS_LR, DIVERGING_LR = 0.003, 1e-7, 1e30
# Random sampling with this seed proposes (0.003, [16]), (0.003, [32]), (0.003, [16]), (1e-07, [32]): three trials
# that learn, then one that cannot and is pruned after its first epoch.
SWEEP = {
    "fit": {
        "seed_everything": 42,
        "model": {"hidden_sizes": [32]},
        "data": {"batch_size": 50, "val_size": 200},
        "trainer": {"max_epochs": 2, "enable_progress_bar": False},
    },
    "metric": "val/loss",  # unlike accuracy, it differs from trial to trial on data this easy
    "direction": "minimize",
    "n_trials": 4,
    "sampler": {"seed": 2, "n_startup_trials": 10},
    "pruner": {"n_startup_trials": 1, "n_warmup_steps": 0},
    "search_space": {
        "model.lr": {"choices": [GOOD_LR, HOPELESS_LR]},
        "model.hidden_sizes": {"choices": [[16], [32]]},
    },
}


def write_sweep(folder: Path, **changes) -> Path:
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump({**SWEEP, **changes}, sort_keys=False))  # keys in order: the sampler draws in order
    return path


def load(folder: Path, study: str = "sweep") -> optuna.Study:
    storage = JournalStorage(JournalFileBackend(str(folder / "lightning_logs" / study / "optuna-journal.log")))
    return optuna.load_study(study_name=study, storage=storage)


def read_summary(folder: Path, study: str = "sweep") -> list[dict[str, str]]:
    with open(folder / "lightning_logs" / study / "summary.csv") as file:
        return list(csv.DictReader(file))


# Random sampling with this seed proposes (0.003, [16]), (0.003, [32]), (1e30, [16]), (1e-07, [16]), (1e-07, [32]):
# two trials that learn (the second better, so that it is not pruned), one that diverges at its first step, then two
# that cannot learn.
MAIN_SPACE = {**SWEEP["search_space"], "model.lr": {"choices": [GOOD_LR, HOPELESS_LR, DIVERGING_LR]}}
MAIN_SAMPLER = {"seed": 237, "n_startup_trials": 10}


@pytest.fixture(scope="module")
def swept(synthetic_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """One sweep of 4 counted trials (5 in all) in a fresh process: (its working folder, what it printed)."""
    workdir = tmp_path_factory.mktemp("sweep")
    config = write_sweep(workdir, search_space=MAIN_SPACE, sampler=MAIN_SAMPLER)
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
    command = cli_command(synthetic_dir, "sweep", f"--config={workdir / 'sweep.yaml'}", *args)
    return subprocess.Popen(
        command,
        cwd=workdir,
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def finish(process: subprocess.Popen, timeout: float) -> str:
    """Wait for `process` and return what it printed; past `timeout`, kill its group and fail."""
    try:
        return process.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        pytest.fail(f"sweep still running after {timeout} s:\n{process.communicate()[0][-3000:]}")


def running_trial_in_epoch_1(workdir: Path, deadline: float) -> optuna.trial.FrozenTrial | None:
    """A RUNNING trial past its first epoch, once trials of two different workers have run."""
    while time.monotonic() < deadline:
        time.sleep(0.2)
        journal = workdir / "lightning_logs" / "sweep" / "optuna-journal.log"
        if not journal.exists():
            continue
        trials = load(workdir).trials
        pids = {t.user_attrs["worker"]["pid"] for t in trials if "worker" in t.user_attrs}
        for trial in trials:
            checkpoints = workdir / "lightning_logs" / "sweep" / f"trial_{trial.number:04d}" / "checkpoints"
            if trial.state == TrialState.RUNNING and len(pids) == 2 and list(checkpoints.glob("epoch00*")):
                return trial
    return None


@pytest.fixture(scope="module")
def two_workers_one_killed(synthetic_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int, str]:
    """`--workers 2` on the journal file, one worker killed with SIGKILL during a trial, then the same command again:
    (the working folder, the killed trial's number, what the second command printed)."""
    workdir = tmp_path_factory.mktemp("workers")
    # Trials of 6 epochs, so that the kill lands inside one.
    write_sweep(workdir, fit={**SWEEP["fit"], "trainer": {"max_epochs": 6, "enable_progress_bar": False}})
    first = sweep_process(synthetic_dir, workdir, "--workers=2")
    victim = running_trial_in_epoch_1(workdir, time.monotonic() + 300)
    if victim is None:
        os.killpg(first.pid, signal.SIGKILL)
        pytest.fail(f"no trial seen running with two workers:\n{first.communicate()[0][-3000:]}")
    os.kill(victim.user_attrs["worker"]["pid"], signal.SIGKILL)
    output = finish(first, 300)
    assert first.returncode == 1, output
    assert "worker" in output and "killed by signal 9" in output, output
    second = sweep_process(synthetic_dir, workdir, "--workers=2")
    output = finish(second, 300)
    assert second.returncode == 0, output
    return workdir, victim.number, output


def test_two_workers_share_the_journal_with_unique_trial_numbers(two_workers_one_killed: tuple[Path, int, str]) -> None:
    workdir, _, _ = two_workers_one_killed
    trials = load(workdir).trials
    # Two workers, then one for the one trial left after the kill.
    assert len({t.user_attrs["worker"]["pid"] for t in trials}) == 3
    assert len({t.number for t in trials}) == len(trials)


def test_a_killed_workers_trial_becomes_fail_and_the_rerun_reaches_exactly_n_trials(
    two_workers_one_killed: tuple[Path, int, str],
) -> None:
    workdir, killed, _ = two_workers_one_killed
    study = load(workdir)
    assert study.trials[killed].state == TrialState.FAIL
    assert "died" in study.trials[killed].user_attrs["error"]
    assert len(study.get_trials(states=COUNTED)) == 4
    assert not study.get_trials(states=(TrialState.RUNNING,))
    assert len(read_summary(workdir)) == len(study.trials)


def test_two_processes_share_one_postgresql_study(synthetic_dir: Path, tmp_path: Path) -> None:
    with postgres_server() as url:
        folders = [tmp_path / "machine_a", tmp_path / "machine_b"]
        for folder in folders:
            folder.mkdir()
            write_sweep(folder)
        processes = [sweep_process(synthetic_dir, folder, f"--storage={url}") for folder in folders]
        outputs = [finish(process, 300) for process in processes]
        assert [process.returncode for process in processes] == [0, 0], outputs
        study = optuna.load_study(study_name="sweep", storage=database_url(url))
        trials = study.get_trials()
    assert len([t for t in trials if t.state in COUNTED]) == 4
    assert len({t.user_attrs["worker"]["pid"] for t in trials if "worker" in t.user_attrs}) == 2
    ran = [sorted(p.name for p in (folder / "lightning_logs" / "sweep").glob("trial_*")) for folder in folders]
    assert ran[0] and ran[1] and not set(ran[0]) & set(ran[1])


def sweep_error(capsys: pytest.CaptureFixture, *args: str) -> str:
    """Run `sweep ARGS` in this process; require exit status 2 and one line on stderr, and return it."""
    with pytest.raises(SystemExit) as exit_info:
        dispatch(["sweep", *args])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: ")
    return lines[0]


@pytest.fixture(autouse=True)
def quiet_lightning_restored() -> Iterator[None]:
    """In-process sweeps quiet Lightning's loggers; the tests of other files get them back as they were."""
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    levels = [logger.level for logger in loggers]
    yield
    for logger, level in zip(loggers, levels, strict=True):
        logger.setLevel(level)


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["mnist-lightning"])
    return tmp_path


def test_bad_search_spaces_are_one_line_errors(in_tmp: Path, capsys: pytest.CaptureFixture) -> None:
    cases = {
        "model.lr: low 0.1 is above high 0.01: swap them": {"model.lr": {"low": 0.1, "high": 0.01}},
        "model.hidden_sizes: choices is empty": {"model.hidden_sizes": {"choices": []}},
        "a log scale needs low above 0": {"model.lr": {"low": 0, "high": 0.1, "log": True}},
    }
    for message, space in cases.items():
        assert message in sweep_error(capsys, f"--config={write_sweep(in_tmp, search_space=space)}")
    assert not (in_tmp / "lightning_logs").exists()


def test_unknown_keys_and_values_are_one_line_errors_before_any_trial(
    in_tmp: Path, capsys: pytest.CaptureFixture
) -> None:
    line = sweep_error(capsys, f"--config={write_sweep(in_tmp, search_space={'model.lrate': {'low': 1, 'high': 2}})}")
    assert "model.lrate is not a fit setting: did you mean model.lr?" in line and "data.batch_size" in line
    line = sweep_error(
        capsys, f"--config={write_sweep(in_tmp, search_space={'model.optimizer': {'choices': ['sgd']}})}"
    )
    assert "model.optimizer" in line and "sgd" in line
    line = sweep_error(capsys, f"--config={write_sweep(in_tmp)}", "--model.foo=1")
    assert "--model.foo" in line
    line = sweep_error(capsys, f"--config={write_sweep(in_tmp)}", "--model.lr=0.1")
    assert "--model.lr is searched by" in line
    assert not (in_tmp / "lightning_logs").exists()


def test_an_unreachable_storage_is_a_one_line_error(in_tmp: Path, capsys: pytest.CaptureFixture) -> None:
    port = free_port()
    line = sweep_error(capsys, f"--config={write_sweep(in_tmp)}", f"--storage=postgresql://postgres@127.0.0.1:{port}/x")
    assert f"@127.0.0.1:{port}/x cannot be reached" in line and "start the database server" in line


def test_a_study_with_another_search_space_is_refused(
    swept: tuple[Path, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, tmp_path: Path
) -> None:
    workdir, _ = swept
    monkeypatch.chdir(workdir)
    monkeypatch.setattr(sys, "argv", ["mnist-lightning"])
    before = (workdir / "lightning_logs" / "sweep" / "optuna-journal.log").read_bytes()
    other = write_sweep(tmp_path, search_space={"model.lr": {"low": 0.001, "high": 0.01}})
    line = sweep_error(capsys, f"--config={other}", "--study=sweep")
    assert "study sweep" in line and "another search_space" in line and "--study NEW_NAME" in line
    line = sweep_error(capsys, f"--config={write_sweep(tmp_path, metric='val/acc')}", "--study=sweep")
    assert "another metric" in line
    assert (workdir / "lightning_logs" / "sweep" / "optuna-journal.log").read_bytes() == before
