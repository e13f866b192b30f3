"""The sweep's report on a study whose best checkpoint is on another machine."""

from __future__ import annotations

import types
from pathlib import Path

import optuna
import pytest

from mnist_lightning.tools.sweep.report import test_best_trial as best_trials_test


def test_a_best_checkpoint_on_another_machine_is_not_tested_and_the_note_says_where_and_how(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    study = optuna.create_study()
    trial = study.ask()
    checkpoint = "/scratch/node7/lightning_logs/sweep/trial_0000/checkpoints/best.ckpt"
    trial.set_user_attr("checkpoint", checkpoint)
    trial.set_user_attr("worker", {"host": "node7", "pid": 1})
    study.tell(trial, 0.1)
    folders = types.SimpleNamespace(trial_folder=lambda number: tmp_path / f"trial_{number:04d}")

    assert best_trials_test(study, folders, study.best_trial) is None

    note = capsys.readouterr().out.strip()
    command = (
        f"python -m mnist_lightning test --config {tmp_path / 'trial_0000' / 'config.yaml'} --ckpt_path {checkpoint}"
    )
    assert note == f"note: trial 0's best checkpoint is not on this machine but on node7: test it there with {command}"
