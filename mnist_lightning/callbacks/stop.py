"""`StopOnSignal`: a run stopped by Ctrl-C, SIGTERM or SLURM's SIGUSR1 stops at the end of a step, on every process."""

from __future__ import annotations

import signal
from typing import Any

import lightning as L

from mnist_lightning import compat, interrupts

# Under DDP the processes agree whether to stop every this many batches (a collective call, the same batches on
# every process); alone, a process looks at every batch.
AGREE_EVERY = 10


class StopOnSignal(L.Callback):
    """Makes a stop signal (mnist_lightning.interrupts) stop the run as Lightning stops on SIGTERM: its loops raise
    SIGTERMException at the end of the current training or evaluation batch, and callbacks' `on_exception` runs
    (`LastCheckpoint` saves that moment), on every process of a distributed run at the same batch.

    Lightning's own way is racy under DDP, and this replaces it. Its SIGTERM handler, which it installs for each run,
    calls a collective broadcast from inside the handler, wherever the process is; and its loops also stop a process
    as soon as its own flag is set, while the others go on to the next step's collective calls. Both deadlock when the
    processes receive a signal at slightly different moments, as they do (seen here under SLURM). Here the handler
    only notes the signal, and the processes agree at a batch end before any of them stops.
    """

    def _take_over(self, trainer: L.Trainer) -> None:
        interrupts.take_over()  # Lightning's SIGTERM handler out, this project's back in

    def _stop_if_asked(self, trainer: L.Trainer, batch_idx: int) -> None:
        asked = interrupts.received() is not None
        if trainer.world_size > 1:
            if batch_idx % AGREE_EVERY:
                return
            asked = trainer.strategy.reduce_boolean_decision(asked, all=False)  # stop if any process was asked
        if asked:
            compat.stop_at_batch_end(trainer)

    # The first hooks of each loop, all called after Lightning has put its signal handlers in place.
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._take_over(trainer)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._take_over(trainer)

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._take_over(trainer)

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._take_over(trainer)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._stop_if_asked(trainer, batch_idx)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._stop_if_asked(trainer, batch_idx)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._stop_if_asked(trainer, batch_idx)

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._stop_if_asked(trainer, batch_idx)
        if trainer.received_sigterm:  # Lightning's prediction loop does not look at it
            raise interrupts.Stopped(interrupts.received() or signal.SIGTERM)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        interrupts.release()
