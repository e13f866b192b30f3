"""Checkpoints before anything loads them: read safely, what they record, and what `--ckpt_path` (a file, `last`,
`best` or none) resolves to."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from mnist_lightning.errors import CheckpointError
from mnist_lightning.files import HOST
from mnist_lightning.runs.checkpoints import (
    dataset_of,
    model_settings,
    read_checkpoint,
    resolve_checkpoint,
    val_accuracy_of,
)
from tests.helpers import plain_checkpoint


def test_a_checkpoint_that_does_not_load_outside_a_run_names_the_newest_beside_it(tmp_path: Path) -> None:
    older, newer_but_broken = tmp_path / "older.ckpt", tmp_path / "newer.ckpt"
    torch.save(plain_checkpoint(1), older)
    newer_but_broken.write_bytes(b"not a checkpoint")
    (tmp_path / f".wanted.ckpt.{os.getpid()}@{HOST}.0a1b2c3d.tmp").write_bytes(b"partial")
    os.utime(older, ns=(1, 1))
    with pytest.raises(CheckpointError) as error:
        read_checkpoint(tmp_path / "wanted.ckpt")
    assert str(error.value) == (
        f"--ckpt_path {tmp_path / 'wanted.ckpt'}: no such file; the newest checkpoint beside it that loads is "
        f"{older}: pass --ckpt_path {older} instead"
    )


def saved_run(root: Path, version: int, best: float, written_ns: int) -> Path:
    """`root/version_N/checkpoints/` with a best checkpoint and last.ckpt written at `written_ns`: its folder."""
    folder = root / f"version_{version}" / "checkpoints"
    folder.mkdir(parents=True)
    for name in (f"epoch00-val_acc{best:.4f}.ckpt", "last.ckpt"):
        torch.save(plain_checkpoint(version), folder / name)
        os.utime(folder / name, ns=(written_ns, written_ns))
    return folder


def path_of(subcommand: str, ckpt_path: str | None, root: Path, last_file: str = "last.ckpt") -> str | None:
    """The file `resolve_checkpoint` finds, checking that it hands over what that file holds (read once)."""
    path, content = resolve_checkpoint(subcommand, ckpt_path, root, last_file)
    assert content is not None and content["global_step"] == torch.load(path, weights_only=True)["global_step"]
    return path


@pytest.mark.parametrize("subcommand", ["validate", "test", "predict"])
def test_evaluating_without_ckpt_path_uses_the_best_checkpoint_of_the_most_recent_run_and_says_so(
    subcommand: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "lightning_logs"
    saved_run(root, 0, 0.9, written_ns=2_000_000_000)
    newest = saved_run(root, 1, 0.8, written_ns=3_000_000_000)
    best = newest / "epoch00-val_acc0.8000.ckpt"
    assert path_of(subcommand, None, root) == path_of(subcommand, "best", root) == str(best)
    assert path_of(subcommand, "last", root) == str(newest / "last.ckpt")
    assert capsys.readouterr().err.splitlines() == [
        f"Using the best checkpoint of the most recent run that has one: {best}",
        f"Using the best checkpoint of the most recent run that has one: {best}",
        f"Using the last checkpoint of the most recent run that has one: {newest / 'last.ckpt'}",
    ]
    assert resolve_checkpoint(subcommand, "mine.ckpt", root) == ("mine.ckpt", None), "a file is taken as it is"


@pytest.mark.parametrize("subcommand", ["validate", "test", "predict"])
def test_evaluating_with_no_trained_run_says_how_to_get_one(subcommand: str, tmp_path: Path) -> None:
    root = tmp_path / "lightning_logs"
    with pytest.raises(CheckpointError) as error:
        resolve_checkpoint(subcommand, None, root)
    assert str(error.value) == (
        f"{subcommand} with no --ckpt_path: no run under {root} has a best checkpoint that loads: train one with "
        "`python -m mnist_lightning fit`, or pass --ckpt_path FILE"
    )


def test_fit_resumes_only_from_last_or_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "lightning_logs"
    assert resolve_checkpoint("fit", None, root) == (None, None), "a fresh fit"
    newest = saved_run(root, 0, 0.9, written_ns=2_000_000_000)
    assert path_of("fit", "last", root) == str(newest / "last.ckpt")
    assert capsys.readouterr().err == "", "a resumed fit says `Resuming ...` itself"
    with pytest.raises(CheckpointError, match="fit --ckpt_path best: resuming needs the latest state"):
        resolve_checkpoint("fit", "best", root)


def test_last_is_the_file_the_last_checkpoint_callback_writes_whatever_its_name(tmp_path: Path) -> None:
    """`fit --last_checkpoint.filename mine` writes mine.ckpt, and `--ckpt_path last` finds it; best is never it."""
    root = tmp_path / "lightning_logs"
    folder = root / "version_0" / "checkpoints"
    folder.mkdir(parents=True)
    torch.save(plain_checkpoint(1), folder / "epoch00-val_acc0.5000.ckpt")
    torch.save(plain_checkpoint(2), folder / "mine.ckpt")
    assert path_of("fit", "last", root, "mine.ckpt") == str(folder / "mine.ckpt")
    assert path_of("test", "best", root, "mine.ckpt") == str(folder / "epoch00-val_acc0.5000.ckpt")
    with pytest.raises(CheckpointError, match=r"no run under .* has a last checkpoint"):
        resolve_checkpoint("fit", "last", root)  # last.ckpt: there is none


def test_a_checkpoint_records_its_dataset_and_its_score() -> None:
    fashion = {"name": "fashion_mnist", "image_shape": [1, 28, 28], "classes": list("abcdefghij")}
    recorded = {"MNISTDataModule": {"dataset": fashion}, "hyper_parameters": {"hidden_sizes": [32], "input_size": 784}}
    recorded["callbacks"] = {"ModelCheckpoint{'monitor': 'val/acc'}": {"monitor": "val/acc", "current_score": 0.5}}
    spec = dataset_of(recorded, "--ckpt_path x.ckpt")
    assert spec.name == "fashion_mnist" and spec.classes == tuple("abcdefghij"), "the recorded classes count"
    assert val_accuracy_of(recorded) == 0.5
    with pytest.raises(CheckpointError, match="x does not record its dataset: use a checkpoint written by"):
        dataset_of({"state_dict": {}}, "x")


SAVED = {"hidden_sizes": [32], "dropout": 0.0, "lr": 0.001, "weight_decay": 0.0, "lr_schedule": "constant", "mean": 0.5}
DEFAULTS = {"hidden_sizes": (100,), "dropout": 0.0, "lr": 0.001, "weight_decay": 0.0, "lr_schedule": "constant"}


def test_a_resumed_fit_applies_a_new_learning_rate_and_dropout_and_keeps_the_network() -> None:
    checkpoint = {"hyper_parameters": {**SAVED, "_instantiator": "x"}}
    given = {**DEFAULTS, "hidden_sizes": [64], "lr": 0.01, "dropout": 0.2}
    settings, notes = model_settings(checkpoint, given, DEFAULTS, resuming=True)
    assert settings == {**SAVED, "lr": 0.01, "dropout": 0.2}, "the trained network's settings and mean stay"
    assert notes == [
        "hidden_sizes=[32] from the checkpoint, not [64]",
        "dropout=0.2 applied (the checkpoint trained with 0.0)",
        "lr=0.01 applied (the checkpoint trained with 0.001)",
    ]
    assert model_settings(checkpoint, DEFAULTS, DEFAULTS, resuming=True) == (SAVED, []), "nothing given, no note"


def test_evaluating_or_a_schedule_takes_every_setting_from_the_checkpoint() -> None:
    given = {**DEFAULTS, "lr": 0.01}
    assert model_settings({"hyper_parameters": SAVED}, given, DEFAULTS, resuming=False) == (
        SAVED,
        ["lr=0.001 from the checkpoint, not 0.01"],
    )
    scheduled = {**SAVED, "lr_schedule": "one_cycle"}
    settings, notes = model_settings({"hyper_parameters": scheduled}, given, DEFAULTS, resuming=True)
    assert settings["lr"] == 0.001 and notes == ["lr=0.001 from the checkpoint, not 0.01"]
