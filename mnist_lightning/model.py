"""`MNISTClassifier`: a multilayer perceptron, its loss, its optimizer and its metrics."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MaxMetric, MeanMetric
from torchmetrics.classification import MulticlassAccuracy

Batch = tuple[Tensor, Tensor]


def build_mlp(input_size: int, hidden_sizes: Sequence[int], num_classes: int, dropout: float) -> nn.Sequential:
    """Flatten, then Linear → ReLU (→ Dropout) for each hidden size, then a Linear layer to the class logits."""
    widths = [input_size, *hidden_sizes]
    layers: list[nn.Module] = [nn.Flatten()]
    for in_features, out_features in itertools.pairwise(widths):
        layers += [nn.Linear(in_features, out_features), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(widths[-1], num_classes))
    return nn.Sequential(*layers)


class MNISTClassifier(L.LightningModule):
    """A multilayer perceptron trained with cross-entropy and Adam.

    Args:
        hidden_sizes: width of each hidden layer; `[100]` is the classic 784-100-10 network.
        dropout: dropout probability after each hidden layer (0 turns it off).
        lr: Adam's learning rate.
        weight_decay: L2 penalty added by Adam (0 turns it off).
        input_size: pixels per image.
        num_classes: number of output classes.
    """

    def __init__(
        self,
        hidden_sizes: Sequence[int] = (100,),
        dropout: float = 0.0,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        input_size: int = 28 * 28,
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        hidden_sizes = list(hidden_sizes)
        if not hidden_sizes or any(size <= 0 for size in hidden_sizes):
            raise ValueError(f"hidden_sizes must be a non-empty list of positive widths, got {hidden_sizes}")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if lr <= 0:
            raise ValueError(f"lr must be positive, got {lr}")
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be 0 or more, got {weight_decay}")
        self.save_hyperparameters()
        self.net = build_mlp(input_size, hidden_sizes, num_classes, dropout)

        # One metric object per stage; Lightning computes and resets each at the end of its epoch.
        # validate_args=False skips per-step input checks that cost more than this small network's forward pass.
        def accuracy() -> MulticlassAccuracy:
            return MulticlassAccuracy(num_classes, average="micro", validate_args=False)

        self.train_acc, self.val_acc, self.test_acc = accuracy(), accuracy(), accuracy()
        self.train_loss, self.val_loss, self.test_loss = MeanMetric(), MeanMetric(), MeanMetric()
        self.val_acc_best = MaxMetric()
        # Saved in checkpoints, so a resumed run remembers its best validation accuracy.
        self.val_acc_best.persistent(True)

    def forward(self, images: Tensor) -> Tensor:
        """Class logits for a batch of normalized images (any shape that flattens to `input_size`)."""
        return self.net(images)

    def _loss_and_logits(self, batch: Batch) -> tuple[Tensor, Tensor, Tensor]:
        images, labels = batch
        logits = self(images)
        return F.cross_entropy(logits, labels), logits, labels

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        loss, logits, labels = self._loss_and_logits(batch)
        self.train_loss(loss)
        self.train_acc(logits, labels)
        self.log("train/loss", self.train_loss, on_step=False, on_epoch=True, prog_bar=True)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        loss, logits, labels = self._loss_and_logits(batch)
        self.val_loss(loss)
        self.val_acc(logits, labels)
        self.log("val/loss", self.val_loss, on_step=False, on_epoch=True)
        self.log("val/acc", self.val_acc, on_step=False, on_epoch=True, prog_bar=True)

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:  # a few batches of an untrained model are no one's best
            return
        self.val_acc_best(self.val_acc.compute())
        self.log("val/acc_best", self.val_acc_best.compute(), sync_dist=True)

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        loss, logits, labels = self._loss_and_logits(batch)
        self.test_loss(loss)
        self.test_acc(logits, labels)
        self.log("test/loss", self.test_loss, on_step=False, on_epoch=True)
        self.log("test/acc", self.test_acc, on_step=False, on_epoch=True)

    def predict_step(self, batch: Batch, batch_idx: int) -> dict[str, Tensor]:
        """The predicted class and the class probabilities of each image (plus its label, when known)."""
        images, labels = batch
        probabilities = self(images).softmax(dim=-1)
        return {"label": labels, "prediction": probabilities.argmax(dim=-1), "probabilities": probabilities}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
