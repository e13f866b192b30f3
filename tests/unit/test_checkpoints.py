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
    architecture_differences,
    dataset_of,
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


@pytest.mark.parametrize("subcommand", ["validate", "test", "predict"])
def test_evaluating_without_ckpt_path_uses_the_best_checkpoint_of_the_most_recent_run_and_says_so(
    subcommand: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "lightning_logs"
    saved_run(root, 0, 0.9, written_ns=2_000_000_000)
    newest = saved_run(root, 1, 0.8, written_ns=3_000_000_000)
    best = newest / "epoch00-val_acc0.8000.ckpt"
    assert resolve_checkpoint(subcommand, None, root) == resolve_checkpoint(subcommand, "best", root) == str(best)
    assert resolve_checkpoint(subcommand, "last", root) == str(newest / "last.ckpt")
    assert capsys.readouterr().err.splitlines() == [
        f"Using the best checkpoint of the most recent run that has one: {best}",
        f"Using the best checkpoint of the most recent run that has one: {best}",
        f"Using the last checkpoint of the most recent run that has one: {newest / 'last.ckpt'}",
    ]
    assert resolve_checkpoint(subcommand, "mine.ckpt", root) == "mine.ckpt", "a file is taken as it is"


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
    assert resolve_checkpoint("fit", None, root) is None, "a fresh fit"
    newest = saved_run(root, 0, 0.9, written_ns=2_000_000_000)
    assert resolve_checkpoint("fit", "last", root) == str(newest / "last.ckpt")
    assert capsys.readouterr().err == "", "a resumed fit says `Resuming ...` itself"
    with pytest.raises(CheckpointError, match="fit --ckpt_path best: resuming needs the latest state"):
        resolve_checkpoint("fit", "best", root)


def test_a_checkpoint_records_its_dataset_its_score_and_its_network() -> None:
    fashion = {"name": "fashion_mnist", "image_shape": [1, 28, 28], "classes": list("abcdefghij"), "mean": 0, "std": 1}
    recorded = {"MNISTDataModule": {"dataset": fashion}, "hyper_parameters": {"hidden_sizes": [32], "input_size": 784}}
    recorded["callbacks"] = {"ModelCheckpoint{'monitor': 'val/acc'}": {"monitor": "val/acc", "current_score": 0.5}}
    spec = dataset_of(recorded, "--ckpt_path x.ckpt")
    assert spec.name == "fashion_mnist" and spec.classes == tuple("abcdefghij"), "the recorded classes count"
    assert val_accuracy_of(recorded) == 0.5
    assert architecture_differences(recorded, {"hidden_sizes": (64, 64), "input_size": 784}) == [
        "hidden_sizes=[32] in the checkpoint, [64, 64] here"
    ]
    earlier = {"datamodule_hyper_parameters": {"dataset": "fashion_mnist"}, "state_dict": {}}
    assert dataset_of(earlier, "x").classes[0] == "T-shirt/top", "earlier checkpoints record the dataset's name"
    assert dataset_of({"state_dict": {}}, "x").name == "mnist"
