"""`Dashboard`: TensorBoard panels that show what the model learned, in one Lightning callback.

One callback rather than one per panel: Lightning calls every hook of every callback on every step, and seven
callbacks cost ~4 % of an epoch of the seed model before drawing anything. Each panel has its own switch
(`--dashboard.histograms false`, or `dashboard: {histograms: false}` in YAML).
"""

from __future__ import annotations

import heapq
import itertools
import sys
import time
from pathlib import Path

import lightning as L
import matplotlib

matplotlib.use("Agg")  # figures are rendered to files and TensorBoard, never to a window

import matplotlib.pyplot as plt
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from matplotlib.figure import Figure
from torch import Tensor, nn
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams
from torchmetrics.classification import MulticlassConfusionMatrix
from torchvision.utils import make_grid

from mnist_lightning.runs import run_folder

Batch = tuple[Tensor, Tensor]


def labelled_grid(images: Tensor, captions: list[str], columns: int = 8) -> Figure:
    """A grid of N×1×28×28 images in [0, 1] (torchvision's `make_grid`), with a caption under each."""
    padding = 12  # white space under each image holds its caption
    grid = make_grid(images.cpu(), nrow=columns, padding=padding, pad_value=1.0)
    rows = (len(images) + columns - 1) // columns
    figure, axes = plt.subplots(figsize=(columns * 1.0, rows * 1.0))
    axes.imshow(grid.permute(1, 2, 0).numpy(), interpolation="nearest")
    size = images.shape[-1]
    for i, caption in enumerate(captions):
        row, column = divmod(i, columns)
        x, y = padding + column * (size + padding) + size / 2, padding + row * (size + padding) + size + 1
        axes.text(x, y, caption, ha="center", va="top", fontsize=7)
    axes.set_axis_off()
    figure.tight_layout()
    return figure


def confusion_heatmap(matrix: Tensor, cell: int = 16) -> Tensor:
    """A 3×H×W image of a confusion matrix: row-normalized rates, square-root scaled so that rare mistakes show."""
    rates = matrix.float() / matrix.sum(dim=1, keepdim=True).clamp(min=1)
    colours = torch.from_numpy(matplotlib.colormaps["viridis"](rates.sqrt().cpu().numpy())[..., :3])
    return colours.permute(2, 0, 1).repeat_interleave(cell, dim=1).repeat_interleave(cell, dim=2)


def weight_images(weights: Tensor, columns: int = 8) -> Tensor:
    """Rows of 784 weights as a grid of 28×28 images, each scaled to [0, 1] on its own."""
    low, high = weights.min(dim=1, keepdim=True).values, weights.max(dim=1, keepdim=True).values
    scaled = (weights - low) / (high - low).clamp(min=1e-12)
    return make_grid(scaled.view(-1, 1, 28, 28), nrow=columns, padding=1)


def write_histogram(writer: SummaryWriter, tag: str, values: Tensor, step: int, bins: int = 64) -> None:
    """`writer.add_histogram`, with the buckets counted by torch.

    `add_histogram` computes a sum of squares with numpy's `dot`, which wakes OpenBLAS's thread pool; its threads
    then spin beside torch's on this 2-core machine and slowed the following training steps by ~10 % (measured:
    550-step epochs at 590 it/s without histograms, 520 it/s with `add_histogram`).
    """
    values = values.float().flatten().cpu()
    low, high = values.min().item(), values.max().item()
    counts = torch.histc(values, bins=bins, min=low, max=high)
    limits = torch.linspace(low, high, bins + 1)[1:]
    writer.add_histogram_raw(
        tag,
        min=low,
        max=high,
        num=values.numel(),
        sum=values.sum().item(),
        sum_squares=values.square().sum().item(),
        bucket_limits=limits.tolist(),
        bucket_counts=counts.tolist(),
        global_step=step,
    )


