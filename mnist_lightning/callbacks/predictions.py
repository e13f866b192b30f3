"""`PredictionWriter`: saves what `predict` returns as a CSV file in the run folder (and, for your own images, a
printed table and a PNG grid of the images as the model saw them)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import matplotlib.pyplot as plt
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from mnist_lightning.callbacks.figures import labelled_grid, save_png
from mnist_lightning.files import write_csv

ELSEWHERE = "or predict into another folder with --trainer.default_root_dir DIR"


class PredictionWriter(BasePredictionWriter):
    """Writes one row per image, classes by name (the checkpoint's). For the test set: index, label, predicted
    class, confidence (and the file, for an image folder's test set). For your own images (`--data.predict_path`):
    file, predicted class, confidence, top 3, and the problem for files that were skipped.

    Args:
        filename: the CSV file's name inside the run folder (with a `-rankN` suffix when several processes predict).
    """

    def __init__(self, filename: str = "predictions.csv") -> None:
        super().__init__(write_interval="epoch")
        self.filename = filename

    def write_on_epoch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        predictions: Sequence[Any],
        batch_indices: Sequence[Any],
    ) -> None:
        (indices_per_batch,) = batch_indices  # nested per dataloader; predict uses one
        indices = [index for batch in indices_per_batch for index in batch]
        probabilities = torch.cat([output["probabilities"] for output in predictions]).cpu()
        path = self.output_path(trainer)
        classes = trainer.datamodule.spec.classes  # type: ignore[attr-defined]
        if trainer.datamodule.hparams.get("predict_path"):  # type: ignore[attr-defined]
            self._write_own_images(trainer, path, indices, probabilities)
            return
        labels = torch.cat([output["label"] for output in predictions]).tolist()
        confidence, predicted = probabilities.max(dim=-1)
        rows = zip(indices, labels, predicted.tolist(), confidence.tolist(), strict=True)
        table = [[index, classes[label], classes[guess], f"{conf:.6f}"] for index, label, guess, conf in rows]
        header = ["index", "label", "prediction", "confidence"]
        files = getattr(trainer.datamodule, "test_files", None)  # an image folder's test set
        if files:
            header, table = [*header, "file"], [[*row, files[row[0]]] for row in table]
        write_csv(path, header, table, ELSEWHERE)
        rank_zero_info(f"Predictions for {len(indices):,} images written to {path}")

    def _write_own_images(self, trainer: L.Trainer, path: Path, indices: list[int], probabilities: Tensor) -> None:
        """CSV, printed table and a grid of the images as the model saw them, for `--data.predict_path`."""
        datamodule = trainer.datamodule
        classes = datamodule.spec.classes  # type: ignore[attr-defined]
        top = probabilities.topk(min(3, probabilities.shape[-1]), dim=-1)
        rows = []
        for index, values, guesses in zip(indices, top.values.tolist(), top.indices.tolist(), strict=True):
            top3 = " ".join(f"{classes[guess]}:{p:.2f}" for guess, p in zip(guesses, values, strict=True))
            rows.append([str(datamodule.predict_files[index]), classes[guesses[0]], f"{values[0]:.4f}", top3, ""])
        rows += [[str(file), "", "", "", problem] for file, problem in datamodule.predict_failures]
        write_csv(path, ["file", "prediction", "confidence", "top3", "problem"], rows, ELSEWHERE)
        width = max(len(row[0]) for row in rows)
        name_width = max(5, *(len(row[1]) for row in rows))
        table = [f"{'file':<{width}}  {'class':>{name_width}}  confidence  top 3"]
        table += [f"{r[0]:<{width}}  {r[1]:>{name_width}}  {r[2]:>10}  {r[3]}" for r in rows if not r[4]]
        print("\n".join(table))  # the skipped files are listed at the end, one line each
        if indices:
            self._save_grid(trainer, indices, probabilities, path.with_suffix(".png"))
        rank_zero_info(f"Predictions written to {path}")

    @staticmethod
    def _save_grid(trainer: L.Trainer, indices: list[int], probabilities: Tensor, path: Path) -> None:
        classes = trainer.datamodule.spec.classes  # type: ignore[attr-defined]
        images = trainer.datamodule.predict_set.images[indices].float().cpu() / 255  # type: ignore[attr-defined]
        confidence, predicted = probabilities.max(dim=-1)
        captions = [f"{classes[p]} ({c:.0%})" for p, c in zip(predicted.tolist(), confidence.tolist(), strict=True)]
        figure = labelled_grid(images, captions, columns=min(8, len(indices)))
        figure.suptitle("your images as the model saw them, in the order of the table", fontsize=9)
        save_png(figure, path, ELSEWHERE)
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_figure("predictions/own_images", figure, global_step=trainer.global_step)
        plt.close(figure)

    def output_path(self, trainer: L.Trainer) -> Path:
        name = Path(self.filename)
        if trainer.world_size > 1:
            name = name.with_stem(f"{name.stem}-rank{trainer.global_rank}")
        return Path(trainer.log_dir or ".") / name  # every process writes: the folder rank 0 broadcasts
