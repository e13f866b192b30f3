"""Batch distortion in training: only training batches are distorted, and without it they are the stored images."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch

from mnist_lightning import MNISTClassifier, MNISTDataModule


def exact_distances(rows: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
    return torch.cdist(rows, references, compute_mode="donot_use_mm_for_euclid_dist")


def test_training_batches_are_distorted_and_validation_and_test_batches_are_not(synthetic_mnist: Path) -> None:
    seen: dict[str, list[torch.Tensor]] = {"train": [], "val": [], "test": []}

    class Recorder(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            seen["train"].append(batch[0])

        def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
            seen["val"].append(batch[0])

        def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
            seen["test"].append(batch[0])

    datamodule = MNISTDataModule(data_dir=synthetic_mnist, batch_size=100, val_size=200, rotation=10, shift=2)
    trainer = L.Trainer(
        max_epochs=1, limit_train_batches=3, callbacks=[Recorder()], logger=False, enable_checkpointing=False
    )
    model = MNISTClassifier(hidden_sizes=[8])
    trainer.fit(model, datamodule=datamodule)
    trainer.test(model, datamodule=datamodule, verbose=False)

    def undistorted(dataset) -> torch.Tensor:
        return datamodule.pixels(dataset.images).flatten(1)

    # Validation and test batches come in order: they are the stored images, as pixels in [0, 1].
    sanity_and_val = torch.cat(seen["val"]).flatten(1)
    torch.testing.assert_close(sanity_and_val[-200:], undistorted(datamodule.val_set))
    torch.testing.assert_close(torch.cat(seen["test"]).flatten(1), undistorted(datamodule.test_set))
    # No training image is one of the stored ones.
    distances = exact_distances(torch.cat(seen["train"]).flatten(1), undistorted(datamodule.train_set))
    assert distances.min(dim=1).values.min() > 1


def test_the_same_training_batches_without_distortion_are_stored_images(synthetic_mnist: Path) -> None:
    batches: list[torch.Tensor] = []

    class Recorder(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            batches.append(batch[0])

    datamodule = MNISTDataModule(data_dir=synthetic_mnist, batch_size=100, val_size=200)
    trainer = L.Trainer(
        max_epochs=1,
        limit_train_batches=3,
        limit_val_batches=0,
        callbacks=[Recorder()],
        logger=False,
        enable_checkpointing=False,
    )
    trainer.fit(MNISTClassifier(hidden_sizes=[8]), datamodule=datamodule)
    stored = datamodule.pixels(datamodule.train_set.images).flatten(1)
    assert exact_distances(torch.cat(batches).flatten(1), stored).min(dim=1).values.max() < 1e-3
