"""TensorBoard panels that show what the model learned, each a Lightning callback.

Every panel works at epoch ends only (nothing per training step), writes from global rank 0 only, does nothing
when the run has no TensorBoard logger, and has `enabled` to switch it off from the command line or YAML
(`--visuals.confusion_matrix.enabled false`). Figures that people want without TensorBoard are also saved as
PNG files in the run folder.
"""

from __future__ import annotations

import heapq
import time
from pathlib import Path
from typing import Any

import lightning as L
import matplotlib

matplotlib.use("Agg")  # figures are rendered to files and TensorBoard, never to a window

import matplotlib.pyplot as plt
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from matplotlib.figure import Figure
from torch import Tensor, nn
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams
from torchmetrics.classification import MulticlassConfusionMatrix
from torchvision.utils import make_grid

Batch = tuple[Tensor, Tensor]


class TensorBoardPanel(L.Callback):
    """Base of the panels: finds the TensorBoard writer, if this process should write to one."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled

    def writer(self, trainer: L.Trainer) -> SummaryWriter | None:
        if not (self.enabled and trainer.is_global_zero) or trainer.sanity_checking:
            return None
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                return logger.experiment
        return None

    @staticmethod
    def save_png(trainer: L.Trainer, figure: Figure, name: str) -> Path:
        path = Path(trainer.log_dir or ".") / name
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=110, bbox_inches="tight")
        return path


def pixel_images(trainer: L.Trainer, images: Tensor) -> Tensor:
    """Undo the data module's normalization, to values in [0, 1] for display."""
    spec = trainer.datamodule.spec  # type: ignore[attr-defined]
    return (images.float() * spec.std + spec.mean).clamp(0, 1)


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


class SampleGrid(TensorBoardPanel):
    """Once, when training starts: a labelled grid of training images, as the model receives them."""

    def __init__(self, enabled: bool = True, count: int = 32) -> None:
        super().__init__(enabled)
        self.count = count

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        writer = self.writer(trainer)
        if writer is None:
            return
        images, labels = trainer.datamodule.train_set[: self.count]  # type: ignore[attr-defined]
        classes = trainer.datamodule.classes  # type: ignore[attr-defined]
        figure = labelled_grid(images.float() / 255, [classes[label] for label in labels.tolist()])
        writer.add_figure("samples/train", figure, global_step=trainer.global_step)


class ConfusionMatrix(TensorBoardPanel):
    """The confusion matrix of the validation set after each epoch, and of the test set."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        classes = trainer.datamodule.classes  # type: ignore[attr-defined]
        self.matrix = MulticlassConfusionMatrix(len(classes), validate_args=False).to(pl_module.device)
        self.classes = list(classes)

    def _update(self, outputs: Any, batch: Batch) -> None:
        if self.enabled:
            self.matrix.update(outputs["logits"].argmax(dim=-1), batch[1])

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._update(outputs, batch)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._update(outputs, batch)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write(trainer, "val")

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write(trainer, "test")

    def _write(self, trainer: L.Trainer, stage: str) -> None:
        if not self.enabled:
            return
        matrix = self.matrix.compute()  # on every process: under DDP this gathers the counts
        self.matrix.reset()
        writer = self.writer(trainer)
        if writer is None:
            return
        figure, axes = self.matrix.plot(matrix.cpu(), labels=self.classes)
        when = f"after epoch {trainer.current_epoch}" if stage == "val" else "test set"
        axes.set_title(f"{stage}: {when}", fontsize=10)
        self.save_png(trainer, figure, f"confusion_matrix_{stage}.png")
        writer.add_figure(f"confusion_matrix/{stage}", figure, global_step=trainer.global_step)


class MisclassifiedGrid(TensorBoardPanel):
    """After testing: the test images the model got wrong with the highest confidence, with true → predicted."""

    def __init__(self, enabled: bool = True, count: int = 32) -> None:
        super().__init__(enabled)
        self.count = count
        self.worst: list[tuple[float, int, Tensor, int, int]] = []

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.worst = []

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if not self.enabled:
            return
        images, labels = batch
        confidence, predicted = outputs["logits"].softmax(dim=-1).max(dim=-1)
        for i in (predicted != labels).nonzero().flatten().tolist():
            entry = (confidence[i].item(), len(self.worst), images[i].cpu(), labels[i].item(), predicted[i].item())
            heapq.heappush(self.worst, entry) if len(self.worst) < self.count else heapq.heappushpop(self.worst, entry)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        writer = self.writer(trainer)
        if writer is None or not self.worst:
            return
        worst = sorted(self.worst, reverse=True)
        classes = trainer.datamodule.classes  # type: ignore[attr-defined]
        images = pixel_images(trainer, torch.stack([entry[2] for entry in worst]))
        captions = [f"{classes[true]}→{classes[pred]} {conf:.2f}" for conf, _, _, true, pred in worst]
        figure = labelled_grid(images, captions)
        figure.suptitle("most confident mistakes: true→predicted, confidence", fontsize=9)
        self.save_png(trainer, figure, "misclassified_test.png")
        writer.add_figure("misclassified/test", figure, global_step=trainer.global_step)


class FirstLayerWeights(TensorBoardPanel):
    """After each training epoch: each first-layer unit's 784 weights as a 28×28 image (what it looks at)."""

    def __init__(self, enabled: bool = True, units: int = 64) -> None:
        super().__init__(enabled)
        self.units = units

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        writer = self.writer(trainer)
        if writer is None:
            return
        first = next(module for module in pl_module.modules() if isinstance(module, nn.Linear))
        weights = first.weight.detach()[: self.units].float().cpu().view(-1, 1, 28, 28)
        grid = make_grid(weights, nrow=8, normalize=True, scale_each=True, padding=1)
        writer.add_image("weights/first_layer", grid, global_step=trainer.global_step)


