"""Train a multilayer perceptron on MNIST with PyTorch Lightning."""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["MNISTClassifier", "MNISTDataModule"]

_HOMES = {"MNISTClassifier": "mnist_lightning.model", "MNISTDataModule": "mnist_lightning.data.module"}


def __getattr__(name: str) -> Any:
    # Imported on first use: `python -m mnist_lightning --help` and `serve --model x.onnx` need no Lightning.
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'mnist_lightning' has no attribute {name!r}")
