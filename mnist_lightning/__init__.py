"""Train a multilayer perceptron on MNIST with PyTorch Lightning."""

from mnist_lightning.data import MNISTDataModule
from mnist_lightning.model import MNISTClassifier

__all__ = ["MNISTClassifier", "MNISTDataModule"]