class WeightHistograms(TensorBoardPanel):
    """After each training epoch: a histogram of every layer's weights and biases."""

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        writer = self.writer(trainer)
        if writer is None:
            return
        for name, parameter in pl_module.named_parameters():
            writer.add_histogram(f"parameters/{name}", parameter.detach().cpu(), global_step=trainer.global_step)


class Throughput(TensorBoardPanel):
    """After each training epoch: training images per second (`train/samples_per_sec`), validation excluded."""

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.samples, self.start, self.seconds = 0, time.perf_counter(), None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.samples += len(batch[1])  # the only per-step work: one addition

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking and self.seconds is None:
            self.seconds = time.perf_counter() - self.start

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        seconds = self.seconds or time.perf_counter() - self.start
        if self.enabled and self.samples:
            pl_module.log("train/samples_per_sec", self.samples / seconds)


class HyperparameterTable(TensorBoardPanel):
    """Fills TensorBoard's HPARAMS tab: the run's hyperparameters, with `val/acc_best` and `test/acc` as metrics.

    Only the table's columns are declared here; TensorBoard fills them with the last values the run logs under
    those names, so no placeholder value is ever logged.
    """

    metrics = ("val/acc_best", "test/acc")

    def __init__(self, enabled: bool = True) -> None:
        super().__init__(enabled)
        self.declared = False

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._declare(trainer, pl_module)

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._declare(trainer, pl_module)  # a test run of its own; after a fit, the fit declared already

    def _declare(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        writer = self.writer(trainer)
        if writer is None or self.declared:
            return
        self.declared = True
        params = {**pl_module.hparams, **trainer.datamodule.hparams}  # type: ignore[attr-defined]
        # The table takes numbers, strings and booleans; lists such as hidden_sizes are shown as text.
        params = {name: v if isinstance(v, (bool, int, float, str)) else str(v) for name, v in params.items()}
        for summary in hparams(params, dict.fromkeys(self.metrics, 0.0)):
            writer._get_file_writer().add_summary(summary)  # what SummaryWriter.add_hparams does, minus a sub-run


VISUALS: dict[str, type[TensorBoardPanel]] = {
    "samples": SampleGrid,
    "confusion_matrix": ConfusionMatrix,
    "misclassified": MisclassifiedGrid,
    "first_layer": FirstLayerWeights,
    "histograms": WeightHistograms,
    "throughput": Throughput,
    "hparams": HyperparameterTable,
}
