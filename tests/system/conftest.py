"""Fixtures of the system tests only: one `serve` process per test session (per xdist worker), and a throwaway
PostgreSQL server."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import REAL_MODEL_VARIABLE, Exported, free_port, subprocess_env

PG_BIN = Path(os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin"))
PG_INSTALL = "apt-get update && apt-get install -y postgresql-15"


@pytest.fixture(scope="session")
def server(exported: Exported) -> Iterator[str]:
    """The base URL of `python -m mnist_lightning serve --model <export> --port 0` (default host), running; it must
    never answer 500 or log a traceback."""
    model = os.environ.get(REAL_MODEL_VARIABLE) or str(exported.model)
    command = [sys.executable, "-m", "mnist_lightning", "serve", "--model", model, "--port", "0"]
    process = subprocess.Popen(
        command, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines: list[str] = []
    found = threading.Event()

    def read_log() -> None:  # keeps draining its output so that the server never blocks on a full pipe
        for line in process.stdout:
            lines.append(line)
            if "Uvicorn running on" in line:
                found.set()

    threading.Thread(target=read_log, daemon=True).start()
    try:
        assert found.wait(timeout=180), "serve did not start:\n" + "".join(lines)[-3000:]
        url = re.search(r"Uvicorn running on (http://\S+)", "".join(lines)).group(1)
        yield url
        assert process.poll() is None, "serve died during the tests:\n" + "".join(lines)[-3000:]
        server_errors = [line for line in lines if '" 500' in line or "Traceback" in line]
        assert not server_errors, "the server answered 500 or raised:\n" + "".join(lines)[-3000:]
    finally:
        process.terminate()
        process.wait(timeout=30)


def _as_server_user(command: list[str]) -> list[str]:
    """`initdb` and `pg_ctl` refuse to run as root; as root they run as the `postgres` user (which Debian's package
    creates)."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@pytest.fixture
def postgres() -> Iterator[str]:
    """A throwaway PostgreSQL server (Debian's PostgreSQL 15) in a temporary folder, on a free loopback port: its URL,
    postgresql://postgres@127.0.0.1:PORT/postgres. Missing binaries fail the test with the command that installs them;
    nothing is skipped."""
    missing = [name for name in ("initdb", "pg_ctl") if not (PG_BIN / name).is_file()]
    if missing:
        pytest.fail(f"PostgreSQL server binaries {missing} not in {PG_BIN}: install them with `{PG_INSTALL}`")
    folder = Path(tempfile.mkdtemp(prefix="sweep-postgres-"))  # not under pytest's tmp_path, which root alone reads
    data = folder / "data"
    port = free_port()
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
    run = {"check": True, "capture_output": True, "text": True, "timeout": 60}
    try:
        subprocess.run(
            _as_server_user([str(PG_BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"]), **run
        )
        options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        start = [str(PG_BIN / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(folder / "log"), "-w", "start"]
        subprocess.run(_as_server_user(start), **run)
        try:
            yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
        finally:
            stop = [str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"]
            subprocess.run(_as_server_user(stop), **run)
    except subprocess.CalledProcessError as e:
        pytest.fail(f"PostgreSQL did not start: {e.stderr or e.stdout}")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