class Dashboard(L.Callback):
    """What the model learned, in TensorBoard, at epoch ends only and from global rank 0 only.

    The confusion matrices and the most confident mistakes are also saved as PNG files in the run folder, with a
    CSV logger too; the other panels need a TensorBoard logger. Without a logger it draws nothing.

    Args:
        samples: a labelled grid of training images, once when training starts (`samples/train`).
        confusion_matrix: the validation confusion matrix after each epoch as a heatmap (`confusion_matrix/val`),
            the test one as a labelled figure (`confusion_matrix/test`); PNG files of the test set and of the
            last validation epoch (drawing the labelled figure takes ~0.3 s, too long for every epoch).
        misclassified: the test images the model got most confidently wrong (`misclassified/test`).
        first_layer: each first-layer unit's 784 weights as a 28×28 image after each epoch (`weights/first_layer`).
        histograms: every layer's weights and biases after each epoch (`parameters/...`).
        throughput: training images per second of each epoch, validation excluded (`train/samples_per_sec`).
        hparams: the HPARAMS tab: the run's hyperparameters beside `val/acc_best` and `test/acc`.
        grid_size: images in the sample and mistake grids; units in the first-layer grid.
    """

    hparam_metrics = ("val/acc_best", "test/acc")

    def __init__(
        self,
        samples: bool = True,
        confusion_matrix: bool = True,
        misclassified: bool = True,
        first_layer: bool = True,
        histograms: bool = True,
        throughput: bool = True,
        hparams: bool = True,
        grid_size: int = 32,
    ) -> None:
        self.panels = {
            "samples": samples,
            "confusion_matrix": confusion_matrix,
            "misclassified": misclassified,
            "first_layer": first_layer,
            "histograms": histograms,
            "throughput": throughput,
            "hparams": hparams,
        }
        self.grid_size = grid_size
        self.hparams_declared = False
        self.last_val_matrix: Tensor | None = None
        self.mistakes: list[tuple[float, int, Tensor, int, int]] = []
        self.mistake_count = itertools.count()
        self.noted_missing_tensorboard = False

    # --- plumbing -------------------------------------------------------------------------------------------

    @staticmethod
    def writer(trainer: L.Trainer) -> SummaryWriter | None:
        """The TensorBoard writer, if this process writes one (rank 0, not sanity checking)."""
        if not trainer.is_global_zero or trainer.sanity_checking:
            return None
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                return logger.experiment
        return None

    @staticmethod
    def png_folder(trainer: L.Trainer) -> Path | None:
        """The run folder the figures are saved to, if this process saves them (rank 0 of a run that logs to a
        folder, not sanity checking)."""
        if not trainer.is_global_zero or trainer.sanity_checking:
            return None
        if any(isinstance(logger, (TensorBoardLogger, CSVLogger)) for logger in trainer.loggers):
            return run_folder(trainer)
        return None

    def publish(self, trainer: L.Trainer, figure: Figure, tag: str, filename: str) -> None:
        """Save `figure` as `filename` in the run folder, add it to TensorBoard as `tag` (if logged there), close it."""
        folder = self.png_folder(trainer)
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
            figure.savefig(folder / filename, dpi=110, bbox_inches="tight")
        writer = self.writer(trainer)
        if writer is not None and tag:
            writer.add_figure(tag, figure, global_step=trainer.global_step)
        plt.close(figure)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.classes = list(trainer.datamodule.classes)  # type: ignore[attr-defined]
        self.spec = trainer.datamodule.spec  # type: ignore[attr-defined]
        self.matrix = MulticlassConfusionMatrix(len(self.classes), validate_args=False).to(pl_module.device)
        if self.png_folder(trainer) is not None and self.writer(trainer) is None and not self.noted_missing_tensorboard:
            self.noted_missing_tensorboard = True
            print(
                "note: the dashboard's TensorBoard panels (samples, weights, histograms, HPARAMS) need "
                "--trainer.logger TensorBoardLogger; its PNG figures are saved to the run folder",
                file=sys.stderr,
            )

    # --- start ----------------------------------------------------------------------------------------------

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._declare_hparams(trainer, pl_module)

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._declare_hparams(trainer, pl_module)  # a test run of its own; after a fit, the fit declared them
        self.mistakes = []
        self.mistake_count = itertools.count()

    def _declare_hparams(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Only the table's columns are declared; TensorBoard fills them with the last values logged under those
        # names, so no placeholder value is logged.
        writer = self.writer(trainer)
        if writer is None or not self.panels["hparams"] or self.hparams_declared:
            return
        self.hparams_declared = True
        params = {**pl_module.hparams, **trainer.datamodule.hparams}  # type: ignore[attr-defined]
        # The table takes numbers, strings and booleans; lists such as hidden_sizes are shown as text.
        params = {name: v if isinstance(v, (bool, int, float, str)) else str(v) for name, v in params.items()}
        for summary in hparams(params, dict.fromkeys(self.hparam_metrics, 0.0)):
            writer._get_file_writer().add_summary(summary)  # what SummaryWriter.add_hparams does, minus a sub-run

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start_epoch_clock()  # a run resumed mid-epoch starts without on_train_epoch_start
        writer = self.writer(trainer)
        if writer is None or not self.panels["samples"]:
            return
        images, labels = trainer.datamodule.train_set[: self.grid_size]  # type: ignore[attr-defined]
        figure = labelled_grid(images.float() / 255, [self.classes[label] for label in labels.tolist()])
        writer.add_figure("samples/train", figure, global_step=trainer.global_step)

    # --- training epochs ------------------------------------------------------------------------------------

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start_epoch_clock()

    def _start_epoch_clock(self) -> None:
        self.epoch_samples, self.epoch_start, self.training_seconds = 0, time.perf_counter(), None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.epoch_samples += len(batch[1])  # the only per-step work: one addition

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.training and self.training_seconds is None:
            self.training_seconds = time.perf_counter() - self.epoch_start

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.panels["throughput"] and self.epoch_samples:
            seconds = self.training_seconds or time.perf_counter() - self.epoch_start
            # Each process counts its own share of the epoch: the run's throughput is their sum.
            pl_module.log("train/samples_per_sec", self.epoch_samples / seconds, sync_dist=True, reduce_fx="sum")
        writer = self.writer(trainer)
        if writer is None:
            return
        step = trainer.global_step
        if self.panels["first_layer"]:
            first = next(module for module in pl_module.modules() if isinstance(module, nn.Linear))
            weights = first.weight.detach()[: self.grid_size].float().cpu()
            writer.add_image("weights/first_layer", weight_images(weights), global_step=step)
        if self.panels["histograms"]:
            for name, parameter in pl_module.named_parameters():
                write_histogram(writer, f"parameters/{name}", parameter.detach(), step)

    # --- validation and test --------------------------------------------------------------------------------

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if self.panels["confusion_matrix"]:
            self.matrix.update(outputs["logits"].argmax(dim=-1), batch[1])

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.panels["confusion_matrix"]:
            return
        matrix = self._confusion_matrix()
        if self.png_folder(trainer) is not None:
            self.last_val_matrix = matrix
        writer = self.writer(trainer)
        if writer is not None:
            writer.add_image("confusion_matrix/val", confusion_heatmap(matrix), global_step=trainer.global_step)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.last_val_matrix is not None:
            title = f"validation set, epoch {trainer.current_epoch - 1}"
            figure = self._confusion_figure(self.last_val_matrix, title)
            self.publish(trainer, figure, "", "confusion_matrix_val.png")

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        images, labels = batch
        if self.panels["confusion_matrix"]:
            self.matrix.update(outputs["logits"].argmax(dim=-1), labels)
        if self.panels["misclassified"]:
            confidence, predicted = outputs["logits"].softmax(dim=-1).max(dim=-1)
            for i in (predicted != labels).nonzero().flatten().tolist():
                # The running count breaks ties in confidence (common in half precision) before the heap would
                # compare the images.
                entry = (
                    confidence[i].item(),
                    next(self.mistake_count),
                    images[i].cpu(),
                    labels[i].item(),
                    predicted[i].item(),
                )
                if len(self.mistakes) < self.grid_size:
                    heapq.heappush(self.mistakes, entry)
                else:
                    heapq.heappushpop(self.mistakes, entry)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        matrix = self._confusion_matrix() if self.panels["confusion_matrix"] else None
        if self.png_folder(trainer) is None:
            return
        if matrix is not None:
            figure = self._confusion_figure(matrix, "test set")
            self.publish(trainer, figure, "confusion_matrix/test", "confusion_matrix_test.png")
        if self.panels["misclassified"] and self.mistakes:
            mistakes = sorted(self.mistakes, reverse=True)
            images = torch.stack([image for _, _, image, _, _ in mistakes]).float() * self.spec.std + self.spec.mean
            captions = [f"{self.classes[true]}→{self.classes[pred]} {conf:.2f}" for conf, _, _, true, pred in mistakes]
            figure = labelled_grid(images.clamp(0, 1), captions)
            figure.suptitle("most confident mistakes: true→predicted, confidence", fontsize=9)
            self.publish(trainer, figure, "misclassified/test", "misclassified_test.png")

    def _confusion_matrix(self) -> Tensor:
        matrix = self.matrix.compute()  # on every process: under DDP this gathers the counts
        self.matrix.reset()
        return matrix.cpu()

    def _confusion_figure(self, matrix: Tensor, title: str) -> Figure:
        figure, axes = self.matrix.plot(matrix, labels=self.classes)
        axes.set_title(f"{title}: rows are true classes, columns predicted", fontsize=10)
        return figure
