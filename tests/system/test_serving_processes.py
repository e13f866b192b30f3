"""`export` and `serve` as users start them, in fresh processes: Ctrl-C and SIGTERM at each stage (the imports, the
start-up, serving, the export itself) end with one line and exit status 130 or 143; a file size limit or a read-only
file system at the write keeps the previous model; a port that another `serve` holds is named as such."""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from mnist_lightning import commands
from tests.helpers import Exported, ServeProcess, catches, drawing, encoded, one_line_error, subprocess_env

SIGNALS = [
    pytest.param(signal.SIGINT, 130, "stopped by Ctrl-C", id="ctrl-c"),
    pytest.param(signal.SIGTERM, 143, "stopped by SIGTERM", id="sigterm"),
]


def export_command(synthetic_dir: Path, *args: str) -> list[str]:
    """`python -m mnist_lightning export ARGS --data_dir <synthetic>`, accepting the synthetic data as MNIST (run it
    with `env=subprocess_env()`)."""
    variable = f"MNIST_LIGHTNING_TEST_SYNTHETIC={synthetic_dir}"
    return ["env", variable, sys.executable, "-m", "mnist_lightning", "export", *args, f"--data_dir={synthetic_dir}"]


def wait_until(condition, process: subprocess.Popen, what: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, f"the process ended ({process.returncode}) before {what}"
        assert time.monotonic() < deadline, f"no {what} in {timeout} s"
        time.sleep(0.01)


def handles_signals(pid: int) -> bool:
    """The command runs inside `interrupts.handled()` (the first thing `commands.main` does, before the slow
    imports): SIGTERM has a handler. (The Python process it runs in is `env`'s child; `env` execs it, same pid.)"""
    return catches(pid, signal.SIGTERM)


def assert_stopped_in_one_line(log: str, returncode: int, exit_status: int, line: str) -> None:
    assert returncode == exit_status, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
    assert log.rstrip().splitlines()[-1] == line, log[-3000:]
    assert "error" not in log.lower(), log[-3000:]


# --- serve --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("signum", "exit_status", "line"), SIGNALS)
def test_a_signal_while_serving_ends_serve_after_uvicorns_shutdown_in_one_line(
    exported: Exported, signum: int, exit_status: int, line: str
) -> None:
    served = ServeProcess("--model", str(exported.model), "--port", "0")
    try:
        url = served.url()
        assert httpx.post(f"{url}/predict", content=encoded(drawing(3)), timeout=60).status_code == 200
    finally:
        returncode = served.stop(signum)
    assert "Application shutdown complete" in served.log, "uvicorn shut down gracefully first"
    assert_stopped_in_one_line(served.log, returncode, exit_status, line)


@pytest.mark.parametrize(("signum", "exit_status", "line"), SIGNALS)
def test_a_signal_during_serves_start_up_ends_it_in_one_line(
    exported: Exported, signum: int, exit_status: int, line: str
) -> None:
    """--ckpt_path exports the checkpoint in memory first, for several seconds: the signal lands there."""
    served = ServeProcess("--ckpt_path", str(exported.checkpoint), "--port", "0")
    try:
        served.wait_for("Exporting")
    finally:
        returncode = served.stop(signum)
    assert "Uvicorn running" not in served.log
    assert_stopped_in_one_line(served.log, returncode, exit_status, line)


@pytest.mark.parametrize(("signum", "exit_status", "line"), SIGNALS)
def test_a_signal_during_serves_imports_ends_it_in_one_line(
    exported: Exported, signum: int, exit_status: int, line: str
) -> None:
    served = ServeProcess("--model", str(exported.model), "--port", "0")
    try:
        wait_until(lambda: handles_signals(served.process.pid), served.process, "signal handlers")
    finally:
        returncode = served.stop(signum)
    assert "Uvicorn running" not in served.log, "the signal came during the imports"
    assert_stopped_in_one_line(served.log, returncode, exit_status, line)


def test_a_port_another_serve_holds_is_named_as_such(server: str, exported: Exported, capsys) -> None:
    port = server.rsplit(":", 1)[1]
    line = one_line_error(
        capsys, ["serve", "--model", str(exported.model), "--port", port], main=commands.main, alone=True
    )
    assert line == (
        f"error: --port {port}: another `python -m mnist_lightning serve` already listens on 127.0.0.1:{port} (a "
        "mnist model on onnxruntime): use it, stop it, or pass another --port (0: any free port)"
    )
    assert httpx.get(f"{server}/health").status_code == 200, "the other serve runs on"


# --- export -------------------------------------------------------------------------------------------------------


def loaded(pid: int, library: str) -> bool:
    """Whether process `pid` has mapped a shared library whose name holds `library`."""
    return library in Path(f"/proc/{pid}/maps").read_text()


STAGES = {
    # stage: what tells that the export has reached it
    "imports": handles_signals,
    # torch.onnx's exporter loads onnx's C++ extension when it starts; onnxruntime's comes seconds later.
    "export": lambda pid: loaded(pid, "onnx_cpp2py_export"),
}


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize(("signum", "exit_status", "line"), SIGNALS)
def test_a_signal_during_export_ends_it_in_one_line_and_writes_nothing(
    exported: Exported, synthetic_dir: Path, tmp_path: Path, signum: int, exit_status: int, line: str, stage: str
) -> None:
    output = tmp_path / "model.onnx"
    command = export_command(synthetic_dir, f"--ckpt_path={exported.checkpoint}", f"--output={output}")
    process = subprocess.Popen(
        command, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        wait_until(lambda: STAGES[stage](process.pid), process, stage)
        process.send_signal(signum)
        log, _ = process.communicate(timeout=120)
    finally:
        process.kill()
    assert_stopped_in_one_line(log, process.returncode, exit_status, line)
    assert list(tmp_path.iterdir()) == [], "nothing written, no temporary left"


def test_a_file_size_limit_at_the_write_keeps_the_previous_model(
    exported: Exported, synthetic_dir: Path, tmp_path: Path
) -> None:
    """As a full disk would: the model (about 100 kB) is over the limit, everything the export reads is not."""
    output = tmp_path / "model.onnx"
    shutil.copy(exported.model, output)
    previous = output.read_bytes()
    limit = 32 << 10

    def limit_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    command = export_command(
        synthetic_dir, f"--ckpt_path={exported.checkpoint}", f"--output={output}", "--overwrite=true"
    )
    result = subprocess.run(
        command, env=subprocess_env(), capture_output=True, text=True, timeout=300, preexec_fn=limit_file_size
    )
    assert result.returncode == 2, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: could not write {output} (File too large): raise the file size limit (ulimit -f) or pass --output "
        "PATH; nothing that was there before was changed"
    )
    assert output.read_bytes() == previous
    assert [path.name for path in tmp_path.iterdir()] == ["model.onnx"], "the temporary file was removed"


def test_a_read_only_file_system_is_one_line_before_the_export(
    exported: Exported, synthetic_dir: Path, tmp_path: Path
) -> None:
    """A real read-only mount, in a mount namespace of its own (`unshare`; as a user, in a user namespace too)."""
    if not shutil.which("unshare"):
        pytest.fail("this test needs util-linux's unshare: apt-get install -y util-linux")
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(b"the model in use")
    output = folder / "model.onnx"
    export = " ".join(
        export_command(synthetic_dir, f"--ckpt_path={exported.checkpoint}", f"--output={output}", "--overwrite=true")
    )
    script = f"mount --bind {folder} {folder} && mount -o remount,bind,ro {folder} && exec {export}"
    namespaces = ["--mount"] if os.geteuid() == 0 else ["--map-root-user", "--mount"]
    result = subprocess.run(
        ["unshare", *namespaces, "sh", "-c", script],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    if "unshare failed" in result.stderr or "mount:" in result.stderr:
        pytest.fail(f"could not mount a read-only folder here ({result.stderr.strip()}): run the tests as root")
    assert result.returncode == 2, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stderr.strip() == (
        f"error: could not write {output} (Read-only file system): remount that file system writable or pass "
        "--output PATH; nothing that was there before was changed"
    )
    assert "Official test set" not in result.stdout, "refused before the export"
    assert output.read_bytes() == b"the model in use"
