"""The one atomic writer (`write_atomically`) and what it stands on: a new file renamed over the target, the
temporaries of killed writers removed, failures a user can fix in one line that keeps what was there."""

from __future__ import annotations

import csv
import errno
import os
import subprocess
from pathlib import Path

import pytest

from mnist_lightning.files import HOST, TEMPORARY, WriteError, is_running, process_start, write_atomically, write_csv


def test_temporaries_of_killed_saves_are_removed_at_the_next_save_and_nothing_else(tmp_path: Path) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = [
        tmp_path / f".last.ckpt.{dead.pid}@{HOST}.0a1b2c3d.tmp",
        tmp_path / f".epoch03-val_acc0.9.ckpt.{dead.pid}@{HOST}.ffff0000.tmp",
    ]
    running = tmp_path / f".last.ckpt.{os.getpid()}@{HOST}.12345678.tmp"  # a save in progress in a running process
    # Another machine's save in progress on a shared file system: its pid says nothing here.
    elsewhere = tmp_path / f".last.ckpt.{dead.pid}@another-{HOST}.87654321.tmp"
    others = [tmp_path / "notes.tmp", tmp_path / "best.ckpt", tmp_path / ".last.ckpt.tmp", elsewhere]
    for path in [*stale, running, *others]:
        path.write_bytes(b"partial")
    assert not any(path.name.endswith(".ckpt") for path in [*stale, running]), "a temporary is never a checkpoint"
    assert all(TEMPORARY.fullmatch(path.name) for path in [*stale, running, elsewhere])
    write_atomically(tmp_path / "last.ckpt", b"saved")
    assert not any(path.exists() for path in stale)
    assert all(path.exists() for path in [running, *others])


def test_content_can_be_bytes_or_a_function_that_writes_into_the_file(tmp_path: Path) -> None:
    target = tmp_path / "new" / "folder" / "file.bin"
    write_atomically(target, b"first")
    assert target.read_bytes() == b"first"
    write_atomically(target, lambda file: file.write(b"second"))
    assert target.read_bytes() == b"second"
    assert [path.name for path in target.parent.iterdir()] == ["file.bin"]


def test_a_failed_write_names_the_file_the_fix_and_where_else_to_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "summary.csv"
    target.write_bytes(b"before")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("os.fsync", full)
    with pytest.raises(WriteError) as error:
        write_atomically(target, b"after", elsewhere="or pass --output PATH")
    assert str(error.value) == (
        f"could not write {target} (No space left on device): free space on that disk or pass --output PATH; "
        "nothing that was there before was changed"
    )
    assert target.read_bytes() == b"before" and [path.name for path in tmp_path.iterdir()] == ["summary.csv"]


def test_a_folder_at_the_target_or_a_file_where_a_folder_goes_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "taken").mkdir()
    with pytest.raises(WriteError, match="a folder stands where the file goes: move it away"):
        write_atomically(tmp_path / "taken", b"x")
    (tmp_path / "file").write_text("")
    with pytest.raises(WriteError, match="a file stands where a folder is needed: move it away"):
        write_atomically(tmp_path / "file" / "inside.csv", b"x")
    assert (tmp_path / "taken").is_dir() and (tmp_path / "file").read_text() == ""


def test_write_csv_writes_the_header_and_the_rows(tmp_path: Path) -> None:
    write_csv(tmp_path / "rows.csv", ["index", "label"], [[0, "T-shirt/top"], [1, 'say "no", twice']])
    with open(tmp_path / "rows.csv", newline="") as file:
        assert list(csv.reader(file)) == [["index", "label"], ["0", "T-shirt/top"], ["1", 'say "no", twice']]


def test_a_process_is_running_until_it_ends_and_its_start_tells_it_from_a_later_one() -> None:
    started = process_start(os.getpid())
    assert started is not None and is_running(os.getpid(), started)
    assert not is_running(os.getpid(), str(int(started) + 1)), "another process, given this pid later"
    ended = subprocess.Popen(["true"])
    ended.wait()
    assert not is_running(ended.pid) and process_start(ended.pid) is None
