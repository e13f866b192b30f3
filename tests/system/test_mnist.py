"""The real MNIST on this machine: fetched through the whole chain, a short training run on it, the strong
preset's distortion and your own digits' preparation on real digits."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2.functional import gaussian_blur

from mnist_lightning import MNISTClassifier, MNISTDataModule
from mnist_lightning.data.augment import Distortion
from mnist_lightning.data.images import mnist_style
from mnist_lightning.data.sources import ensure_raw_files, sha256_of
from mnist_lightning.datasets import DATASETS, IDX_FILES
from tests.helpers import REPO_ROOT, strong_distortion, subprocess_env

pytestmark = pytest.mark.mnist

STRONG_DISTORTION = strong_distortion()

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

    pixels = datamodule.pixels(torch.cat([datamodule.train_set.images, datamodule.val_set.images]))
    normalized = MNISTClassifier(mean=datamodule.mean, std=datamodule.std).normalize(pixels)
    assert normalized.mean().item() == pytest.approx(0, abs=1e-3)
    assert normalized.std().item() == pytest.approx(1, abs=1e-3)


def test_two_epochs_of_the_seed_configuration_pass_95_percent(tmp_path: Path) -> None:
    config = REPO_ROOT / "configs" / "seed.yaml"
    command = [sys.executable, "-m", "mnist_lightning", "fit", f"--config={config}", "--trainer.max_epochs=2"]
    command.append("--trainer.enable_progress_bar=false")
    result = subprocess.run(command, cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    test_accuracy = float(re.search(r"Test accuracy\s+([0-9.]+)", result.stdout).group(1))
    assert test_accuracy >= 0.95


def test_rendered_mnist_digits_get_the_predictions_of_the_originals() -> None:
    L.seed_everything(0)  # the same network every run: the agreement must not depend on the draw
    data = MNISTDataModule(batch_size=100)
    model = MNISTClassifier()
    L.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False).fit(model, data)
    data.setup("test")
    model.eval()

    rng = np.random.default_rng(0)
    originals = data.test_set.images[:300]
    rendered = []
    for digit in originals[:, 0].numpy():
        scale_y = rng.uniform(6, 14)
        scale_x = scale_y * rng.uniform(0.9, 1.1)  # sizes, offsets and aspect ratios vary
        ink = Image.fromarray(255 - digit).resize((int(28 * scale_x), int(28 * scale_y)), Image.BILINEAR)
        paper = Image.new("L", (ink.width + int(rng.integers(40, 400)), ink.height + int(rng.integers(40, 400))), 255)
        paper.paste(
            ink, (int(rng.integers(0, paper.width - ink.width)), int(rng.integers(0, paper.height - ink.height)))
        )
        pixels = np.asarray(paper, dtype=np.float32)
        if rng.random() < 0.5:
            pixels = np.clip(pixels + rng.normal(0, 12, pixels.shape), 0, 255)
        rendered.append(mnist_style(Image.fromarray(pixels.astype(np.uint8))))
    with torch.no_grad():
        expected = model(data.pixels(originals)).argmax(1)
        predicted = model(data.pixels(torch.stack(rendered))).argmax(1)
    agreement = (expected == predicted).float().mean().item()
    # Seeded, this network agrees on 94.7 % (284 of 300); unseeded, runs ranged around 95 % and failed a 95 % bar
    # about as often as they passed.
    assert agreement >= 0.93, agreement


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
