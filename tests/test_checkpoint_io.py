"""Checkpoints that are complete or absent: atomic saves, writes that fail and keep what is on disk, kill -9 at random
moments with the system temp folder on another file system, and resuming from the newest checkpoint that loads."""

from __future__ import annotations

import ctypes
import errno
import os
import random
import re
import resource
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from mnist_lightning.checkpoint_io import TEMPORARY, AtomicCheckpointIO, use_atomic_checkpoints
from mnist_lightning.cli import cli_main
from mnist_lightning.errors import CheckpointError
from mnist_lightning.runs import read_checkpoint
from tests.synthetic import cli_command, one_line_error, subprocess_env

OTHER_FILE_SYSTEM = "/dev/shm"  # a tmpfs: where Lightning's own writer would put its temporary files
# A large network (22 MB per checkpoint: weights and Adam's two moments) in epochs of 8 small batches, saving
# last.ckpt every 2 steps: saving is what these tests are about.
LARGE_RUN = ["--model.hidden_sizes=[1024, 1024]", "--trainer.max_epochs=2", "--last_checkpoint.every_n_train_steps=2"]
LARGE_RUN += ["--data.val_size=200", "--data.batch_size=10", "--trainer.limit_train_batches=8"]
LARGE_RUN += ["--trainer.limit_val_batches=2", "--trainer.enable_progress_bar=false", "--test_after_fit=false"]


@pytest.fixture(autouse=True)
def no_pytest_argv(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["mnist-lightning"])


def plain_checkpoint(step: int, size: int = 1000) -> dict:
    return {"state_dict": {"weight": torch.full((size,), float(step))}, "global_step": step}


class FolderEvents:
    """What happens to the files of one folder, as Linux's inotify reports it: which names were created or written
    in place, and which were renamed into place. It sees every process, whatever opens the files."""

    CREATE, MODIFY, CLOSE_WRITE, MOVED_TO, OVERFLOW = 0x100, 0x2, 0x8, 0x80, 0x4000

    def __init__(self, folder: Path) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self.fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        mask = self.CREATE | self.MODIFY | self.CLOSE_WRITE | self.MOVED_TO
        assert self.fd >= 0 and libc.inotify_add_watch(self.fd, os.fsencode(folder), mask) >= 0, os.strerror(
            ctypes.get_errno()
        )
        self.events: list[tuple[int, str]] = []

    def read(self) -> list[tuple[int, str]]:
        while True:
            try:
                data = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                break
            offset = 0
            while offset < len(data):
                _, mask, _, length = struct.unpack_from("iIII", data, offset)
                name = data[offset + 16 : offset + 16 + length].rstrip(b"\0").decode()
                self.events.append((mask, name))
                offset += 16 + length
        assert not any(mask & self.OVERFLOW for mask, _ in self.events), "inotify lost events"
        return self.events

    def written_in_place(self, suffix: str = ".ckpt") -> set[str]:
        written = self.CREATE | self.MODIFY | self.CLOSE_WRITE
        return {name for mask, name in self.read() if mask & written and name.endswith(suffix)}

    def renamed_into_place(self, suffix: str = ".ckpt") -> set[str]:
        return {name for mask, name in self.read() if mask & self.MOVED_TO and name.endswith(suffix)}

    def close(self) -> None:
        os.close(self.fd)


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


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_temporaries_of_killed_saves_are_removed_at_the_next_save_and_nothing_else(tmp_path: Path) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = [
        tmp_path / f".last.ckpt.{dead.pid}.0a1b2c3d.tmp",
        tmp_path / f".epoch03-val_acc0.9.ckpt.{dead.pid}.ffff0000.tmp",
    ]
    running = tmp_path / f".last.ckpt.{os.getpid()}.12345678.tmp"  # a save in progress in a running process
    others = [tmp_path / "notes.tmp", tmp_path / "best.ckpt", tmp_path / ".last.ckpt.tmp"]
    for path in [*stale, running, *others]:
        path.write_bytes(b"partial")
    assert not any(path.name.endswith(".ckpt") for path in [*stale, running]), "a temporary is never a checkpoint"
    AtomicCheckpointIO().save_checkpoint(plain_checkpoint(1), tmp_path / "last.ckpt")
    assert not any(path.exists() for path in stale)
    assert all(path.exists() for path in [running, *others])


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
    with pytest.raises(CheckpointError) as error:
        AtomicCheckpointIO().save_checkpoint(plain_checkpoint(2), target)
    monkeypatch.undo()
    message = str(error.value)
    assert "\n" not in message and str(tmp_path) in message and os.strerror(code) in message and fix in message
    assert torch.load(target, weights_only=True)["global_step"] == 1
    assert [path.name for path in tmp_path.iterdir()] == ["last.ckpt"]


