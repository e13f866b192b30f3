"""The dashboard's panels: each a small Lightning callback that draws one thing, run by `Dashboard`.

Each panel draws to TensorBoard (`writer`) and, for the figures, to PNG files in the run folder (`publish`), from
global rank 0 only and never while Lightning's sanity check runs. The dataset's classes and image shape come from the
data module (`trainer.datamodule`).
"""

from __future__ import annotations

import heapq
import itertools
import time
from pathlib import Path

import lightning as L
import matplotlib.pyplot as plt
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from matplotlib.figure import Figure
from torch import Tensor, nn
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams
from torchmetrics.classification import MulticlassConfusionMatrix

from mnist_lightning import compat
from mnist_lightning.callbacks.figures import (
    confusion_heatmap,
    labelled_grid,
    save_png,
    weight_images,
    write_histogram,
)
from mnist_lightning.runs.folders import FOLDER_LOGGERS, run_folder

ELSEWHERE = "or pass --trainer.default_root_dir DIR for runs elsewhere"


def writer(trainer: L.Trainer) -> SummaryWriter | None:
    """The TensorBoard writer, if this process writes one (rank 0, not sanity checking)."""
    if not trainer.is_global_zero or trainer.sanity_checking:
        return None
    return next((lg.experiment for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)


def png_folder(trainer: L.Trainer) -> Path | None:
    """The run folder figures are saved to, if this process saves them (rank 0 of a run that logs to a folder, not
    sanity checking)."""
    if not trainer.is_global_zero or trainer.sanity_checking:
        return None
    return run_folder(trainer) if any(isinstance(lg, FOLDER_LOGGERS) for lg in trainer.loggers) else None


def publish(trainer: L.Trainer, figure: Figure, tag: str, filename: str) -> None:
    """Save `figure` as `filename` in the run folder, add it to TensorBoard as `tag` (if logged there), close it."""
    folder = png_folder(trainer)
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        save_png(figure, folder / filename, ELSEWHERE)
    tensorboard = writer(trainer)
    if tensorboard is not None and tag:
        tensorboard.add_figure(tag, figure, global_step=trainer.global_step)
    plt.close(figure)


class Samples(L.Callback):
    """A labelled grid of training images, once when training starts (`samples/train`)."""

    def __init__(self, grid_size: int) -> None:
        self.grid_size = grid_size

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        tensorboard = writer(trainer)
        if tensorboard is None:
            return
        classes = trainer.datamodule.spec.classes  # type: ignore[attr-defined]
        images, labels = trainer.datamodule.train_set[: self.grid_size]  # type: ignore[attr-defined]
        figure = labelled_grid(images.float() / 255, [classes[label] for label in labels.tolist()])
        tensorboard.add_figure("samples/train", figure, global_step=trainer.global_step)
        plt.close(figure)


class ConfusionMatrix(L.Callback):
    """The validation confusion matrix after each epoch as a heatmap (`confusion_matrix/val`), the test one as a
    labelled figure (`confusion_matrix/test`); PNG files of the test set and of the last validation epoch (drawing
    the labelled figure takes ~0.3 s, too long for every epoch)."""

    def __init__(self) -> None:
        self.last_val_matrix: Tensor | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.classes = list(trainer.datamodule.spec.classes)  # type: ignore[attr-defined]
        self.matrix = MulticlassConfusionMatrix(len(self.classes), validate_args=False).to(pl_module.device)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self.matrix.update(outputs["logits"].argmax(dim=-1), batch[1])

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        matrix = self._compute()
        if png_folder(trainer) is not None:
            self.last_val_matrix = matrix
        tensorboard = writer(trainer)
        if tensorboard is not None:
            tensorboard.add_image("confusion_matrix/val", confusion_heatmap(matrix), global_step=trainer.global_step)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.last_val_matrix is not None:
            title = f"validation set, epoch {trainer.current_epoch - 1}"
            publish(trainer, self._figure(self.last_val_matrix, title), "", "confusion_matrix_val.png")

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self.matrix.update(outputs["logits"].argmax(dim=-1), batch[1])

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        matrix = self._compute()  # on every process: under DDP this gathers the counts
        if png_folder(trainer) is not None:
            publish(trainer, self._figure(matrix, "test set"), "confusion_matrix/test", "confusion_matrix_test.png")

    def _compute(self) -> Tensor:
        matrix = self.matrix.compute()
        self.matrix.reset()
        return matrix.cpu()

    def _figure(self, matrix: Tensor, title: str) -> Figure:
        figure, axes = self.matrix.plot(matrix, labels=self.classes)
        axes.set_title(f"{title}: rows are true classes, columns predicted", fontsize=10)
        return figure


class Mistakes(L.Callback):
    """The test images the model got most confidently wrong (`misclassified/test`, misclassified_test.png)."""

    def __init__(self, grid_size: int) -> None:
        self.grid_size = grid_size

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.mistakes: list[tuple[float, int, Tensor, int, int]] = []
        self.count = itertools.count()

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        images, labels = batch
        confidence, predicted = outputs["logits"].softmax(dim=-1).max(dim=-1)
        for i in (predicted != labels).nonzero().flatten().tolist():
            # The running count breaks ties in confidence (common in half precision) before the heap would compare
            # the images.
            entry = (confidence[i].item(), next(self.count), images[i].cpu(), labels[i].item(), predicted[i].item())
            if len(self.mistakes) < self.grid_size:
                heapq.heappush(self.mistakes, entry)
            else:
                heapq.heappushpop(self.mistakes, entry)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if png_folder(trainer) is None or not self.mistakes:
            return
        classes = trainer.datamodule.spec.classes  # type: ignore[attr-defined]
        mistakes = sorted(self.mistakes, reverse=True)
        images = torch.stack([image for _, _, image, _, _ in mistakes]).float()  # the model's inputs, in [0, 1]
        captions = [f"{classes[true]}→{classes[pred]} {conf:.2f}" for conf, _, _, true, pred in mistakes]
        figure = labelled_grid(images.clamp(0, 1), captions)
        figure.suptitle("most confident mistakes: true→predicted, confidence", fontsize=9)
        publish(trainer, figure, "misclassified/test", "misclassified_test.png")


class FirstLayer(L.Callback):
    """Each first-layer unit's weights as an image of the dataset's shape after each epoch (`weights/first_layer`)."""

    def __init__(self, grid_size: int) -> None:
        self.grid_size = grid_size

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        tensorboard = writer(trainer)
        if tensorboard is None:
            return
        first = next(module for module in pl_module.modules() if isinstance(module, nn.Linear))
        weights = first.weight.detach()[: self.grid_size].float().cpu()
        images = weight_images(weights, trainer.datamodule.spec.image_shape)  # type: ignore[attr-defined]
        tensorboard.add_image("weights/first_layer", images, global_step=trainer.global_step)


class Histograms(L.Callback):
    """Every layer's weights and biases after each epoch (`parameters/...`)."""

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        tensorboard = writer(trainer)
        if tensorboard is None:
            return
        for name, parameter in pl_module.named_parameters():
            write_histogram(tensorboard, f"parameters/{name}", parameter.detach(), trainer.global_step)


class Throughput(L.Callback):
    """Training images per second of each epoch, validation excluded (`train/samples_per_sec`)."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.on_train_epoch_start(trainer, pl_module)  # a run resumed mid-epoch starts without on_train_epoch_start

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.samples, self.start, self.training_seconds = 0, time.perf_counter(), None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.samples += len(batch[1])  # the only per-step work of the dashboard: one addition

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.training and self.training_seconds is None:
            self.training_seconds = time.perf_counter() - self.start

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.samples:
            seconds = self.training_seconds or time.perf_counter() - self.start
            # Each process counts its own share of the epoch: the run's throughput is their sum.
            pl_module.log("train/samples_per_sec", self.samples / seconds, sync_dist=True, reduce_fx="sum")


class Hparams(L.Callback):
    """The HPARAMS tab: the run's hyperparameters beside `val/acc_best` and `test/acc`."""

    metrics = ("val/acc_best", "test/acc")

    def __init__(self) -> None:
        self.declared = False

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._declare(trainer, pl_module)

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._declare(trainer, pl_module)  # a test run of its own; after a fit, the fit declared them

    def _declare(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Only the table's columns are declared; TensorBoard fills them with the last values logged under those
        # names, so no placeholder value is logged.
        tensorboard = writer(trainer)
        if tensorboard is None or self.declared:
            return
        self.declared = True
        params = {**pl_module.hparams, **trainer.datamodule.hparams}  # type: ignore[attr-defined]
        # The table takes numbers, strings and booleans; lists such as hidden_sizes are shown as text.
        params = {name: v if isinstance(v, (bool, int, float, str)) else str(v) for name, v in params.items()}
        for summary in hparams(params, dict.fromkeys(self.metrics, 0.0)):
            compat.tensorboard_file_writer(tensorboard).add_summary(summary)
