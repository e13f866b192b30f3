"""`MNISTDataModule` on synthetic files, untrained: splits, batches as torchvision makes them, sharding, refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler
from torchvision import transforms
from torchvision.datasets import MNIST

from mnist_lightning import MNISTClassifier, MNISTDataModule
from mnist_lightning.data.module import fixed_split, keep_batch


@pytest.fixture
def datamodule(synthetic_mnist: Path) -> MNISTDataModule:
    dm = MNISTDataModule(data_dir=synthetic_mnist, batch_size=64, val_size=200)
    dm.prepare_data()
    dm.setup("fit")
    dm.setup("test")
    return dm


def test_splits_have_the_requested_sizes_shapes_and_dtypes(datamodule: MNISTDataModule) -> None:
    assert (len(datamodule.train_set), len(datamodule.val_set), len(datamodule.test_set)) == (1000, 200, 300)
    images, labels = next(iter(datamodule.train_dataloader()))
    assert images.shape == (64, 1, 28, 28) and images.dtype == torch.uint8
    assert labels.shape == (64,) and labels.dtype == torch.int64
    normalized, same_labels = datamodule.on_after_batch_transfer((images, labels), 0)
    assert normalized.dtype == torch.float32 and same_labels is labels


def test_fast_batches_equal_torchvision_per_sample_pipeline(datamodule: MNISTDataModule) -> None:
    reference = MNIST(
        root=str(datamodule.data_dir),
        train=False,
        transform=transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))]),
    )
    indices = [0, 7, 299, 42, 42]
    images, labels = datamodule.on_after_batch_transfer(datamodule.test_set.__getitems__(indices), 0)
    expected = torch.stack([reference[i][0] for i in indices])
    torch.testing.assert_close(MNISTClassifier().normalize(images), expected)  # the model normalizes its inputs
    assert labels.tolist() == [reference[i][1] for i in indices]


def test_split_is_fixed_disjoint_and_complete_whatever_the_global_seed(synthetic_mnist: Path) -> None:
    train_index, val_index = fixed_split(1200, 200)
    assert len(set(train_index.tolist()) | set(val_index.tolist())) == 1200
    assert not set(train_index.tolist()) & set(val_index.tolist())

    splits_per_run = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        dm = MNISTDataModule(data_dir=synthetic_mnist, val_size=200)
        dm.setup("fit")
        splits_per_run.append((dm.train_set.images, dm.val_set.images))
    torch.testing.assert_close(splits_per_run[0], splits_per_run[1])
    train_images = {bytes(image.numpy()) for image in splits_per_run[0][0]}
    assert not any(bytes(image.numpy()) in train_images for image in splits_per_run[0][1])


def test_setup_is_idempotent(datamodule: MNISTDataModule) -> None:
    train_set, val_set, test_set = datamodule.train_set, datamodule.val_set, datamodule.test_set
    for stage in ("fit", "validate", "test", "predict", "fit"):
        datamodule.setup(stage)
    assert datamodule.train_set is train_set and datamodule.val_set is val_set and datamodule.test_set is test_set


def test_distributed_sampler_shards_the_in_memory_dataset(datamodule: MNISTDataModule) -> None:
    seen = []
    for rank in (0, 1):
        sampler = DistributedSampler(datamodule.train_set, num_replicas=2, rank=rank, shuffle=True, seed=3)
        loader = DataLoader(datamodule.train_set, batch_size=50, sampler=sampler, collate_fn=keep_batch)
        seen.append(torch.cat([images.flatten(1) for images, _ in loader]))
    assert len(seen[0]) == len(seen[1]) == 500
    rank0 = {bytes(row.numpy()) for row in seen[0]}
    assert not any(bytes(row.numpy()) in rank0 for row in seen[1])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"batch_size": 0}, "batch_size"), ({"val_size": 0}, "val_size"), ({"num_workers": -1}, "num_workers")],
)
def test_invalid_arguments_are_refused_with_their_name(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MNISTDataModule(**kwargs)


def test_val_size_larger_than_the_training_set_is_refused_in_setup(synthetic_mnist: Path) -> None:
    dm = MNISTDataModule(data_dir=synthetic_mnist, val_size=1200)
    with pytest.raises(ValueError, match=r"smaller --data\.val_size"):
        dm.setup("fit")


def test_worker_processes_deliver_the_same_batches(datamodule: MNISTDataModule) -> None:
    in_process = list(datamodule.val_dataloader())
    datamodule.hparams.num_workers = 2
    with_workers = list(datamodule.val_dataloader())
    torch.testing.assert_close(in_process, with_workers)
