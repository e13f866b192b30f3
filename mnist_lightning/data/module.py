"""`MNISTDataModule`: a verified dataset in MNIST's format (MNIST, Fashion-MNIST, or one you register) held in memory
as tensors and served a batch at a time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from mnist_lightning.data.augment import Distortion
from mnist_lightning.data.images import read_digit_images
from mnist_lightning.data.sources import default_data_dir, ensure_raw_files, read_split
from mnist_lightning.datasets import DEFAULT_DATASET, DatasetSpec, get_dataset
from mnist_lightning.errors import ArgumentError, CheckpointError

SPLIT_SEED = 1234

Batch = tuple[Tensor, Tensor]


class InMemoryImages(Dataset[Batch]):
    """Images (uint8, N×C×H×W) and labels held as two tensors.

    torch's DataLoader hands a whole batch of indices to `__getitems__`, so a batch costs one indexing operation
    instead of a hundred `__getitem__` calls and a collate. Any sampler works, Lightning's distributed one too.
    """

    def __init__(self, images: Tensor, labels: Tensor) -> None:
        self.images = images
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> Batch:
        return self.images[index], self.labels[index]

    def __getitems__(self, indices: list[int]) -> Batch:
        index = torch.as_tensor(indices, device=self.labels.device)
        # index_select is an order of magnitude faster than `images[index]` on the CPU.
        return self.images.index_select(0, index), self.labels.index_select(0, index)


def fixed_split(size: int, val_size: int) -> tuple[Tensor, Tensor]:
    """Indices of a train/val split of `size` items: the same on every run and machine, whatever the global seed."""
    order = torch.randperm(size, generator=torch.Generator().manual_seed(SPLIT_SEED))
    return order[val_size:].sort().values, order[:val_size].sort().values


def split_train_val(images: Tensor, labels: Tensor, val_size: int) -> tuple[InMemoryImages, InMemoryImages]:
    """The training set, split by `fixed_split` into training and validation images."""
    if val_size >= len(labels):
        raise ArgumentError(
            f"val_size={val_size} leaves no training images: the training set has {len(labels)}; pass a smaller "
            "--data.val_size"
        )
    train_index, val_index = fixed_split(len(labels), val_size)
    return InMemoryImages(images[train_index], labels[train_index]), InMemoryImages(
        images[val_index], labels[val_index]
    )


def keep_batch(batch: Batch) -> Batch:
    """`collate_fn` for `InMemoryImages`: its `__getitems__` already returns stacked tensors."""
    return batch


class MNISTDataModule(L.LightningDataModule):
    """A dataset in MNIST's format from a verified local copy: a fixed train/val split of its training set (55,000 /
    5,000 for MNIST) and its official test set.

    Its dataset's image shape and class count become the network's input and output sizes (the CLI links them), and
    checkpoints record the dataset, its image shape and its classes (`state_dict`), which every command that loads
    a checkpoint adopts.

    Args:
        data_dir: where the raw files live and are fetched to; default `$MNIST_LIGHTNING_DATA`,
            else `~/.cache/mnist_lightning`.
        dataset: a registered dataset (`mnist`, `fashion_mnist`, or one added with
            `mnist_lightning.datasets.register_dataset`); by default the dataset of `--ckpt_path`'s checkpoint, else
            `mnist`.
        batch_size: images per batch in every stage.
        val_size: images of the official training set held out for validation.
        num_workers: DataLoader worker processes; batches are slices of a tensor in memory, so 0 is fastest.
        predict_path: an image file or a folder of them (your own handwriting, say) for `predict`; by default
            `predict` runs on the test set.
        rotation, zoom, shift, elastic_alpha, elastic_sigma: random distortion of each training image, applied to
            whole batches on their device (see `mnist_lightning.data.augment.Distortion`); all 0 by default.
            Validation, test and predict images are never distorted.
    """

    def __init__(
        self,
        data_dir: str | Path | None = None,
        dataset: str | None = None,
        batch_size: int = 100,
        val_size: int = 5000,
        num_workers: int = 0,
        predict_path: str | Path | None = None,
        rotation: float = 0.0,
        zoom: float = 0.0,
        shift: float = 0.0,
        elastic_alpha: float = 0.0,
        elastic_sigma: float = 4.0,
    ) -> None:
        super().__init__()
        if batch_size <= 0:
            raise ArgumentError(f"batch_size must be a positive integer, got {batch_size}")
        if val_size <= 0:
            raise ArgumentError(f"val_size must be a positive integer, got {val_size}")
        if num_workers < 0:
            raise ArgumentError(f"num_workers must be 0 or more, got {num_workers}")
        # Saved as text: checkpoints hold plain data only, so that they load with torch.load(weights_only=True).
        data_dir = None if data_dir is None else str(data_dir)
        predict_path = None if predict_path is None else str(predict_path)
        self.save_hyperparameters()
        self.spec: DatasetSpec = get_dataset(dataset or DEFAULT_DATASET)
        self.data_dir = Path(data_dir) if data_dir else default_data_dir()
        self.distortion = Distortion(rotation, zoom, shift, elastic_alpha, elastic_sigma)
        self.train_set: InMemoryImages | None = None
        self.val_set: InMemoryImages | None = None
        self.test_set: InMemoryImages | None = None
        self.predict_set: InMemoryImages | None = None
        self.predict_files: list[Path] = []
        self.predict_failures: list[tuple[Path, str]] = []
        self.input_dtype = torch.float32

    @property
    def input_size(self) -> int:
        """Pixels per image: the network's input size."""
        return self.spec.input_size

    @property
    def num_classes(self) -> int:
        """The network's output size."""
        return self.spec.num_classes

    @property
    def mean(self) -> float:
        """The training pixels' mean on a 0-1 scale, which the network normalizes its inputs with."""
        return self.spec.mean

    @property
    def std(self) -> float:
        """The training pixels' standard deviation on a 0-1 scale, which the network normalizes its inputs with."""
        return self.spec.std

    def state_dict(self) -> dict[str, Any]:
        """Saved in every checkpoint (Lightning's datamodule state): the dataset's name, image shape and classes."""
        return {"dataset": self.spec.facts()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Adopt the image shape and classes the checkpoint's network was trained with."""
        facts = state_dict.get("dataset")
        if facts is None:
            return
        if facts["name"] != self.spec.name:
            raise CheckpointError(
                f"the checkpoint was trained on {facts['name']}, not {self.spec.name}: pass --data.dataset "
                f"{facts['name']}, or leave --data.dataset out"
            )
        self.spec = self.spec.with_facts(facts)

    def prepare_data(self) -> None:
        if self.trainer is not None and self.trainer.predicting and self.hparams.predict_path is not None:
            return  # own images need no dataset download
        ensure_raw_files(self.spec, self.data_dir)

    def setup(self, stage: str) -> None:
        if self.trainer is not None:
            # With a true-precision Trainer (16-true, bf16-true, 64-true) Lightning converts floating-point inputs
            # before this module has turned the uint8 pixels into floats: the floats are made in its dtype here.
            self.input_dtype = self.trainer.precision_plugin.convert_input(torch.zeros(())).dtype
        # Lightning calls setup once per stage (fit, then test after fit): build each split only once.
        if stage in ("fit", "validate") and self.train_set is None:
            images, labels = (tensor.to(self._device) for tensor in read_split(self.spec, self.data_dir, "train"))
            self.train_set, self.val_set = split_train_val(images, labels, self.hparams.val_size)
        own_images = stage == "predict" and self.hparams.predict_path is not None
        if stage in ("test", "predict") and not own_images and self.test_set is None:
            self.test_set = InMemoryImages(*(t.to(self._device) for t in read_split(self.spec, self.data_dir, "t10k")))
        if own_images and self.predict_set is None:
            self.predict_files, images, self.predict_failures = read_digit_images(
                Path(self.hparams.predict_path), self.spec.image_shape
            )
            unknown = torch.full((len(images),), -1, dtype=torch.int64)
            self.predict_set = InMemoryImages(images.to(self._device), unknown.to(self._device))

    @property
    def _device(self) -> torch.device:
        # On a GPU the whole dataset (55 MB as uint8) lives in device memory and batches are indexed there.
        trainer = self.trainer
        if trainer is not None and self.hparams.num_workers == 0:
            return trainer.strategy.root_device
        return torch.device("cpu")

    def pixels(self, images: Tensor) -> Tensor:
        """uint8 pixels as floats in [0, 1], the network's input (it normalizes them itself: net.Normalize)."""
        return images.to(self.input_dtype).div_(255)

    def on_after_batch_transfer(self, batch: Batch, dataloader_idx: int) -> Batch:
        images, labels = batch
        if self.distortion.enabled and self.trainer is not None and self.trainer.training:
            # Distorted in float32, where the background is 0 (what grid_sample fills in at the edges).
            return self.distortion(images.float().div_(255)).to(self.input_dtype), labels
        return self.pixels(images), labels

    def train_dataloader(self) -> DataLoader[Batch]:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader[Batch]:
        return self._loader(self.val_set)

    def test_dataloader(self) -> DataLoader[Batch]:
        return self._loader(self.test_set)

    def predict_dataloader(self) -> DataLoader[Batch]:
        return self._loader(self.test_set if self.hparams.predict_path is None else self.predict_set)

    def _loader(self, dataset: InMemoryImages | None, shuffle: bool = False) -> DataLoader[Batch]:
        if dataset is None:
            raise RuntimeError("call setup() for this stage before asking for its dataloader")
        return DataLoader(
            dataset,
            batch_size=self.hparams.batch_size,
            shuffle=shuffle,
            num_workers=self.hparams.num_workers,
            persistent_workers=self.hparams.num_workers > 0,
            collate_fn=keep_batch,
        )
