"""`AtomicCheckpointIO`: Lightning's checkpoint writer replaced by the project's atomic one, with the failures a user
can fix as one line."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from mnist_lightning.errors import UserError
from mnist_lightning.files import WriteError
from mnist_lightning.runs.checkpoint_io import AtomicCheckpointIO, use_atomic_checkpoints
from tests.helpers import FolderEvents, current_umask, plain_checkpoint


def test_a_save_renames_a_new_file_over_the_target_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "checkpoints" / "last.ckpt"
    checkpoint_io = AtomicCheckpointIO()
    checkpoint_io.save_checkpoint(plain_checkpoint(1), target)
    first = target.stat()
    events = FolderEvents(target.parent)
    checkpoint_io.save_checkpoint(plain_checkpoint(2), target)
    assert torch.load(target, weights_only=True)["global_step"] == 2
    assert target.stat().st_ino != first.st_ino, "a new file took the name; the old one was not rewritten"
    assert target.stat().st_mode == first.st_mode == 0o100666 & ~current_umask()
    assert [path.name for path in target.parent.iterdir()] == ["last.ckpt"]
    assert events.renamed_into_place() == {"last.ckpt"} and not events.written_in_place()
    # The observer does see a file written in place.
    (target.parent / "direct.ckpt").write_bytes(b"written in place")
    assert events.written_in_place() == {"direct.ckpt"}
    events.close()


@pytest.mark.parametrize(
    ("code", "fix"),
    [
        (errno.ENOSPC, "free space on that disk"),
        (errno.EDQUOT, "disk quota"),
        (errno.EFBIG, "ulimit -f"),
        (errno.EACCES, "make that folder writable"),
        (errno.EPERM, "make that folder writable"),
        (errno.EROFS, "writable"),
    ],
)
@pytest.mark.parametrize("failing", ["os.open", "os.fsync"])
def test_a_failed_write_raises_one_line_keeps_the_previous_checkpoint_and_removes_its_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int, fix: str, failing: str
) -> None:
    target = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint(plain_checkpoint(1), target)

    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(failing, fail)
    with pytest.raises(WriteError) as error:
        AtomicCheckpointIO().save_checkpoint(plain_checkpoint(2), target)
    monkeypatch.undo()
    message = str(error.value)
    assert "\n" not in message and str(tmp_path) in message and os.strerror(code) in message and fix in message
    assert message.startswith(f"could not write {target} ({os.strerror(code)}): ")
    assert message.endswith(
        " or save the run elsewhere with --trainer.default_root_dir DIR; nothing that was there before was changed"
    )
    assert torch.load(target, weights_only=True)["global_step"] == 1
    assert [path.name for path in tmp_path.iterdir()] == ["last.ckpt"]


def test_other_failures_are_not_dressed_up_as_a_users_mistake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args, **kwargs):
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr("os.fsync", fail)
    with pytest.raises(OSError, match="Input/output error") as error:
        AtomicCheckpointIO().save_checkpoint(plain_checkpoint(2), tmp_path / "last.ckpt")
    assert not isinstance(error.value, UserError)
    assert not list(tmp_path.iterdir())


class UsersOwnCheckpointIO(TorchCheckpointIO):
    pass


def test_lightnings_default_writer_is_replaced_and_a_users_own_kept() -> None:
    quiet = {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False}
    default = L.Trainer(**quiet)
    use_atomic_checkpoints(default.strategy)
    assert type(default.strategy.checkpoint_io) is AtomicCheckpointIO
    own = UsersOwnCheckpointIO()
    configured = L.Trainer(plugins=[own], **quiet)
    use_atomic_checkpoints(configured.strategy)
    assert configured.strategy.checkpoint_io is own
