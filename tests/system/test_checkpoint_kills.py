"""Checkpoints that are complete or absent whatever stops a process: kill -9 at random moments of large saves, and of
a fit, with the system temp folder on another file system; a fit over the file size limit; resuming from the newest
checkpoint that loads."""

from __future__ import annotations

import os
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

from mnist_lightning.cli import cli_main
from mnist_lightning.files import TEMPORARY
from mnist_lightning.runs.checkpoint_io import AtomicCheckpointIO
from mnist_lightning.runs.checkpoints import read_checkpoint
from tests.helpers import (
    FolderEvents,
    assert_one_line_error,
    cli_command,
    kill_inside_a_save,
    one_line_error,
    run_cli,
    subprocess_env,
)

OTHER_FILE_SYSTEM = "/dev/shm"  # a tmpfs: where Lightning's own writer would put its temporary files


# A large network (22 MB per checkpoint: weights and Adam's two moments) in epochs of 8 small batches, saving
# last.ckpt every 2 steps: saving is what these tests are about.
LARGE_RUN = ["--model.hidden_sizes=[1024, 1024]", "--trainer.max_epochs=2", "--last_checkpoint.every_n_train_steps=2"]
LARGE_RUN += ["--data.val_size=200", "--data.batch_size=10", "--trainer.limit_train_batches=8"]
LARGE_RUN += ["--trainer.limit_val_batches=2", "--trainer.enable_progress_bar=false", "--test_after_fit=false"]


SAVER = """
import os, sys, torch
from mnist_lightning.runs.checkpoint_io import AtomicCheckpointIO

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


KILLS = 20


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
        for kill in range(KILLS):
            saver.stdin.write("save\n")
            saver.stdin.flush()
            pid = int(saver.stdout.readline())
            if kill % 2:  # any moment: serializing, writing, syncing, renaming, or between saves
                time.sleep(moments.uniform(0.02, 0.4))
                os.kill(pid, signal.SIGKILL)
            else:  # the moments that matter most, certainly: a random moment while its file is written
                kill_inside_a_save(pid, folder, pause=lambda: moments.uniform(0, 0.03), timeout=60)
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
    assert kills == KILLS
    assert mid_save >= kills // 2, f"only {mid_save} of {kills} kills landed inside a save"
    assert {path.name for path in folder.iterdir() if not path.name.endswith(".ckpt")} == set(), "stale temporaries"
    assert not events.written_in_place(), "a checkpoint was opened for writing under its own name"
    assert "last.ckpt" in events.renamed_into_place()
    events.close()


def one_epoch_checkpoint_and_a_last_ckpt_being_written(temporary: str, names: list[str]) -> bool:
    return temporary.startswith(".last.ckpt.") and len([name for name in names if name.startswith("epoch")]) == 1


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
        # The first epoch's best checkpoint is saved (and the second's not yet): a last.ckpt of the second epoch.
        kill_inside_a_save(fit.pid, checkpoints, wanted=one_epoch_checkpoint_and_a_last_ckpt_being_written, timeout=240)
    except AssertionError as e:
        raise AssertionError(f"{e}:\n{log.read_text()[-3000:]}") from None
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
    assert names - complete and all(TEMPORARY.fullmatch(name) for name in names - complete), names


def test_a_fit_over_the_file_size_limit_stops_with_one_line_and_keeps_last_ckpt(
    killed_fit: Path, synthetic_dir: Path
) -> None:
    run = Path("lightning_logs") / "version_0"
    last = killed_fit / run / "checkpoints" / "last.ckpt"
    before = last.read_bytes()
    limit = 4 << 20  # above every log file of the run, below a checkpoint (22 MB)

    def limit_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    resume = ["fit", f"--config={run / 'config.yaml'}", f"--ckpt_path={run}/checkpoints/last.ckpt"]
    resume += ["--trainer.enable_progress_bar=true", "--progress_bar.refresh_rate=1"]  # a bar mid-line when it fails
    output = run_cli(synthetic_dir, killed_fit, *resume, returncode=2, preexec_fn=limit_file_size)
    line = assert_one_line_error(output, "error: could not write ")
    assert "it/s" in output and not re.search(r"[^\n]error: ", output), "the error line starts on a line of its own"
    expected = (
        r"error: could not write (\S+\.ckpt) \(File too large\): raise the file size limit \(ulimit -f\) or save the "
        r"run elsewhere with --trainer\.default_root_dir DIR; nothing that was there before was changed"
    )
    written = re.fullmatch(expected, line)
    assert written, output[-3000:]
    assert (killed_fit / written.group(1)).resolve().parent == last.parent.resolve()
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
    assert f"the newest checkpoint beside it that loads is {newest}" in line
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
