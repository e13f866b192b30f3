"""Batch distortion: shapes, bounds and the range of each distortion."""

from __future__ import annotations

import pytest
import torch

from mnist_lightning import MNISTDataModule
from mnist_lightning.data.augment import Distortion, gaussian_blur_matrix
from tests.helpers import strong_distortion

STRONG_DISTORTION = strong_distortion()


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
