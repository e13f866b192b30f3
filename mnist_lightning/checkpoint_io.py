"""Checkpoint files that are complete or absent, whatever stops the process, on any local file system.

Lightning's `TorchCheckpointIO` writes a temporary file in the system temp folder and moves it over the target; when
that folder is on another file system (a tmpfs `/tmp`), the move is a copy straight into the target, and a kill
during it leaves a truncated checkpoint where the previous good one was.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import re
import secrets
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.strategies import Strategy

from mnist_lightning.errors import CheckpointError

# `.last.ckpt.<pid>.<random>.tmp`: hidden, and no `.ckpt` ending, so nothing takes it for a checkpoint; the pid tells
# whether its writer still runs.
TEMPORARY = re.compile(r"\..+\.(\d+)\.[0-9a-f]{8}\.tmp")

SAVE_ELSEWHERE = "or save elsewhere with --trainer.logger.init_args.save_dir DIR"
FIXES = {
    errno.ENOSPC: f"free space on that disk {SAVE_ELSEWHERE}",
    errno.EDQUOT: f"free space within your disk quota {SAVE_ELSEWHERE}",
    errno.EFBIG: f"raise the file size limit (ulimit -f) {SAVE_ELSEWHERE}",
    errno.EACCES: f"make that folder writable {SAVE_ELSEWHERE}",
    errno.EPERM: f"make that folder writable {SAVE_ELSEWHERE}",
    errno.EROFS: f"remount that file system writable {SAVE_ELSEWHERE}",
}


class AtomicCheckpointIO(TorchCheckpointIO):
    """`TorchCheckpointIO` that writes each checkpoint to a temporary file beside it, fsyncs it, renames it over the
    target and fsyncs the folder: a kill or a power cut leaves the previous checkpoint or the new one, never a part.

    A write that fails (disk full, quota, file size limit, permissions) raises `CheckpointError` naming the folder and
    the reason, and removes its temporary file. Temporary files of killed processes are removed at the next save into
    their folder.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any | None = None
    ) -> None:
        # Remote storage (`s3://...`) keeps Lightning's own transaction.
        if storage_options is not None or "://" in str(path) or os.name != "posix":
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        target = Path(path)
        # Serialized first, so that a failure to pickle never touches the disk, and a failed write is a plain OSError
        # (torch.save into a file turns it into a RuntimeError).
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(target.parent)
            write_atomically(buffer.getbuffer(), target)
        except OSError as e:
            if e.errno not in FIXES:
                raise
            raise CheckpointError(
                f"could not save checkpoint {target.name} in {target.parent} ({e.strerror}): {FIXES[e.errno]}; "
                "the checkpoints already there are intact"
            ) from None


def write_atomically(data: memoryview, target: Path) -> None:
    """Write `data` to `target` through a temporary file in its folder, which is removed if anything fails."""
    temporary = target.parent / f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    # Created like any file (mode 0666 less the umask), where mkstemp would make it private to its owner.
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    # The rename itself is only durable once the folder is. (Some network and FUSE file systems cannot sync a folder.)
    folder = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(folder)
    except OSError as e:
        if e.errno != errno.EINVAL:
            raise
    finally:
        os.close(folder)


def remove_stale_temporaries(folder: Path) -> None:
    """Remove the temporary files in `folder` whose writing process no longer runs (killed mid-save)."""
    for path in folder.iterdir():
        match = TEMPORARY.fullmatch(path.name)
        if match and not is_running(int(match.group(1))):
            with contextlib.suppress(OSError):  # tidying up; the save itself does not depend on it
                path.unlink()


def is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's
    return True


def use_atomic_checkpoints(strategy: Strategy) -> None:
    """Make `AtomicCheckpointIO` the strategy's checkpoint writer, unless a CheckpointIO of the user's is set."""
    if type(strategy.checkpoint_io) is TorchCheckpointIO:
        strategy.checkpoint_io = AtomicCheckpointIO()
