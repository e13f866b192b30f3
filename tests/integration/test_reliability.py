"""Bad input and failures, in this process: each mistake gets one clear line before anything is lost, a checkpoint
that would run code never runs it, and a diverging fit stops at once keeping the last good checkpoint."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import lightning as L
import pytest
import torch

from mnist_lightning import MNISTClassifier, MNISTDataModule, interrupts
from mnist_lightning.callbacks.last_checkpoint import LastCheckpoint
from mnist_lightning.callbacks.stop import StopOnSignal
from mnist_lightning.cli import cli_main
from mnist_lightning.errors import TrainingDiverged
from mnist_lightning.runs.checkpoints import read_checkpoint
from tests.helpers import TINY_RUN, CodeOnUnpickling, one_line_error, trust_for_one_test


@pytest.mark.parametrize(
    ("flag", "named"),
    [
        ("--model.hidden_sizes=[]", "hidden_sizes"),
        ("--model.hidden_sizes=[100, -5]", "hidden_sizes"),
        ("--model.dropout=1.0", "dropout"),
        ("--model.lr=0", "lr"),
        ("--data.batch_size=0", "batch_size"),
        ("--data.val_size=1200", "val_size"),
        ("--data.dataset=fashion", "'fashion' is not a known dataset: did you mean fashion_mnist?"),
    ],
)
def test_invalid_values_stop_before_training_with_one_line(
    synthetic_mnist: Path, workdir: Path, capsys, flag: str, named: str
) -> None:
    line = one_line_error(capsys, ["fit", f"--data.data_dir={synthetic_mnist}", *TINY_RUN, flag])
    assert named in line
    assert not list(workdir.glob("lightning_logs/*/checkpoints/*.ckpt"))


def test_a_checkpoint_of_another_network_is_used_as_it_is_and_the_difference_named(
    tiny_checkpoint: Path, synthetic_mnist: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    args = [
        "test",
        f"--data.data_dir={synthetic_mnist}",
        "--model.hidden_sizes=[64, 64]",
        f"--ckpt_path={tiny_checkpoint}",
    ]
    cli = cli_main([*args, "--trainer.enable_progress_bar=false"])
    assert f"note: {tiny_checkpoint}: hidden_sizes=[32] from the checkpoint, not [64, 64]\n" in capsys.readouterr().err
    assert cli.model.hparams.hidden_sizes == [32]
    assert cli.trainer.callback_metrics["test/acc"] > 0.5


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda good, bad: None, "no such file"),
        (lambda good, bad: bad.write_text("not a checkpoint"), "not written by torch.save"),
        (
            lambda good, bad: torch.save({"state_dict": {}, "hyper_parameters": {"vocab_size": 3}}, bad),
            "not a checkpoint of this project's MNISTClassifier (it has hyperparameters vocab_size)",
        ),
        (lambda good, bad: bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2]), "not a complete checkpoint"),
    ],
)
def test_missing_truncated_or_foreign_checkpoints_get_one_line(
    tiny_checkpoint: Path, synthetic_mnist: Path, tmp_path: Path, monkeypatch, capsys, make, reason: str
) -> None:
    bad = tmp_path / "bad.ckpt"
    make(tiny_checkpoint, bad)
    monkeypatch.chdir(tmp_path)
    line = one_line_error(capsys, ["test", f"--data.data_dir={synthetic_mnist}", f"--ckpt_path={bad}"])
    assert reason in line and str(bad) in line


def test_a_checkpoint_that_would_run_code_is_refused_and_the_code_does_not_run(
    tiny_checkpoint: Path, synthetic_mnist: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    marker = tmp_path / "pwned"
    crafted = tmp_path / "crafted.ckpt"
    checkpoint = torch.load(tiny_checkpoint, weights_only=True)
    checkpoint["payload"] = CodeOnUnpickling(marker)
    torch.save(checkpoint, crafted)
    monkeypatch.chdir(tmp_path)
    for subcommand in ("test", "predict", "fit"):
        line = one_line_error(capsys, [subcommand, f"--data.data_dir={synthetic_mnist}", f"--ckpt_path={crafted}"])
        assert "refused by torch.load(weights_only=True)" in line and "could run code" in line
    assert not marker.exists()


def test_an_unwritable_data_folder_gets_one_line(tmp_path: Path, monkeypatch, capsys) -> None:
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    monkeypatch.chdir(tmp_path)
    line = one_line_error(capsys, ["fit", f"--data.data_dir={not_a_folder / 'data'}"])
    assert f"could not write the data folder {not_a_folder / 'data'} (Not a directory): a file stands where a" in line
    assert "--data.data_dir" in line


def test_a_corrupt_data_file_gets_one_line_and_is_kept(
    synthetic_dir: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    data_dir = tmp_path / "data"
    shutil.copytree(synthetic_dir, data_dir)
    trust_for_one_test(monkeypatch, data_dir)
    raw = data_dir / "MNIST" / "raw"
    (raw / ".verified.json").unlink()
    labels = raw / "train-labels-idx1-ubyte"
    labels.write_bytes(labels.read_bytes()[:100])
    monkeypatch.chdir(tmp_path)
    line = one_line_error(capsys, ["fit", f"--data.data_dir={data_dir}", *TINY_RUN])
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
    args = ["fit", f"--data.data_dir={synthetic_mnist}", *TINY_RUN, f"--trainer.logger.init_args.save_dir={blocker}"]
    line = one_line_error(capsys, args)
    assert "could not write the log folder" in line and "a file stands where a folder is needed" in line
    assert "--trainer.logger.init_args.save_dir DIR" in line


class SignalAtPredictBatch(L.Callback):
    """Sends this process SIGINT at the end of prediction batch `at`, and counts the batches predicted."""

    def __init__(self, at: int) -> None:
        self.at, self.batches = at, 0

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self.batches += 1
        if batch_idx == self.at:
            os.kill(os.getpid(), signal.SIGINT)


def test_ctrl_c_during_predict_stops_it_at_the_batch_end_with_status_130(capsys) -> None:
    images = torch.utils.data.TensorDataset(torch.rand(40, 1, 28, 28), torch.zeros(40, dtype=torch.long))
    sender = SignalAtPredictBatch(at=1)  # before StopOnSignal, which then sees the signal at the same batch end
    trainer = L.Trainer(callbacks=[sender, StopOnSignal()], logger=False, enable_progress_bar=False)
    with pytest.raises(SystemExit) as stopped, interrupts.handled():
        trainer.predict(MNISTClassifier(hidden_sizes=[8]), torch.utils.data.DataLoader(images, batch_size=4))
    assert stopped.value.code == 130
    assert sender.batches == 2, "stopped at the end of the batch in flight, not after all 10"
    assert capsys.readouterr().err.strip().splitlines()[-1] == "stopped by Ctrl-C"
