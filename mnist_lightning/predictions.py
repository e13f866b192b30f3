"""`PredictionWriter`: saves what `predict` returns as a CSV file in the run folder."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info


class PredictionWriter(BasePredictionWriter):
    """Writes one row per image: index in the dataset, label, predicted label, confidence.

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
        path = self.output_path(trainer)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["index", "label", "prediction", "confidence"])
            for output, indices in zip(predictions, indices_per_batch, strict=True):
                confidences = output["probabilities"].max(dim=-1).values.tolist()
                columns = (indices, output["label"].tolist(), output["prediction"].tolist(), confidences)
                for index, label, predicted, confidence in zip(*columns, strict=True):
                    writer.writerow([index, label, predicted, f"{confidence:.6f}"])
        count = sum(len(indices) for indices in indices_per_batch)
        rank_zero_info(f"Predictions for {count:,} images written to {path}")

    def output_path(self, trainer: L.Trainer) -> Path:
        name = Path(self.filename)
        if trainer.world_size > 1:
            name = name.with_stem(f"{name.stem}-rank{trainer.global_rank}")
        return Path(trainer.log_dir or ".") / name
