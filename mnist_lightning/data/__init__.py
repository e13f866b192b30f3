"""The data: where the files come from and their checks (sources, idx), your own images (images), distortions
(augment), and `MNISTDataModule` (module)."""

from __future__ import annotations

import importlib
from typing import Any


def __getattr__(name: str) -> Any:
    # `from mnist_lightning.data import MNISTDataModule` works; importing a submodule (images, for `serve`) does not
    # import Lightning.
    if name == "MNISTDataModule":
        return importlib.import_module("mnist_lightning.data.module").MNISTDataModule
    raise AttributeError(f"module 'mnist_lightning.data' has no attribute {name!r}")
