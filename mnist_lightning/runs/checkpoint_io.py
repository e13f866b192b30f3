"""Checkpoint files that are complete or absent, whatever stops the process, on any local file system.

Lightning's `TorchCheckpointIO` writes a temporary file in the system temp folder and moves it over the target; when
that folder is on another file system (a tmpfs `/tmp`), the move is a copy straight into the target, and a kill
during it leaves a truncated checkpoint where the previous good one was. `AtomicCheckpointIO` writes through the
project's one atomic writer (`mnist_lightning.files.write_atomically`) instead.

It also hands Lightning the `--ckpt_path` checkpoint the CLI has read and checked already, so that a command reads its
checkpoint once.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.strategies import Strategy

from mnist_lightning.files import write_atomically

ELSEWHERE = "or save the run elsewhere with --trainer.default_root_dir DIR"


class AtomicCheckpointIO(TorchCheckpointIO):
    """`TorchCheckpointIO` that writes each checkpoint atomically beside its target: a kill or a power cut leaves the
    previous checkpoint or the new one, never a part.

    A write that fails (disk full, quota, file size limit, permissions) raises `WriteError` naming the file, the
    reason and the fix, removes its temporary file and leaves the checkpoints already there intact. Temporary files
    of killed processes are removed at the next save into their folder.

    `read`: a checkpoint read already (its path and content), which the first load of that path returns.
    """

    def __init__(self, read: tuple[str, dict[str, Any]] | None = None) -> None:
        super().__init__()
        self.read = read

    def load_checkpoint(self, path: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        if self.read is not None and Path(self.read[0]) == Path(path):
            content, self.read = self.read[1], None
            return content
        return super().load_checkpoint(path, *args, **kwargs)

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any | None = None
    ) -> None:
        # Remote storage (`s3://...`) keeps Lightning's own transaction.
        if storage_options is not None or "://" in str(path) or os.name != "posix":
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        # Serialized first, so that a failure to pickle never touches the disk, and a failed write is a plain OSError
        # (torch.save into a file turns it into a RuntimeError).
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        write_atomically(path, buffer.getbuffer(), elsewhere=ELSEWHERE)


def use_atomic_checkpoints(strategy: Strategy, read: tuple[str, dict[str, Any]] | None = None) -> None:
    """Make `AtomicCheckpointIO` the strategy's checkpoint writer and reader (handed the checkpoint `read` already),
    unless a CheckpointIO of the user's is set."""
    if type(strategy.checkpoint_io) is TorchCheckpointIO:
        strategy.checkpoint_io = AtomicCheckpointIO(read)