def test_other_failures_are_not_dressed_up_as_a_users_mistake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args, **kwargs):
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr("os.fsync", fail)
    with pytest.raises(OSError, match="Input/output error") as error:
        AtomicCheckpointIO().save_checkpoint(plain_checkpoint(2), tmp_path / "last.ckpt")
    assert not isinstance(error.value, CheckpointError)
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


SAVER = """
import os, sys, torch
from mnist_lightning.checkpoint_io import AtomicCheckpointIO

torch.set_num_threads(1)
folder = sys.argv[1]
checkpoint = {"state_dict": {f"layer{i}": torch.randn(1024, 1024) for i in range(6)}, "global_step": 0}  # 24 MB
checkpoint_io = AtomicCheckpointIO()
for command in sys.stdin:
    pid = os.fork()
    if pid == 0:  # saves until killed, or once
        step = 0
        while True:
            step += 1
            checkpoint["global_step"] = step
            name = "last.ckpt" if step % 2 else f"top{step % 3}.ckpt"  # like last and top-k checkpoints
            checkpoint_io.save_checkpoint(checkpoint, os.path.join(folder, name))
            if command.strip() == "once":
                os._exit(0)
    print(pid, flush=True)
    os.waitpid(pid, 0)
    print("reaped", flush=True)
"""


