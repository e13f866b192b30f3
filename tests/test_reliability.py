"""Interruptions and bad input: nothing a user has is lost, and each mistake gets one clear line."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch

from mnist_lightning import MNISTClassifier, MNISTDataModule
from mnist_lightning.cli import cli_main
from mnist_lightning.errors import TrainingDiverged
from mnist_lightning.runs import LastCheckpoint, read_checkpoint
from mnist_lightning.sources import DATASETS
from tests.synthetic import cli_command, one_line_error, subprocess_env

# 100 steps per epoch, enough epochs that a signal always lands during training.
# 500 steps per epoch, long enough (half a second or more) for a signal sent 0.3 s into the second epoch to land there.
LONG_RUN = ["--data.val_size=200", "--data.batch_size=2", "--model.hidden_sizes=[32]", "--trainer.max_epochs=4"]
QUICK_RUN = ["--data.val_size=200", "--data.batch_size=50", "--model.hidden_sizes=[32]", "--trainer.max_epochs=1"]
QUICK_RUN += ["--trainer.enable_progress_bar=false"]


@pytest.fixture(autouse=True)
def no_pytest_argv(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["mnist-lightning"])


def start_fit(data_dir: Path, workdir: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        cli_command(data_dir, "fit", *args),
        cwd=workdir,
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, process.stdout.read()[-3000:]
        assert time.monotonic() < deadline, f"{path} did not appear in {timeout} s"
        time.sleep(0.05)


@pytest.mark.parametrize(("signum", "exit_code"), [(signal.SIGINT, 1), (signal.SIGTERM, 128 + 15)])
def test_a_signal_saves_the_state_and_the_printed_command_resumes_to_the_same_epoch_count(
    synthetic_dir: Path, tmp_path: Path, signum: int, exit_code: int
) -> None:
    run = tmp_path / "lightning_logs" / "version_0"
    process = start_fit(synthetic_dir, tmp_path, *LONG_RUN, "--test_after_fit=false")
    wait_for(run / "checkpoints" / "last.ckpt", process)
    time.sleep(0.3)  # into the second epoch
    process.send_signal(signum)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == exit_code, output[-3000:]
    resume = re.search(r"Resume with: python -m mnist_lightning (fit .*)", output).group(1).split()
    interrupted = read_checkpoint(run / "checkpoints" / "last.ckpt")
    assert 500 <= interrupted["global_step"] < 2000, "stopped in the second epoch or later, before the end"

    resumed = subprocess.run(
        cli_command(synthetic_dir, *resume, "--test_after_fit=false"),
        cwd=tmp_path,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    final = read_checkpoint(run / "checkpoints" / "last.ckpt")
    assert final["epoch"] == 3, "the resumed run ends at the epoch count of an uninterrupted one"
    assert final["global_step"] > interrupted["global_step"]


def test_kill_9_never_leaves_a_broken_checkpoint(synthetic_dir: Path, tmp_path: Path) -> None:
    checkpoints = tmp_path / "lightning_logs" / "version_0" / "checkpoints"
    process = start_fit(synthetic_dir, tmp_path, *LONG_RUN)
    wait_for(checkpoints / "last.ckpt", process)
    # Kill it at a moment that is likely inside a checkpoint write: right after a new one appears.
    seen = {path.name: path.stat().st_mtime_ns for path in checkpoints.iterdir()}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        now = {path.name: path.stat().st_mtime_ns for path in checkpoints.iterdir() if path.exists()}
        if now != seen:
            break
        time.sleep(0.001)
    process.kill()
    process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL
    for path in checkpoints.glob("*.ckpt"):
        assert read_checkpoint(path)["state_dict"], path


def test_two_runs_started_together_get_their_own_folders(synthetic_dir: Path, tmp_path: Path) -> None:
    processes = [start_fit(synthetic_dir, tmp_path, *QUICK_RUN) for _ in range(2)]
    outputs = [process.communicate(timeout=300)[0] for process in processes]
    assert [process.returncode for process in processes] == [0, 0], outputs
    folders = sorted(re.search(r"Run folder\s+(\S+)", output).group(1) for output in outputs)
    assert folders == ["lightning_logs/version_0", "lightning_logs/version_1"]
    for folder in folders:
        assert (tmp_path / folder / "config.yaml").exists() and (tmp_path / folder / "checkpoints").exists()


@pytest.mark.parametrize(
    ("flag", "named"),
    [
        ("--model.hidden_sizes=[]", "hidden_sizes"),
        ("--model.hidden_sizes=[100, -5]", "hidden_sizes"),
        ("--model.dropout=1.0", "dropout"),
        ("--model.lr=0", "lr"),
        ("--data.batch_size=0", "batch_size"),
        ("--data.val_size=1200", "val_size"),
    ],
)
def test_invalid_values_stop_before_training_with_one_line(
    synthetic_mnist: Path, tmp_path: Path, monkeypatch, capsys, flag: str, named: str
) -> None:
    monkeypatch.chdir(tmp_path)
    line = one_line_error(capsys, ["fit", f"--data.data_dir={synthetic_mnist}", *QUICK_RUN, flag])
    assert named in line
    assert not list(tmp_path.glob("lightning_logs/*/checkpoints/*.ckpt"))


@pytest.mark.parametrize(
    "args",
    [["fit", "--model.no_such_key=1"], ["fit", "--config=missing.yaml"], ["fit", "--config=pyproject.toml"]],
)
def test_unknown_keys_and_bad_config_files_exit_non_zero(args: list[str], capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli_main(args)
    assert exit_info.value.code != 0
    assert "error" in capsys.readouterr().err.lower()


@pytest.fixture(scope="module")
def trained(synthetic_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The checkpoint of a one-epoch run with hidden_sizes [32]."""
    workdir = tmp_path_factory.mktemp("trained")
    result = subprocess.run(
        cli_command(synthetic_dir, "fit", *QUICK_RUN, "--test_after_fit=false"),
        cwd=workdir,
        env=subprocess_env(),
        capture_output=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"


def test_a_checkpoint_of_another_network_is_used_as_it_is_and_the_difference_named(
    trained: Path, synthetic_mnist: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    args = ["test", f"--data.data_dir={synthetic_mnist}", "--model.hidden_sizes=[64, 64]", f"--ckpt_path={trained}"]
    cli = cli_main([*args, "--trainer.enable_progress_bar=false"])
    assert "hidden_sizes=[32] in the checkpoint, [64, 64] here" in capsys.readouterr().err
    assert cli.model.hparams.hidden_sizes == [32]
    assert cli.trainer.callback_metrics["test/acc"] > 0.5


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda good, bad: None, "no such file"),
        (lambda good, bad: bad.write_text("not a checkpoint"), "refused by torch.load(weights_only=True)"),
        (lambda good, bad: bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2]), "not a complete checkpoint"),
    ],
)
def test_missing_truncated_or_foreign_checkpoints_get_one_line(
    trained: Path, synthetic_mnist: Path, tmp_path: Path, monkeypatch, capsys, make, reason: str
) -> None:
    bad = tmp_path / "bad.ckpt"
    make(trained, bad)
    monkeypatch.chdir(tmp_path)
    line = one_line_error(capsys, ["test", f"--data.data_dir={synthetic_mnist}", f"--ckpt_path={bad}"])
    assert reason in line and str(bad) in line


