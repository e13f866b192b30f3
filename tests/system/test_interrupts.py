"""Ctrl-C and SIGTERM at any moment of a command: one line (with the resume command where there is something to
resume), exit status 130 or 143, no traceback. (A stopped fit's resume is tested in test_cli_processes.py.)"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers import QUICK_RUN, start_cli, write_synthetic_mnist

SLOW = ["--data.val_size=200", "--data.batch_size=1", "--trainer.enable_progress_bar=false"]


@pytest.fixture(scope="module")
def many_test_images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Synthetic data with 20,000 test images: tested one at a time, they take long enough to be stopped midway."""
    data_dir = tmp_path_factory.mktemp("many-test-images")
    write_synthetic_mnist(data_dir, test=20000)
    return data_dir


def stop(process: subprocess.Popen, signum: int) -> tuple[int, str]:
    process.send_signal(signum)
    output, _ = process.communicate(timeout=120)
    return process.returncode, output


def wait_for_line(process: subprocess.Popen, text: str, timeout: float = 120) -> str:
    """Read the process's output until a line holds `text`; return what was read."""
    read, deadline = [], time.monotonic() + timeout
    for line in process.stdout:
        read.append(line)
        if text in line:
            return "".join(read)
        assert time.monotonic() < deadline, "".join(read)[-3000:]
    raise AssertionError("the process ended first:\n" + "".join(read)[-3000:])


@pytest.mark.parametrize(
    ("signum", "status", "name"), [(signal.SIGINT, 130, "Ctrl-C"), (signal.SIGTERM, 143, "SIGTERM")]
)
def test_a_signal_during_start_up_ends_with_one_line(
    signum: int, status: int, name: str, synthetic_dir: Path, tmp_path: Path
) -> None:
    process = start_cli(synthetic_dir, tmp_path, "fit", *QUICK_RUN)
    time.sleep(1.0)  # importing torch and Lightning
    code, output = stop(process, signum)
    assert code == status, output[-3000:]
    assert "Traceback" not in output
    assert output.rstrip().splitlines()[-1] == f"stopped by {name}"
    assert not (tmp_path / "lightning_logs").exists() or not any((tmp_path / "lightning_logs").iterdir())


@pytest.mark.parametrize(
    ("signum", "status", "name"), [(signal.SIGINT, 130, "Ctrl-C"), (signal.SIGTERM, 143, "SIGTERM")]
)
def test_a_signal_during_a_test_stops_it_at_a_batch_with_one_line(
    signum: int, status: int, name: str, tiny_checkpoint: Path, many_test_images: Path, tmp_path: Path
) -> None:
    process = start_cli(many_test_images, tmp_path, "test", *SLOW, f"--ckpt_path={tiny_checkpoint}")
    wait_for_line(process, "Restoring states from the checkpoint")
    time.sleep(0.3)
    code, output = stop(process, signum)
    assert code == status, output[-3000:]
    assert "Traceback" not in output and "test/acc" not in output, "stopped before the test's end"
    assert output.rstrip().splitlines()[-1] == f"stopped by {name}"


def test_a_second_ctrl_c_does_not_wait_for_the_end_of_the_step(synthetic_dir: Path, tmp_path: Path) -> None:
    process = start_cli(synthetic_dir, tmp_path, "fit", *SLOW, "--trainer.max_epochs=50")
    wait_for_line(process, "Total params")
    time.sleep(0.5)
    process.send_signal(signal.SIGINT)
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 130, output[-3000:]
    assert "Traceback" not in output
    assert output.rstrip().splitlines()[-1].startswith("stopped by Ctrl-C")
