"""Batch distortion: shapes, bounds, label preservation, and that only training batches are distorted."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from torchvision.transforms.v2.functional import gaussian_blur

from mnist_lightning import MNISTClassifier, MNISTDataModule
from mnist_lightning.augment import Distortion, gaussian_blur_matrix
from tests.synthetic import REPO_ROOT

STRONG = yaml.safe_load((REPO_ROOT / "configs" / "strong.yaml").read_text())["data"]
STRONG_DISTORTION = Distortion(**{name: value for name, value in STRONG.items() if name in Distortion.__annotations__})


def dot_image(row: int, column: int) -> torch.Tensor:
    image = torch.zeros(1, 1, 28, 28)
    image[0, 0, row - 1 : row + 2, column - 1 : column + 2] = 1.0
    return image


def centre_of_mass(images: torch.Tensor) -> torch.Tensor:
    """(row, column) of each image's ink."""
    mass = images.flatten(1).sum(1)
    rows = (images.sum(dim=(1, 3)) * torch.arange(28)).sum(1) / mass
    columns = (images.sum(dim=(1, 2)) * torch.arange(28)).sum(1) / mass
    return torch.stack([rows, columns], 1)


def exact_distances(rows: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
    return torch.cdist(rows, references, compute_mode="donot_use_mm_for_euclid_dist")


def test_no_distortion_returns_the_batch_itself() -> None:
    images = torch.rand(4, 1, 28, 28)
    assert not Distortion().enabled
    assert Distortion()(images) is images


def test_distortion_keeps_shape_dtype_and_the_pixel_range() -> None:
    torch.manual_seed(0)
    images = torch.rand(64, 1, 28, 28)
    distorted = STRONG_DISTORTION(images)
    assert distorted.shape == images.shape and distorted.dtype == images.dtype
    assert distorted.min() >= 0 and distorted.max() <= 1
    assert not torch.equal(distorted, images)
    # Each image draws its own distortion.
    same = STRONG_DISTORTION(images[:1].expand(8, -1, -1, -1))
    assert (same[1:] - same[0]).abs().amax(dim=(1, 2, 3)).min() > 0.01


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_a_shift_moves_ink_by_at_most_its_limit(shift: float) -> None:
    torch.manual_seed(0)
    dots = dot_image(14, 14).expand(256, -1, -1, -1)
    moved = centre_of_mass(Distortion(shift=shift)(dots)) - 14
    assert moved.abs().max() <= shift + 1e-4
    assert moved.abs().max() > shift / 2, "the whole range is used"


def test_rotation_and_zoom_keep_the_centre_in_place_and_move_the_edges() -> None:
    torch.manual_seed(0)
    centre = torch.tensor([13.5, 13.5])  # between the middle pixels of a 28-pixel side
    dots = dot_image(14, 24)
    before = centre_of_mass(dots)[0] - centre
    after = centre_of_mass(Distortion(rotation=30)(dots.expand(256, -1, -1, -1))) - centre
    torch.testing.assert_close(after.norm(dim=1), before.norm().expand(256), atol=0.1, rtol=0)
    turned = torch.rad2deg(torch.atan2(after[:, 0], after[:, 1]) - torch.atan2(before[0], before[1]))
    assert turned.abs().max() <= 30.5 and turned.abs().max() > 25
    zoomed = centre_of_mass(Distortion(zoom=0.2)(dots.expand(256, -1, -1, -1))) - centre
    ratio = zoomed.norm(dim=1) / before.norm()
    assert ratio.min() >= 0.8 - 0.02 and ratio.max() <= 1.2 + 0.02 and ratio.max() - ratio.min() > 0.3


def test_elastic_warp_is_smooth_and_scaled_by_alpha() -> None:
    blur = gaussian_blur_matrix(28, 4.0)
    torch.testing.assert_close(blur.sum(dim=1), torch.ones(28))
    torch.manual_seed(0)
    weak = Distortion(elastic_alpha=5)._random_elastic_field(32, 28, 28, torch.device("cpu"))
    torch.manual_seed(0)
    strong = Distortion(elastic_alpha=50)._random_elastic_field(32, 28, 28, torch.device("cpu"))
    torch.testing.assert_close(strong, 10 * weak)
    # Neighbouring pixels move almost together: the field varies slowly compared with its size.
    step = (strong[:, 1:] - strong[:, :-1]).abs().mean()
    assert step < strong.abs().mean() / 4


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
        return datamodule.normalize(dataset.images).flatten(1)

    # Validation and test batches come in order: they are the stored images, normalized.
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
    stored = datamodule.normalize(datamodule.train_set.images).flatten(1)
    assert exact_distances(torch.cat(batches).flatten(1), stored).min(dim=1).values.max() < 1e-3


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rotation": -5}, "rotation must be 0 or more"),
        ({"zoom": 1.5}, "zoom must be below 1"),
        ({"elastic_sigma": 0}, "elastic_sigma must be positive"),
    ],
)
def test_invalid_distortions_are_refused_with_their_name(kwargs: dict, message: str) -> None:
    from mnist_lightning.errors import ArgumentError

    with pytest.raises(ArgumentError, match=message):
        MNISTDataModule(**kwargs)


@pytest.mark.integration
def test_the_strong_presets_distortion_keeps_real_digits_recognizable() -> None:
    """A nearest-neighbour classifier over undistorted training digits (slightly blurred, to tolerate small
    deformations) still labels most distorted test digits correctly, while distortions that destroy the class
    (half turns, a far stronger warp) defeat it. Measured: 0.94 clean, 0.75 with the strong preset's distortion,
    0.38 turned, 0.15 warped."""
    datamodule = MNISTDataModule()
    datamodule.setup("fit")
    datamodule.setup("test")

    def blurred(images: torch.Tensor) -> torch.Tensor:
        return gaussian_blur(images, [7, 7], [1.5, 1.5]).flatten(1)

    reference = blurred(datamodule.train_set.images[:20_000].float() / 255)
    reference_labels = datamodule.train_set.labels[:20_000]
    images = datamodule.test_set.images[:1000].float() / 255
    labels = datamodule.test_set.labels[:1000]

    def nearest_neighbour_accuracy(batch: torch.Tensor) -> float:
        nearest = torch.cdist(blurred(batch), reference).argmin(dim=1)
        return (reference_labels[nearest] == labels).float().mean().item()

    torch.manual_seed(0)
    clean = nearest_neighbour_accuracy(images)
    distorted = nearest_neighbour_accuracy(STRONG_DISTORTION(images))
    turned = nearest_neighbour_accuracy(Distortion(rotation=180)(images))
    warped = nearest_neighbour_accuracy(Distortion(elastic_alpha=150)(images))
    assert clean > 0.93
    assert distorted > 0.7 * clean, (clean, distorted)
    assert max(turned, warped) < 0.5 * clean, (clean, turned, warped)