class WritesAFile:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def test_a_checkpoint_that_would_run_code_is_refused_and_the_code_does_not_run(
    trained: Path, synthetic_mnist: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    marker = tmp_path / "pwned"
    crafted = tmp_path / "crafted.ckpt"
    checkpoint = torch.load(trained, weights_only=True)
    checkpoint["payload"] = WritesAFile(marker)
    torch.save(checkpoint, crafted)
    monkeypatch.chdir(tmp_path)
    for subcommand in ("test", "predict", "fit"):
        line = one_line_error(capsys, [subcommand, f"--data.data_dir={synthetic_mnist}", f"--ckpt_path={crafted}"])
        assert "could run code" in line
    assert not marker.exists()


def test_an_unwritable_data_folder_gets_one_line(tmp_path: Path, monkeypatch, capsys) -> None:
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    monkeypatch.chdir(tmp_path)
    line = one_line_error(capsys, ["fit", f"--data.data_dir={not_a_folder / 'data'}"])
    assert "not writable" in line and "--data.data_dir" in line


def test_a_corrupt_data_file_gets_one_line_and_is_kept(
    synthetic_dir: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    import shutil

    from tests.synthetic import trust_synthetic_mnist

    data_dir = tmp_path / "data"
    shutil.copytree(synthetic_dir, data_dir)
    monkeypatch.setitem(DATASETS, "mnist", DATASETS["mnist"])
    trust_synthetic_mnist(data_dir)
    raw = data_dir / "MNIST" / "raw"
    (raw / ".verified.json").unlink()
    labels = raw / "train-labels-idx1-ubyte"
    labels.write_bytes(labels.read_bytes()[:100])
    monkeypatch.chdir(tmp_path)
    line = one_line_error(capsys, ["fit", f"--data.data_dir={data_dir}", *QUICK_RUN])
    assert str(labels) in line and "truncated" in line
    assert labels.stat().st_size == 100


class PoisonedAt25(MNISTClassifier):
    """Weights turn infinite at step 25, in the second epoch of 20 steps."""

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        if self.global_step == 25:
            self.net[1].weight.data.fill_(float("inf"))


@pytest.mark.filterwarnings("ignore:Encountered `nan` values")  # torchmetrics, about the poisoned step
def test_divergence_stops_at_once_naming_the_step_and_keeps_the_last_good_checkpoint(
    synthetic_mnist: Path, tmp_path: Path
) -> None:
    last = LastCheckpoint(dirpath=tmp_path, filename="last", monitor=None, save_on_exception=True)
    trainer = L.Trainer(max_epochs=3, callbacks=[last], logger=False, enable_progress_bar=False)
    data = MNISTDataModule(data_dir=synthetic_mnist, batch_size=50, val_size=200)
    with pytest.raises(TrainingDiverged, match=r"at step 25 \(epoch 1\).*--model\.lr"):
        trainer.fit(PoisonedAt25(hidden_sizes=[32]), datamodule=data)
    saved = read_checkpoint(tmp_path / "last.ckpt")
    assert saved["global_step"] == 20 and saved["epoch"] == 0
    assert all(torch.isfinite(tensor).all() for tensor in saved["state_dict"].values())


def test_an_unwritable_log_folder_gets_one_line(synthetic_mnist: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.chdir(tmp_path)
    args = ["fit", f"--data.data_dir={synthetic_mnist}", *QUICK_RUN, f"--trainer.logger.init_args.save_dir={blocker}"]
    line = one_line_error(capsys, args)
    assert "log folder" in line and "not writable" in line and "save_dir" in line