def test_kill_9_at_random_moments_of_large_saves_leaves_only_complete_checkpoints(tmp_path: Path) -> None:
    """One process imports torch once and forks a saver per kill, so that 20 kills fit in seconds."""
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    events = FolderEvents(folder)
    env = {**subprocess_env(), "TMPDIR": OTHER_FILE_SYSTEM}
    saver = subprocess.Popen(
        [sys.executable, "-c", SAVER, str(folder)], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    moments = random.Random(17)
    kills = mid_save = 0
    try:
        deadline = time.monotonic() + 60
        while kills < 20 and time.monotonic() < deadline:
            saver.stdin.write("save\n")
            saver.stdin.flush()
            pid = int(saver.stdout.readline())
            if kills % 2:  # any moment: serializing, writing, syncing, renaming, or between saves
                time.sleep(moments.uniform(0.02, 0.4))
            else:  # the moments that matter most: while its file is written
                wait_for_temporary_of(pid, folder)
                time.sleep(moments.uniform(0, 0.03))
            os.kill(pid, signal.SIGKILL)
            assert saver.stdout.readline() == "reaped\n"
            kills += 1
            names = {path.name for path in folder.iterdir()}
            leftovers = {name for name in names if not name.endswith(".ckpt")}
            assert all(TEMPORARY.fullmatch(name) for name in leftovers), leftovers
            mid_save += bool(leftovers)
            for name in names - leftovers:
                checkpoint = torch.load(folder / name, weights_only=True)
                assert len(checkpoint["state_dict"]) == 6 and checkpoint["global_step"] > 0, name
        saver.stdin.write("once\n")
        saver.stdin.flush()
        saver.stdout.readline()
        assert saver.stdout.readline() == "reaped\n"
    finally:
        saver.kill()
        saver.communicate()
    print(f"{kills} kills, {mid_save} of them inside a save")
    assert kills >= 15, f"only {kills} kills in 60 s"
    assert mid_save >= kills // 3, f"only {mid_save} of {kills} kills landed inside a save"
    assert {path.name for path in folder.iterdir() if not path.name.endswith(".ckpt")} == set(), "stale temporaries"
    assert not events.written_in_place(), "a checkpoint was opened for writing under its own name"
    assert "last.ckpt" in events.renamed_into_place()
    events.close()


def wait_for_temporary_of(pid: int, folder: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not any((m := TEMPORARY.fullmatch(name)) and m.group(1) == str(pid) for name in os.listdir(folder)):
        assert time.monotonic() < deadline, f"process {pid} started no save in {timeout} s"
        time.sleep(0.001)


@pytest.fixture(scope="module")
def killed_fit(synthetic_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fit of a large network killed with SIGKILL while it writes a last.ckpt, in its second epoch: its workdir."""
    workdir = tmp_path_factory.mktemp("killed")
    checkpoints = workdir / "lightning_logs" / "version_0" / "checkpoints"
    log = workdir / "fit.log"  # not a pipe: one that nobody reads would stop the fit once full
    with log.open("w") as output:
        fit = subprocess.Popen(
            cli_command(synthetic_dir, "fit", *LARGE_RUN),
            cwd=workdir,
            env={**subprocess_env(), "TMPDIR": OTHER_FILE_SYSTEM},
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 240
        while True:
            names = os.listdir(checkpoints) if checkpoints.is_dir() else []
            if any(name.startswith("epoch") for name in names) and any(
                name.startswith(".last.ckpt.") for name in names
            ):
                break
            assert fit.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "no second-epoch save in 240 s"
            time.sleep(0.002)
    finally:
        fit.kill()
        fit.wait(timeout=60)
    return workdir


def test_a_fit_killed_while_saving_leaves_only_checkpoints_that_load(killed_fit: Path) -> None:
    checkpoints = killed_fit / "lightning_logs" / "version_0" / "checkpoints"
    names = {path.name for path in checkpoints.iterdir()}
    complete = {name for name in names if name.endswith(".ckpt")}
    assert "last.ckpt" in complete and len(complete) == 2, names
    for name in complete:
        assert read_checkpoint(checkpoints / name)["global_step"] >= 8
    assert all(TEMPORARY.fullmatch(name) for name in names - complete), names


def test_a_fit_over_the_file_size_limit_stops_with_one_line_and_keeps_last_ckpt(
    killed_fit: Path, synthetic_dir: Path
) -> None:
    run = Path("lightning_logs") / "version_0"
    last = killed_fit / run / "checkpoints" / "last.ckpt"
    before = last.read_bytes()
    limit = 4 << 20  # above every log file of the run, below a checkpoint (22 MB)

    def limit_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    resumed = subprocess.run(
        cli_command(
            synthetic_dir, "fit", f"--config={run / 'config.yaml'}", f"--ckpt_path={run}/checkpoints/last.ckpt"
        ),
        cwd=killed_fit,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=limit_file_size,
    )
    assert resumed.returncode == 2, resumed.stderr[-3000:]
    assert "Traceback" not in resumed.stderr
    errors = [line for line in resumed.stderr.splitlines() if line.startswith("error: ")]
    folder = re.escape(str(run / "checkpoints"))
    expected = (
        rf"error: could not save checkpoint \S+\.ckpt in {folder} \(File too large\): raise the file size limit "
        r"\(ulimit -f\) or save elsewhere with --trainer.logger.init_args.save_dir DIR; the checkpoints already there "
        r"are intact"
    )
    assert len(errors) == 1 and re.fullmatch(expected, errors[0]), resumed.stderr[-3000:]
    assert last.read_bytes() == before
    leftovers = [path.name for path in last.parent.iterdir() if not path.name.endswith(".ckpt")]
    assert leftovers == [], "the failed save removed its temporary, and the killed fit's"


def test_resuming_from_a_last_ckpt_that_does_not_load_names_the_newest_that_does_and_that_command_completes(
    killed_fit: Path, synthetic_mnist: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """The resumed fit also shows that the CLI renames every checkpoint into place, with the system temp folder on
    another file system."""
    shutil.copytree(killed_fit / "lightning_logs", tmp_path / "lightning_logs")
    checkpoints = Path("lightning_logs") / "version_0" / "checkpoints"
    last = tmp_path / checkpoints / "last.ckpt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # as a copy into place cut short leaves it
    monkeypatch.chdir(tmp_path)
    config = Path("lightning_logs") / "version_0" / "config.yaml"
    line = one_line_error(capsys, ["fit", f"--config={config}", f"--ckpt_path={checkpoints / 'last.ckpt'}"])
    newest = next(checkpoints.glob("epoch*.ckpt"))
    assert f"--ckpt_path {checkpoints / 'last.ckpt'} is not a complete checkpoint" in line
    assert f"the newest checkpoint of that run that loads is {newest}" in line
    command = re.search(r"resume with: python -m mnist_lightning (fit .*)", line).group(1)
    assert command == f"fit --config {config} --ckpt_path {newest}"

    monkeypatch.setattr(tempfile, "tempdir", OTHER_FILE_SYSTEM)
    assert os.stat(OTHER_FILE_SYSTEM).st_dev != os.stat(tmp_path).st_dev
    events = FolderEvents(checkpoints)
    cli = cli_main(command.split())
    assert cli.trainer.current_epoch == 2, "the resumed run ends at the epoch count of an uninterrupted one"
    assert read_checkpoint(last)["epoch"] == 1
    assert type(cli.trainer.strategy.checkpoint_io) is AtomicCheckpointIO
    assert "last.ckpt" in events.renamed_into_place()
    assert not events.written_in_place(), "a checkpoint was opened for writing under its own name"
    events.close()


def test_a_checkpoint_that_does_not_load_outside_a_run_names_the_newest_beside_it(tmp_path: Path) -> None:
    older, newer_but_broken = tmp_path / "older.ckpt", tmp_path / "newer.ckpt"
    torch.save(plain_checkpoint(1), older)
    newer_but_broken.write_bytes(b"not a checkpoint")
    (tmp_path / f".wanted.ckpt.{os.getpid()}.0a1b2c3d.tmp").write_bytes(b"partial")
    os.utime(older, ns=(1, 1))
    with pytest.raises(CheckpointError) as error:
        read_checkpoint(tmp_path / "wanted.ckpt")
    assert str(error.value) == (
        f"--ckpt_path {tmp_path / 'wanted.ckpt'}: no such file; the newest checkpoint of that run that loads is "
        f"{older}: pass --ckpt_path {older} instead"
    )
