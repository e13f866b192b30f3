"""`MNISTDataModule`: a verified dataset in MNIST's format (MNIST, Fashion-MNIST, or one you register), or a folder of
your own images (`data.folders`), held in memory as tensors and served a batch at a time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from mnist_lightning.data.augment import Distortion
from mnist_lightning.data.folders import (
    SPLIT_SEED,
    FolderData,
    Split,
    count_of,
    image_size_of,
    read_image_folder,
)
from mnist_lightning.data.images import read_own_images
from mnist_lightning.data.sources import default_data_dir, ensure_raw_files, read_split
from mnist_lightning.datasets import DEFAULT_DATASET, IMAGE_FOLDER, RECORDED, DatasetSpec, get_dataset
from mnist_lightning.errors import ArgumentError, CheckpointError, DataError

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

    def to(self, device: torch.device) -> InMemoryImages:
        return InMemoryImages(self.images.to(device), self.labels.to(device))

    def __getitems__(self, indices: list[int]) -> Batch:
        index = torch.as_tensor(indices, device=self.labels.device)
        # index_select is an order of magnitude faster than `images[index]` on the CPU.
        return self.images.index_select(0, index), self.labels.index_select(0, index)


def fixed_split(size: int, val_size: int) -> tuple[Tensor, Tensor]:
    """Indices of a train/val split of `size` items: the same on every run and machine, whatever the global seed."""
    order = torch.randperm(size, generator=torch.Generator().manual_seed(SPLIT_SEED))
    return order[val_size:].sort().values, order[:val_size].sort().values


def split_train_val(
    images: Tensor, labels: Tensor, val_size: int | float | None
) -> tuple[InMemoryImages, InMemoryImages]:
    """The training set, split by `fixed_split` into training and validation images (`val_size`: a count, a fraction,
    or None for 5,000)."""
    val_size = count_of(5000 if val_size is None else val_size, len(labels), "val_size")
    if val_size >= len(labels):
        raise ArgumentError(
            f"val_size={val_size} leaves no training images: the training set has {len(labels)}; pass a smaller "
            "--data.val_size"
        )
    train_index, val_index = fixed_split(len(labels), val_size)
    return InMemoryImages(images[train_index], labels[train_index]), InMemoryImages(
        images[val_index], labels[val_index]
    )


def in_memory(split: Split) -> InMemoryImages:
    return InMemoryImages(split.images, split.labels)


def keep_batch(batch: Batch) -> Batch:
    """`collate_fn` for `InMemoryImages`: its `__getitems__` already returns stacked tensors."""
    return batch


class MNISTDataModule(L.LightningDataModule):
    """A dataset in MNIST's format from a verified local copy: a fixed train/val split of its training set (55,000 /
    5,000 for MNIST) and its official test set. Or your own images, a folder per class (`--data.image_folder`).

    Its dataset's image shape and class count become the network's input and output sizes (the CLI links them), and
    checkpoints record the dataset, its image shape and its classes (`state_dict`), which every command that loads
    a checkpoint adopts.

    Args:
        data_dir: where the raw files live and are fetched to; default `$MNIST_LIGHTNING_DATA`,
            else `~/.cache/mnist_lightning`.
        dataset: a registered dataset (`mnist`, `fashion_mnist`, or one added with
            `mnist_lightning.datasets.register_dataset`); by default the dataset of `--ckpt_path`'s checkpoint, else
            `mnist`.
        image_folder: your own images instead: ROOT/<class name>/<image files> (PNG, JPEG, BMP, TIFF, WebP; any
            mode and size), or ROOT/train/, ROOT/val/ (or valid/), ROOT/test/ each so; classes in sorted order. They
            are read once into a cache under data_dir (image_folders/); see docs/data.md and
            `mnist_lightning.data.folders` for every rule.
        image_channels: for image_folder: 1 (grey) or 3 (RGB); default 1 if every training image is grey, else 3.
        image_size: for image_folder: the images' size, one int or [height, width]; default the most common size
            of the training images. Every image is resized to it (the aspect ratio is not kept).
        batch_size: images per batch in every stage.
        val_size: images held out of the training images for validation: a count, or a fraction such as 0.1;
            default 5000 for a dataset in MNIST's format, 0.1 for an image folder (unless it has val/).
        test_size: for image_folder without test/: images held out for the test set, a count or a fraction;
            default 0.1.
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
        image_folder: str | Path | None = None,
        image_channels: int | None = None,
        image_size: int | tuple[int, int] | None = None,
        batch_size: int = 100,
        val_size: int | float | None = None,
        test_size: int | float | None = None,
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
        for name, size in (("val_size", val_size), ("test_size", test_size)):
            if size is not None:
                count_of(size, 10**9, name)  # a positive count or a fraction in (0, 1)
        if num_workers < 0:
            raise ArgumentError(f"num_workers must be 0 or more, got {num_workers}")
        if image_channels not in (None, 1, 3):
            raise ArgumentError(f"--data.image_channels must be 1 (grey) or 3 (RGB), got {image_channels}")
        # Saved as text: checkpoints hold plain data only, so that they load with torch.load(weights_only=True).
        data_dir = None if data_dir is None else str(data_dir)
        predict_path = None if predict_path is None else str(predict_path)
        image_folder = None if image_folder is None else str(image_folder)
        size = image_size_of(image_size)
        image_size = None if size is None else list(size)
        self.save_hyperparameters()
        self.data_dir = Path(data_dir) if data_dir else default_data_dir()
        self.folder: FolderData | None = None
        self.folder_splits: tuple[Split, Split, Split] | None = None
        self.spec: DatasetSpec = self._dataset(dataset, size)
        self.distortion = Distortion(rotation, zoom, shift, elastic_alpha, elastic_sigma)
        self.train_set: InMemoryImages | None = None
        self.val_set: InMemoryImages | None = None
        self.test_set: InMemoryImages | None = None
        self.predict_set: InMemoryImages | None = None
        self.predict_files: list[Path] = []
        self.predict_failures: list[tuple[Path, str]] = []
        self.input_dtype = torch.float32

    def _dataset(self, dataset: str | None, size: tuple[int, int] | None) -> DatasetSpec:
        """The registered dataset; or the image folder's, read (its cache made first if need be), with the rule that
        the checkpoint of this command recorded, if any (datasets.RECORDED)."""
        root, channels = self.hparams.image_folder, self.hparams.image_channels
        if root is None and dataset != IMAGE_FOLDER:
            given = [
                f"--data.{k}" for k in ("image_channels", "image_size", "test_size") if self.hparams[k] is not None
            ]
            if given:
                raise ArgumentError(f"{', '.join(given)} are for --data.image_folder ROOT, which is not given")
            return get_dataset(dataset or DEFAULT_DATASET)
        if dataset not in (None, IMAGE_FOLDER):
            raise ArgumentError(
                f"--data.image_folder {root} and --data.dataset {dataset} (given, or the checkpoint's) exclude each "
                "other: an image folder is its own dataset; leave one out"
            )
        recorded = RECORDED.get(IMAGE_FOLDER) if dataset == IMAGE_FOLDER else None
        if root is None:
            if recorded is None:
                raise ArgumentError("--data.dataset image_folder needs --data.image_folder ROOT, the folder of images")
            return recorded
        self.folder, self.folder_splits, spec = read_image_folder(
            root, self.data_dir, channels, size, self.hparams.val_size, self.hparams.test_size, recorded
        )
        return spec

    @property
    def test_files(self) -> list[str] | None:
        """An image folder's test images, as paths relative to its ROOT (None for a dataset in MNIST's format)."""
        return None if self.folder_splits is None else self.folder_splits[2].files

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
        recorded = self.spec.with_facts(facts)
        if self.folder is not None and recorded.facts() != self.spec.facts():
            raise CheckpointError(
                f"the checkpoint was trained on an image folder of {list(recorded.classes)} as "
                f"{'×'.join(map(str, recorded.image_shape))} images, but --data.image_folder {self.folder.root} holds "
                f"{list(self.spec.classes)} as {'×'.join(map(str, self.spec.image_shape))}: pass the folder (and "
                "--data.image_size, --data.image_channels) it was trained with"
            )
        self.spec = recorded

    def prepare_data(self) -> None:
        if self.trainer is not None and self.trainer.predicting and self.hparams.predict_path is not None:
            return  # own images need no dataset download
        if self.spec.name != IMAGE_FOLDER:
            ensure_raw_files(self.spec, self.data_dir)
        elif self.folder is None:
            raise DataError(
                "the checkpoint was trained on an image folder: pass --data.image_folder ROOT (its run's config.yaml "
                "names it), or --data.predict_path for predict"
            )
        # An image folder's cache was made (once per machine) when the data module was built: the network's size
        # depends on its facts.

    def setup(self, stage: str) -> None:
        if self.trainer is not None:
            # With a true-precision Trainer (16-true, bf16-true, 64-true) Lightning converts floating-point inputs
            # before this module has turned the uint8 pixels into floats: the floats are made in its dtype here.
            self.input_dtype = self.trainer.precision_plugin.convert_input(torch.zeros(())).dtype
        # Lightning calls setup once per stage (fit, then test after fit): build each split only once.
        if self.folder_splits is not None and self.train_set is None:
            self.train_set, self.val_set, self.test_set = (in_memory(s).to(self._device) for s in self.folder_splits)
        if stage in ("fit", "validate") and self.train_set is None:
            images, labels = (tensor.to(self._device) for tensor in read_split(self.spec, self.data_dir, "train"))
            self.train_set, self.val_set = split_train_val(images, labels, self.hparams.val_size)
        own_images = stage == "predict" and self.hparams.predict_path is not None
        if stage in ("test", "predict") and not own_images and self.test_set is None:
            self.test_set = InMemoryImages(*(t.to(self._device) for t in read_split(self.spec, self.data_dir, "t10k")))
        if own_images and self.predict_set is None:
            self.predict_files, images, self.predict_failures = read_own_images(
                Path(self.hparams.predict_path), self.spec.image_shape, self.spec.preparation
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
