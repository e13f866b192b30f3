"""The real MNIST on this machine: fetched through the whole chain, and a short training run on it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mnist_lightning import MNISTDataModule
from mnist_lightning.sources import DATASETS, IDX_FILES, ensure_raw_files, sha256_of

pytestmark = pytest.mark.integration

# Published per-digit counts of the official training and test sets.
TRAIN_LABEL_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_LABEL_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_the_chain_obtains_verified_mnist_into_an_empty_folder(tmp_path: Path) -> None:
    spec = DATASETS["mnist"]
    raw = ensure_raw_files(spec, tmp_path)
    assert {name: sha256_of(raw / name) for name in IDX_FILES} == dict(spec.sha256)

    datamodule = MNISTDataModule(data_dir=tmp_path)
    datamodule.setup("fit")
    datamodule.setup("test")
    train_labels = torch.cat([datamodule.train_set.labels, datamodule.val_set.labels])
    assert train_labels.bincount().tolist() == TRAIN_LABEL_COUNTS
    assert datamodule.test_set.labels.bincount().tolist() == TEST_LABEL_COUNTS
    assert (len(datamodule.train_set), len(datamodule.val_set)) == (55_000, 5_000)

    normalized = datamodule.normalize(torch.cat([datamodule.train_set.images, datamodule.val_set.images]))
    assert normalized.mean().item() == pytest.approx(0, abs=1e-3)
    assert normalized.std().item() == pytest.approx(1, abs=1e-3)


def test_two_epochs_of_the_seed_configuration_pass_95_percent(tmp_path: Path) -> None:
    config = Path(__file__).resolve().parent.parent / "configs" / "seed.yaml"
    command = [sys.executable, "-m", "mnist_lightning", "fit", f"--config={config}", "--trainer.max_epochs=2"]
    command.append("--trainer.enable_progress_bar=false")
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    test_accuracy = float(re.search(r"Test accuracy\s+([0-9.]+)", result.stdout).group(1))
    assert test_accuracy >= 0.95
