"""scripts/test-programs, which `make test` runs first: without root, a missing program is one line naming the command
that installs it, before any test runs."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).parents[2] / "scripts" / "test-programs"


def run_as_user(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    if os.geteuid() == 0:  # CI runs as root: run the script as a user who cannot install
        command = ["runuser", "-u", "nobody", "--", "env", *(f"{k}={v}" for k, v in env.items()), "bash", str(SCRIPT)]
        return subprocess.run(command, capture_output=True, text=True, timeout=30)
    return subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=30, env={**os.environ, **env})


def test_a_missing_program_without_root_is_one_line_with_the_install_command() -> None:
    result = run_as_user({"PG_BIN": "/nonexistent"})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: the tests need postgresql-15")
    assert "apt-get update && apt-get install -y postgresql-15" in lines[0]


def test_nothing_missing_is_silent_success() -> None:
    """`make test` has run the script as root before the tests: everything is there now."""
    result = run_as_user({})
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
