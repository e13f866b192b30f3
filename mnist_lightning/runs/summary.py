"""What `fit` prints at its end: the best checkpoint, the accuracies, the run folder and what to run next."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from mnist_lightning.runs.folders import command_on, run_folder


def fit_summary(
    trainer: L.Trainer, best_path: str, best_val_acc: float | None, test_acc: float | None, tested: bool = True
) -> str:
    """The lines `fit` ends with; `tested=False` when the test after fit was switched off."""
    lines = [f"Best checkpoint   {best_path}" if best_path else "Best checkpoint   none: the final weights count"]
    if best_val_acc is not None:
        lines.append(f"  val accuracy    {best_val_acc:.4f}")
    if not tested:
        lines.append("Test accuracy     not tested (--test_after_fit false)")
    elif test_acc is None:
        lines.append("Test accuracy     not tested (--trainer.limit_test_batches 0)")
    else:
        lines.append(f"Test accuracy     {test_acc:.4f}")
    run = run_folder(trainer)
    lines.append(f"Run folder        {run}")
    logger = trainer.logger
    if isinstance(logger, TensorBoardLogger):
        lines.append(f"TensorBoard       tensorboard --logdir {run.parent}")
    elif isinstance(logger, CSVLogger):
        lines.append(f"Metrics           {Path(logger.experiment.metrics_file_path)}")
    if best_path:
        lines.append(f"Test it again     {command_on('test', run, best_path)}")
    return "\n" + "\n".join(lines)
