"""`python -m mnist_lightning sweep` refuses a sweep that cannot work in one line, before any trial runs."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.helpers import free_port, sweep_error, write_sweep


def test_bad_search_spaces_are_one_line_errors(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    cases = {
        "model.lr: low 0.1 is above high 0.01: swap them": {"model.lr": {"low": 0.1, "high": 0.01}},
        "model.hidden_sizes: choices is empty": {"model.hidden_sizes": {"choices": []}},
        "a log scale needs low above 0": {"model.lr": {"low": 0, "high": 0.1, "log": True}},
    }
    for message, space in cases.items():
        assert message in sweep_error(capsys, f"--config={write_sweep(workdir, search_space=space)}")
    assert not (workdir / "lightning_logs").exists()


def test_unknown_keys_and_values_are_one_line_errors_before_any_trial(
    workdir: Path, capsys: pytest.CaptureFixture
) -> None:
    line = sweep_error(capsys, f"--config={write_sweep(workdir, search_space={'model.lrate': {'low': 1, 'high': 2}})}")
    assert "model.lrate is not a fit setting: did you mean model.lr?" in line and "data.batch_size" in line
    line = sweep_error(
        capsys, f"--config={write_sweep(workdir, search_space={'model.optimizer': {'choices': ['sgd']}})}"
    )
    assert "model.optimizer" in line and "sgd" in line
    line = sweep_error(capsys, f"--config={write_sweep(workdir)}", "--model.foo=1")
    assert "--model.foo" in line
    line = sweep_error(capsys, f"--config={write_sweep(workdir)}", "--model.lr=0.1")
    assert "--model.lr is searched by" in line
    assert not (workdir / "lightning_logs").exists()


def test_an_unreachable_storage_is_a_one_line_error(
    workdir: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    pauses: list[float] = []
    monkeypatch.setattr(time, "sleep", pauses.append)  # the pauses between attempts, recorded instead of waited
    port = free_port()
    line = sweep_error(
        capsys, f"--config={write_sweep(workdir)}", f"--storage=postgresql://postgres@127.0.0.1:{port}/x"
    )
    assert f"@127.0.0.1:{port}/x cannot be reached" in line and "start the database server" in line
    # A password in the URL is never printed.
    line = sweep_error(
        capsys, f"--config={write_sweep(workdir)}", f"--storage=postgresql://me:secret@127.0.0.1:{port}/x"
    )
    assert "secret" not in line and f"me:***@127.0.0.1:{port}/x cannot be reached" in line
    assert not (workdir / "lightning_logs").exists()
    assert pauses == [1, 2, 1, 2], "each command tried three times, a moment apart, before giving up"
