"""A throwaway PostgreSQL server for tests: Debian's PostgreSQL 15 in a temporary folder, on a free loopback port.

`initdb` and `pg_ctl` refuse to run as root; as root they run as the `postgres` user (which Debian's package
creates). Missing binaries fail the test with the command that installs them; nothing is skipped.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

BIN = Path(os.environ.get("POSTGRES_BIN", "/usr/lib/postgresql/15/bin"))
INSTALL = "apt-get update && apt-get install -y postgresql-15"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_server_user(command: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@contextmanager
def postgres_server() -> Iterator[str]:
    """Start a server, yield its URL (postgresql://postgres@127.0.0.1:PORT/postgres), stop it and delete it."""
    missing = [name for name in ("initdb", "pg_ctl") if not (BIN / name).is_file()]
    if missing:
        pytest.fail(f"PostgreSQL server binaries {missing} not in {BIN}: install them with `{INSTALL}`")
    folder = Path(tempfile.mkdtemp(prefix="sweep-postgres-"))  # not under pytest's tmp_path, which root alone reads
    data = folder / "data"
    port = free_port()
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
    run = {"check": True, "capture_output": True, "text": True, "timeout": 60}
    try:
        subprocess.run(_as_server_user([str(BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"]), **run)
        options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        start = [str(BIN / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(folder / "log"), "-w", "start"]
        subprocess.run(_as_server_user(start), **run)
        try:
            yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
        finally:
            stop = [str(BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"]
            subprocess.run(_as_server_user(stop), **run)
    except subprocess.CalledProcessError as e:
        pytest.fail(f"PostgreSQL did not start: {e.stderr or e.stdout}")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
