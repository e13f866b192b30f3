"""A sweep in this process, on synthetic data: its trials need no TensorBoard logger, each runs in a run folder of
its own, and the best one is tested in its folder's `test/`."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from mnist_lightning.commands import main as dispatch
from tests.helpers import SWEEP, enqueue_trials, write_sweep


def test_a_sweep_without_a_tensorboard_logger_runs_each_trial_in_its_folder_and_tests_the_best(
    synthetic_mnist: Path, workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trainer = {"max_epochs": 1, "enable_progress_bar": False, "logger": False}
    config = write_sweep(
        workdir,
        fit={**SWEEP["fit"], "trainer": trainer},
        n_trials=2,
        search_space={"model.hidden_sizes": {"choices": [[16], [32]]}},
    )
    enqueue_trials(workdir, {"model.hidden_sizes": [16]}, {"model.hidden_sizes": [32]})  # no repeated draw
    dispatch(["sweep", f"--config={config}", f"--data.data_dir={synthetic_mnist}"])
    output = capsys.readouterr().out
    study = workdir / "lightning_logs" / "sweep"
    trials = sorted(study.glob("trial_*"))
    assert len(trials) == 2 and trials[0].name == "trial_0000"
    for trial in trials:
        assert (trial / "config.yaml").is_file() and list((trial / "checkpoints").glob("epoch*.ckpt"))
    assert not list(workdir.rglob("events.out.tfevents.*")), "no TensorBoard logger, no event files"
    with open(study / "summary.csv") as file:
        rows = list(csv.DictReader(file))
    (best,) = [row["trial"] for row in rows if row["test/acc"]]
    assert (study / f"trial_{int(best):04d}" / "test" / "config.yaml").is_file(), "the test is a run in the trial"
    assert f"Best trial        {best}:" in output and "test accuracy" in output
