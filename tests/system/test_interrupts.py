"""Ctrl-C and SIGTERM at any moment of a command: one line (with the resume command where there is something to
resume), exit status 130 or 143, no traceback. (A stopped fit's resume is tested in test_cli_processes.py.)"""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest

from tests.helpers import (
    QUICK_RUN,
    hold_at,
    marker_flag,
    start_cli,
    wait_for_phase,
    wait_until_handling_signals,
)

SLOW = ["--data.val_size=200", "--data.batch_size=1", "--trainer.enable_progress_bar=false"]


def stop(process: subprocess.Popen, signum: int) -> tuple[int, str]:
    process.send_signal(signum)
    output, _ = process.communicate(timeout=120)
    return process.returncode, output


@pytest.mark.parametrize(
    ("signum", "status", "name"), [(signal.SIGINT, 130, "Ctrl-C"), (signal.SIGTERM, 143, "SIGTERM")]
)
def test_a_signal_during_start_up_ends_with_one_line(
    signum: int, status: int, name: str, synthetic_dir: Path, tmp_path: Path
) -> None:
    process = start_cli(synthetic_dir, tmp_path, "fit", *QUICK_RUN)
    wait_until_handling_signals(process)  # then seconds of importing torch and Lightning
    code, output = stop(process, signum)
    assert code == status, output[-3000:]
    assert "Traceback" not in output
    assert output.rstrip().splitlines()[-1] == f"stopped by {name}"
    assert not (tmp_path / "lightning_logs").exists() or not any((tmp_path / "lightning_logs").iterdir())


@pytest.mark.parametrize(
    ("signum", "status", "name"), [(signal.SIGINT, 130, "Ctrl-C"), (signal.SIGTERM, 143, "SIGTERM")]
)
def test_a_signal_during_a_test_stops_it_at_a_batch_with_one_line(
    signum: int, status: int, name: str, tiny_checkpoint: Path, synthetic_dir: Path, tmp_path: Path
) -> None:
    # The test of 300 images one at a time waits after its first one until it has the signal.
    markers = hold_at(tmp_path / "markers", "test")
    args = ["test", *SLOW, f"--ckpt_path={tiny_checkpoint}", marker_flag(markers)]
    process = start_cli(synthetic_dir, tmp_path, *args)
    wait_for_phase(markers, "test", process)
    code, output = stop(process, signum)
    assert code == status, output[-3000:]
    assert "Traceback" not in output and "test/acc" not in output, "stopped before the test's end"
    assert output.rstrip().splitlines()[-1] == f"stopped by {name}"


def test_a_second_ctrl_c_does_not_wait_for_the_end_of_the_step(synthetic_dir: Path, tmp_path: Path) -> None:
    markers = hold_at(tmp_path / "markers", "train-0")  # the fit waits after its first step until it has a signal
    process = start_cli(synthetic_dir, tmp_path, "fit", *SLOW, "--trainer.max_epochs=50", marker_flag(markers))
    wait_for_phase(markers, "train-0", process)
    process.send_signal(signal.SIGINT)
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 130, output[-3000:]
    assert "Traceback" not in output
    assert output.rstrip().splitlines()[-1].startswith("stopped by Ctrl-C")
