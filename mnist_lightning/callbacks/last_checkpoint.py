"""`LastCheckpoint`: the state after every epoch, and at the moment `fit` is stopped, for resuming."""

from __future__ import annotations

import sys

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint

from mnist_lightning import interrupts
from mnist_lightning.errors import UserError
from mnist_lightning.runs.folders import command_on, run_folder


class LastCheckpoint(ModelCheckpoint):
    """ModelCheckpoint that also saves when `fit` stops early (Ctrl-C, SIGTERM, an error) and says how to resume,
    except on a mistake the user must fix first."""

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        # A diverged model's state is not worth resuming, and must not replace the last good last.ckpt; a UserError
        # explains itself.
        if isinstance(exception, UserError):
            return
        super().on_exception(trainer, pl_module, exception)
        # Before the first step there is nothing to resume.
        if not self.save_on_exception or trainer.global_step == 0 or trainer.state.fn != "fit":
            return
        if not trainer.is_global_zero:
            return
        checkpoint = self.format_checkpoint_name({})
        stopped_at = (
            f"at epoch {trainer.current_epoch}, step {trainer.global_step} (the state is saved to {checkpoint})"
        )
        command = command_on("fit", run_folder(trainer), checkpoint)
        if interrupts.received() is not None:  # the command's last line says it
            interrupts.note_resume(stopped_at, command)
        else:
            print(f"\nStopped by {type(exception).__name__} {stopped_at}.\nResume with: {command}", file=sys.stderr)
