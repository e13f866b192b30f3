from __future__ import annotations

from pathlib import Path

import pytest

from mnist_lightning.sources import DATASETS
from tests.serving import exported, server, tiny_checkpoint  # noqa: F401 (session fixtures for export and serve)
from tests.synthetic import trust_synthetic_mnist, write_synthetic_mnist


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data_dir holding synthetic MNIST-format files, for MNIST and Fashion-MNIST alike: 1,200 training and 300
    test images each."""
    data_dir = tmp_path_factory.mktemp("synthetic-data")
    for dataset in DATASETS:
        write_synthetic_mnist(data_dir, dataset=dataset)
    return data_dir


@pytest.fixture
def synthetic_mnist(synthetic_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """`synthetic_dir`, with this process trusting it as MNIST and Fashion-MNIST for the length of one test."""
    for name, spec in DATASETS.items():
        monkeypatch.setitem(DATASETS, name, spec)
    trust_synthetic_mnist(synthetic_dir)
    return synthetic_dir
