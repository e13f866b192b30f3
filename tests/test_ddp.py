"""Lightning's DDP on this machine's CPU: two processes (gloo), synthetic data, real `python -m mnist_lightning`."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from mnist_lightning.runs import read_checkpoint
from tests.synthetic import cli_command, subprocess_env

pytestmark = pytest.mark.ddp

# 1,000 training images in batches of 50: 20 steps per epoch in one process, 10 in each of two.
RUN = [
    "--data.val_size=200",
    "--data.batch_size=50",
    "--model.hidden_sizes=[32]",
    "--trainer.enable_progress_bar=false",
]
DDP = ["--trainer.strategy=ddp", "--trainer.accelerator=cpu", "--trainer.devices=2"]


def run(data_dir: Path, workdir: Path, *args: str) -> str:
    result = subprocess.run(
        cli_command(data_dir, *args), cwd=workdir, env=subprocess_env(), capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result.stdout + result.stderr


def test_accuracy(output: str) -> str:
    return re.findall(r"test/acc\s+([0-9.]+)", output)[-1]


test_accuracy.__test__ = False  # a helper, not a test


@pytest.fixture(scope="module")
def ddp_run(synthetic_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    workdir = tmp_path_factory.mktemp("ddp")
    output = run(synthetic_dir, workdir, "fit", *RUN, *DDP, "--trainer.max_epochs=2")
    return workdir, output


def test_two_processes_share_each_epoch_and_only_rank_0_writes(ddp_run: tuple[Path, str]) -> None:
    workdir, output = ddp_run
    assert [path.name for path in (workdir / "lightning_logs").iterdir()] == ["version_0"]
    run_folder = workdir / "lightning_logs" / "version_0"
    last = read_checkpoint(run_folder / "checkpoints" / "last.ckpt")
    assert last["epoch"] == 1 and last["global_step"] == 2 * 10, "each process takes half of each epoch"
    assert output.count("Best checkpoint") == 1 and output.count("Test accuracy") == 1
    assert len(list(run_folder.glob("config.yaml"))) == 1


def test_testing_under_ddp_gives_the_single_process_accuracy(ddp_run: tuple[Path, str], synthetic_dir: Path) -> None:
    workdir, _ = ddp_run
    checkpoint = f"--ckpt_path={workdir / 'lightning_logs' / 'version_0' / 'checkpoints' / 'last.ckpt'}"
    single = run(synthetic_dir, workdir, "test", *RUN, checkpoint)
    double = run(synthetic_dir, workdir, "test", *RUN, *DDP, checkpoint)
    assert test_accuracy(single) == test_accuracy(double)  # 300 test images split evenly, metrics synced


def test_a_run_resumes_across_ddp_and_a_single_process(synthetic_dir: Path, tmp_path: Path) -> None:
    last = tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    run(synthetic_dir, tmp_path, "fit", *RUN, "--trainer.max_epochs=1", "--test_after_fit=false")
    run(
        synthetic_dir,
        tmp_path,
        "fit",
        *RUN,
        *DDP,
        "--trainer.max_epochs=2",
        f"--ckpt_path={last}",
        "--test_after_fit=false",
    )
    assert read_checkpoint(last)["global_step"] == 20 + 10
    run(synthetic_dir, tmp_path, "fit", *RUN, "--trainer.max_epochs=3", f"--ckpt_path={last}", "--test_after_fit=false")
    state = read_checkpoint(last)
    assert state["epoch"] == 2 and state["global_step"] == 20 + 10 + 20
