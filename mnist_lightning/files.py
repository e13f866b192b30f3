"""Files a user keeps (checkpoints, exported models, downloads, summaries), written so that they are complete or
absent whatever stops the process, and the process-liveness check that tells a killed writer's leftovers apart.

Every such file goes through `write_atomically`: a temporary file beside the target, fsync, rename over the target,
fsync of the folder. A kill or a power cut then leaves the previous file or the new one, never a part of one; the
system temp folder is never used, since a move from another file system is a copy straight into the target.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import os
import re
import secrets
import socket
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import BinaryIO

from mnist_lightning.errors import UserError

# `.last.ckpt.<pid>@<host>.<random>.tmp`: hidden, and without the target's ending, so nothing takes it for a checkpoint
# or a data file; the pid tells whether its writer still runs, on the host named (a shared file system holds the
# temporaries of other machines' writers, whose pids mean nothing here).
HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())
TEMPORARY = re.compile(r"\..+\.(\d+)@([A-Za-z0-9-]+)\.[0-9a-f]{8}\.tmp")

# What a user can do about each way a write fails; anything else is not theirs to fix and keeps its traceback.
FIXES = {
    errno.ENOSPC: "free space on that disk",
    errno.EDQUOT: "free space within your disk quota",
    errno.EFBIG: "raise the file size limit (ulimit -f)",
    errno.EACCES: "make that folder writable",
    errno.EPERM: "make that folder writable",
    errno.EROFS: "remount that file system writable",
    errno.ENOTDIR: "a file stands where a folder is needed: move it away",
    errno.EEXIST: "a file stands where a folder is needed: move it away",
    errno.EISDIR: "a folder stands where the file goes: move it away",
}


class WriteError(UserError, OSError):
    """A file could not be written for a reason the user can fix; what was there before is intact."""


UNCHANGED = "nothing that was there before was changed"


def write_failure(
    target: Path | str, code: int | None, elsewhere: str = "", kept: str = UNCHANGED, error: type = WriteError
) -> UserError:
    """The one line for a write to `target` that failed, or would fail, with errno `code`: the reason, what the user
    can do about it (FIXES), `elsewhere` (how to write somewhere else: "or pass --output PATH") and `kept` (what is
    intact). `error`: the UserError kind to raise (a WriteError unless the caller's own kind says more)."""
    reason = os.strerror(code) if code else "failed"
    fix = FIXES.get(code, "make that folder writable")
    return error(f"could not write {target} ({reason}): {fix}{' ' + elsewhere if elsewhere else ''}; {kept}")


Content = bytes | bytearray | memoryview | Callable[[BinaryIO], object]


def write_atomically(target: Path, content: Content, elsewhere: str = "") -> None:
    """Write `content` (bytes, or a function that writes into an open binary file) to `target`, atomically.

    A failure the user can fix (disk full, quota, permissions, a file where a folder should be, ...) raises
    `WriteError` naming the target, the reason and the fix, plus `elsewhere` (e.g. "or pass --output PATH"); the
    temporary file is removed and whatever was at `target` before stays as it was.
    """
    target = Path(target)
    try:
        if target.is_dir():
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(target))
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(target.parent)
        _write_and_rename(target, content)
    except OSError as e:
        if e.errno not in FIXES:
            raise
        raise write_failure(target, e.errno, elsewhere) from None


def obstacle(folder: Path) -> tuple[Path, int] | None:
    """What would stop a file being written in `folder` (or in the folders that would be made for it), as the path in
    the way and the errno a write would fail with; None when nothing does. Checked with the effective ids, as the write
    would be."""
    existing = Path(folder)
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return existing, errno.ENOTDIR
    if not os.access(existing, os.W_OK | os.X_OK, effective_ids=True):
        return existing, errno.EROFS if os.statvfs(existing).f_flag & os.ST_RDONLY else errno.EACCES
    return None


def check_writable(target: Path, elsewhere: str = "") -> None:
    """Raise, before anything is written, the `WriteError` that `write_atomically(target, ...)` would raise because of
    where `target` is (a folder in its place, a file in its path, a read-only folder or file system)."""
    target = Path(target)
    found = (target, errno.EISDIR) if target.is_dir() else obstacle(target.parent)
    if found is not None:
        raise write_failure(target, found[1], elsewhere)


def _write_and_rename(target: Path, content: Content) -> None:
    temporary = target.parent / f".{target.name}.{os.getpid()}@{HOST}.{secrets.token_hex(4)}.tmp"
    # Created like any file (mode 0666 less the umask), where mkstemp would make it private to its owner.
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(descriptor, "wb") as file:
            if callable(content):
                content(file)
            else:
                file.write(content)
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
    """Remove the temporary files in `folder` whose writing process, on this host, no longer runs (killed mid-write)."""
    for path in folder.iterdir():
        match = TEMPORARY.fullmatch(path.name)
        if match and match.group(2) == HOST and not is_running(int(match.group(1))):
            with contextlib.suppress(OSError):  # tidying up; the write itself does not depend on it
                path.unlink()


def process_start(pid: int) -> str | None:
    """When process `pid` started (Linux's clock ticks since boot), which tells it from a later process with its pid;
    None where /proc does not say."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def is_running(pid: int, started: str | None = None) -> bool:
    """Whether process `pid` runs on this machine (and, given `started` from `process_start`, is still that one)."""
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's
    return started is None or process_start(pid) == started


def write_csv(target: Path, header: list[str], rows: Iterable[Iterable[object]], elsewhere: str = "") -> None:
    """Write a CSV file (a header line, then `rows`) with `write_atomically`."""
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(header)
    writer.writerows(rows)
    write_atomically(target, text.getvalue().encode(), elsewhere)
