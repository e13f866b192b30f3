"""Lightning's DDP on this machine's CPU: two processes (gloo), synthetic data, real `python -m mnist_lightning`."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from mnist_lightning.runs.checkpoints import read_checkpoint
from tests.helpers import printed_path, printed_test_accuracy, run_cli

pytestmark = pytest.mark.ddp

# 1,000 training images in batches of 50: 20 steps per epoch in one process, 10 in each of two.
RUN = [
    "--data.val_size=200",
    "--data.batch_size=50",
    "--model.hidden_sizes=[32]",
    "--trainer.enable_progress_bar=false",
]
DDP = ["--trainer.strategy=ddp", "--trainer.accelerator=cpu", "--trainer.devices=2"]


@pytest.fixture(scope="module")
def ddp_run(synthetic_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    workdir = tmp_path_factory.mktemp("ddp")
    output = run_cli(synthetic_dir, workdir, "fit", *RUN, *DDP, "--trainer.max_epochs=2")
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
    workdir, fit_output = ddp_run
    # The test after the DDP fit ran under DDP too, on the best checkpoint, which it names.
    best = printed_path("Best checkpoint", fit_output)
    single = run_cli(synthetic_dir, workdir, "test", *RUN, f"--ckpt_path={best}")
    # 300 test images split evenly, metrics synced.
    assert printed_test_accuracy(single) == printed_test_accuracy(fit_output)


def test_a_run_resumes_across_ddp_and_a_single_process(
    tiny_checkpoint: Path, synthetic_dir: Path, tmp_path: Path
) -> None:
    # The session's tiny run: one epoch of RUN in a single process.
    shutil.copytree(tiny_checkpoint.parents[2], tmp_path / "lightning_logs")
    last = tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    assert read_checkpoint(last)["global_step"] == 20
    resume = [f"--ckpt_path={last}", "--test_after_fit=false"]
    run_cli(synthetic_dir, tmp_path, "fit", *RUN, *DDP, "--trainer.max_epochs=2", *resume)
    assert read_checkpoint(last)["global_step"] == 20 + 10
    run_cli(synthetic_dir, tmp_path, "fit", *RUN, "--trainer.max_epochs=3", *resume)
    state = read_checkpoint(last)
    assert state["epoch"] == 2 and state["global_step"] == 20 + 10 + 20


def test_ddp_spawn_fits_tests_and_writes_one_config(synthetic_dir: Path, tmp_path: Path) -> None:
    spawn = ["--trainer.strategy=ddp_spawn", "--trainer.accelerator=cpu", "--trainer.devices=2"]
    output = run_cli(synthetic_dir, tmp_path, "fit", *RUN, *spawn, "--trainer.max_epochs=1")
    run = tmp_path / "lightning_logs" / "version_0"
    assert [path.name for path in (tmp_path / "lightning_logs").iterdir()] == ["version_0"]
    assert read_checkpoint(run / "checkpoints" / "last.ckpt")["global_step"] == 10
    assert (run / "config.yaml").is_file() and output.count("Test accuracy") == 1
