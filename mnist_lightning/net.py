"""The network: a multilayer perceptron, in plain torch, behind the normalization of its inputs. `MNISTClassifier`
(model.py) trains it; `export` writes both as ONNX. Another architecture is another function here that returns an
`nn.Module` mapping N×C×H×W normalized images to N×K class logits (docs/architecture.md)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mnist_lightning.errors import ArgumentError


def build_mlp(
    input_size: int, hidden_sizes: Sequence[int], num_classes: int, dropout: float, batch_norm: bool = False
) -> nn.Sequential:
    """Flatten, then Linear (→ BatchNorm) → ReLU (→ Dropout) for each hidden size, then a Linear layer to the
    class logits."""
    if not hidden_sizes or any(size <= 0 for size in hidden_sizes):
        raise ArgumentError(f"hidden_sizes must be a non-empty list of positive widths, got {list(hidden_sizes)}")
    if not 0 <= dropout < 1:
        raise ArgumentError(f"dropout must be in [0, 1), got {dropout}")
    widths = [input_size, *hidden_sizes]
    layers: list[nn.Module] = [nn.Flatten()]
    for in_features, out_features in itertools.pairwise(widths):
        if batch_norm:  # the normalization has its own shift, which makes the Linear layer's bias redundant
            layers += [nn.Linear(in_features, out_features, bias=False), nn.BatchNorm1d(out_features)]
        else:
            layers.append(nn.Linear(in_features, out_features))
        layers.append(nn.ReLU())
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(widths[-1], num_classes))
    return nn.Sequential(*layers)


class Normalize(nn.Module):
    """Images in [0, 1] to mean 0 and standard deviation 1, with the training images' `mean` and `std`.

    Part of the model, so that its checkpoints and exported models carry the normalization they were trained with
    (the buffers are in the state dict) and every input, from the data module, `predict`, `export` or `serve`, is
    given as pixels in [0, 1].
    """

    def __init__(self, mean: float, std: float) -> None:
        super().__init__()
        if not std > 0:
            raise ArgumentError(f"std must be positive, got {std}")
        self.register_buffer("mean", torch.tensor(float(mean)))
        self.register_buffer("std", torch.tensor(float(std)))

    def forward(self, images: Tensor) -> Tensor:
        return (images - self.mean) / self.std
