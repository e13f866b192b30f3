"""The sweep's journal file (`JournalFile`): the lock a killed writer leaves is taken over."""

from __future__ import annotations

import threading
from pathlib import Path

from mnist_lightning.tools.sweep.study import JournalFile


def test_a_lock_left_by_a_killed_writer_is_taken_over_with_a_relative_journal_path(workdir: Path) -> None:
    # The sweep opens lightning_logs/<study>/optuna-journal.log relative to the working folder.
    relative = Path("lightning_logs", "sweep", "optuna-journal.log")
    relative.parent.mkdir(parents=True)
    journal = JournalFile(str(relative))
    journal.lock.acquire()  # what a writer killed between taking the lock and releasing it leaves behind
    survivor = JournalFile(str(relative))
    survivor.lock.grace_period = 1  # Optuna's default is 30 s

    appended = threading.Event()
    writer = threading.Thread(target=lambda: (survivor.append_logs([{"op_code": 0}]), appended.set()), daemon=True)
    writer.start()
    writer.join(timeout=20)

    assert appended.is_set(), "the survivor still waits for the dead writer's lock"
    assert relative.read_text() == '{"op_code":0}\n'
