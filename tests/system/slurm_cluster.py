"""A throwaway one-node SLURM cluster for tests: Debian's slurm-wlm (22.05) and MUNGE, with a private slurm.conf in a
temporary folder and the daemons on free loopback ports.

`slurm_cluster()` starts munged if `munge -n | unmunge` fails, then slurmctld and slurmd with the private slurm.conf,
waits until `sinfo` reports the node idle, and yields a `SlurmCluster` whose `env` runs SLURM's commands against it.
On exit it cancels the jobs left, stops exactly the daemons it started (by the PIDs in their pid files, never by name)
and deletes the folder. The daemons and the jobs run as root, so the tests must (as CI does). Missing binaries fail
the test with the command that installs them; nothing is skipped.

The configuration is set for tests rather than for a real cluster (measured here with slurm-wlm 22.05.8):
- `MinJobAge=86400`: `scontrol show job` keeps a finished job for a day (the default, 300 s, forgets it mid-session).
- `JobRequeue=1` (also the default): batch jobs may be requeued (`scontrol requeue`, Lightning's auto-requeue) unless
  submitted with `--no-requeue`; `scontrol requeue` then fails with "Requested operation is presently disabled".
- `AuthInfo=cred_expire=5`: what holds a requeued job back. Once its processes have ended, it is PENDING with
  Reason=BeginTime and `EligibleTime` = then + cred_expire (+1 s): 5 s here, 120 s by default. 5 is the least value:
  slurmctld logs "AuthInfo=cred_expire=1 invalid" for less and silently falls back to 120. (cred_expire is also the
  lifetime of a step credential, which 5 s covers on one node.)
- `SchedulerParameters=sched_interval=1,bf_interval=1`: a pending job whose EligibleTime has passed waits for a full
  scheduling pass (main every 60 s, backfill every 30 s by default); here it starts within a second. With both
  settings a job whose processes end on SIGTERM runs again about 6 s after `scontrol requeue` (27 s with the default
  intervals, 121 s with the default cred_expire too). A new job starts at once whatever these settings.
- `KillWait=5`: 5 s between SIGTERM and SIGKILL when a job is cancelled, requeued or out of time (default 30 s); a
  process that outlives SIGTERM (Lightning finishes its batch first) delays a requeue by up to that much.
- `MailProg=/bin/true`: Debian's slurm.conf default (/usr/bin/mail) is missing, which slurmctld logs as an error.
- `--signal=[B:]SIG@SECONDS` needs no setting (it comes up to 60 s early: USR1@50 with --time=1 came 17 s after the
  start); `SchedulerTimeSlice` concerns gang scheduling only (`PreemptMode=GANG`), not used here.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

INSTALL = "apt-get update && apt-get install -y slurm-wlm munge"
# Where Debian puts the binaries; the daemons are in sbin, which a non-login PATH may lack.
SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/bin", "/sbin", "/bin"])
BINARIES = ("slurmctld", "slurmd", "sbatch", "srun", "scontrol", "sinfo", "squeue", "scancel")
MUNGE_BINARIES = ("munged", "munge", "unmunge")

# The states in which a job stays (`scontrol show job`'s JobState); PENDING, RUNNING, COMPLETING (its processes are
# ending, also on the way to a requeue), REQUEUED and the held states pass.
FINAL_STATES = frozenset(
    {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE", "PREEMPTED"}
)
# What `wait` returns for a job that slurmctld no longer knows (purged after MinJobAge, or never submitted here).
FORGOTTEN = "FORGOTTEN"

# The settings that differ from slurm.conf's defaults, besides the paths, ports and node (see the module docstring).
SETTINGS = {
    "MinJobAge": "86400",
    "JobRequeue": "1",
    "AuthInfo": "cred_expire=5",
    "SchedulerType": "sched/backfill",
    "SchedulerParameters": "sched_interval=1,bf_interval=1",
    "KillWait": "5",
    "MailProg": "/bin/true",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def parse_record(line: str) -> dict[str, str]:
    """One line of `scontrol show ... -o` as a dict: `JobId=5 JobState=COMPLETED ExitCode=0:0 ...`. A value runs up
    to the next space that starts a `Key=` (keys such as `CPUs/Task` and `ReqB:S:C:T` included), so values with spaces
    (`Command=/x/job.sh arg`) stay whole."""
    fields = re.split(r"\s+(?=[A-Za-z][\w/:]*=)", line.strip())
    return dict(field.split("=", 1) for field in fields if "=" in field)


@dataclass(frozen=True)
class SlurmCluster:
    """A running one-node cluster: `env` (SLURM_CONF set; PATH with this Python's folder and sbin first, no SLURM_*
    variables inherited) is what `subprocess` needs to use it; `folder` holds slurm.conf and the daemons' logs."""

    env: dict[str, str]
    folder: Path
    node: str
    cpus: int

    def run(self, args: list[str], cwd: Path | str | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
        """Run a command against this cluster (`["scontrol", "requeue", "5"]`), capturing its output, unchecked."""
        return subprocess.run(args, cwd=cwd, env=self.env, capture_output=True, text=True, timeout=timeout)

    def sbatch(self, args: list[str], cwd: Path | str) -> int:
        """Submit with `sbatch --parsable ARGS` from `cwd` (where `--output` and relative paths start); return the job
        id (of an array, its SLURM_ARRAY_JOB_ID). A rejected submission fails the test with sbatch's message."""
        result = self.run(["sbatch", "--parsable", *args], cwd=cwd)
        if result.returncode != 0:
            pytest.fail(f"sbatch {' '.join(args)} failed: {result.stderr.strip() or result.stdout.strip()}")
        return int(result.stdout.strip().split(";")[0])

    def job_records(self, job_id: int | str) -> list[dict[str, str]]:
        """`scontrol show job -o JOB_ID` parsed, one dict a line: one for a job, one per array task (and one for the
        tasks not yet started) for an array's id; `[]` once slurmctld has forgotten the job."""
        result = self.run(["scontrol", "show", "job", "-o", str(job_id)])
        if result.returncode != 0:
            if "Invalid job id" in result.stderr:
                return []
            pytest.fail(f"scontrol show job {job_id} failed: {result.stderr.strip()}")
        return [parse_record(line) for line in result.stdout.splitlines() if line.strip()]

    def job_info(self, job_id: int | str) -> dict[str, str]:
        """The job's fields from `scontrol show job -o`, as strings: JobState, Restarts, ExitCode ("0:0": code and
        signal), Reason, EligibleTime, StdOut, ... (`"ID_TASK"` for one array task). Fails the test if it is unknown."""
        records = self.job_records(job_id)
        if not records:
            pytest.fail(f"SLURM job {job_id} is unknown to slurmctld (never submitted here, or purged)")
        return records[0]

    def wait(self, job_id: int | str, timeout: float = 120) -> str:
        """Poll until the job (every task of an array's id) is in a final state and return it (COMPLETED, FAILED,
        CANCELLED, TIMEOUT, ...; for an array the first that is not COMPLETED, if any). A job that slurmctld has
        forgotten gives `FORGOTTEN`. Fails the test after `timeout` seconds, with the job's fields."""
        deadline = time.monotonic() + timeout
        while True:
            records = self.job_records(job_id)
            if not records:
                return FORGOTTEN
            states = [record.get("JobState", "") for record in records]
            if all(state in FINAL_STATES for state in states):
                return next((state for state in states if state != "COMPLETED"), "COMPLETED")
            if time.monotonic() > deadline:
                pytest.fail(f"SLURM job {job_id} not finished after {timeout:.0f} s: {records}")
            time.sleep(0.25)


def _which(name: str) -> str | None:
    return shutil.which(name, path=SEARCH_PATH)


def _munge_works() -> bool:
    munge, unmunge = _which("munge"), _which("unmunge")
    if not (munge and unmunge):
        return False
    with contextlib.suppress(subprocess.SubprocessError, OSError):
        credential = subprocess.run([munge, "-n"], capture_output=True, text=True, timeout=10)
        decoded = subprocess.run([unmunge], input=credential.stdout, capture_output=True, text=True, timeout=10)
        return credential.returncode == 0 and decoded.returncode == 0 and "Success" in decoded.stdout
    return False


def _alive(pid: int) -> bool:
    """Whether `pid` runs: a zombie (a daemon's, which PID 1 in a container may never reap) counts as ended."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _pid_from(pid_file: Path, marker: str) -> int | None:
    """The PID in `pid_file` if that process runs and its command line contains `marker` (not a reused PID)."""
    try:
        pid = int(pid_file.read_text().split()[0])
        command_line = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except (OSError, ValueError, IndexError):
        return None
    return pid if marker in command_line and _alive(pid) else None


def _stop(pid: int, grace: float = 15) -> None:
    """SIGTERM, and SIGKILL if it still runs after `grace` seconds; return once it has ended."""
    for signum, seconds in ((signal.SIGTERM, grace), (signal.SIGKILL, 5)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)
        deadline = time.monotonic() + seconds
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if not _alive(pid):
            return


def _tail(path: Path, lines: int = 15) -> str:
    with contextlib.suppress(OSError):
        return f"\n--- {path.name}:\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


def _start_munged() -> int:
    """Start the system's munged as the munge user (as root) and return its PID, read from its pid file."""
    pid_file = Path("/run/munge/munged.pid")
    run_dir = pid_file.parent
    run_dir.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        shutil.chown(run_dir, "munge", "munge")
        run_dir.chmod(0o755)
    command = [_which("munged") or "munged"]
    if os.geteuid() == 0:
        command = ["runuser", "-u", "munge", "--", *command]
    result = subprocess.run(command, capture_output=True, text=True, timeout=30)
    deadline = time.monotonic() + 15
    while not _munge_works() and time.monotonic() < deadline:
        time.sleep(0.1)
    pid = _pid_from(pid_file, "munged")
    if not _munge_works() or pid is None:
        pytest.fail(f"munged did not start ({' '.join(command)}): {result.stderr.strip() or result.stdout.strip()}")
    return pid


def _slurm_conf(folder: Path, node: str, cpus: int, memory_mb: int, settings: Mapping[str, str]) -> str:
    """slurm.conf for one node, `node`, at 127.0.0.1: the daemons' files in `folder`, then `settings`."""
    lines = {
        "ClusterName": "tests",
        "SlurmctldHost": f"{node}(127.0.0.1)",
        "SlurmctldPort": str(free_port()),
        "SlurmdPort": str(free_port()),
        "AuthType": "auth/munge",
        "ProctrackType": "proctrack/linuxproc",
        "TaskPlugin": "task/none",
        "JobAcctGatherType": "jobacct_gather/none",
        "SelectType": "select/cons_tres",
        "SelectTypeParameters": "CR_Core",
        "SlurmUser": "root",
        "SlurmdUser": "root",
        "ReturnToService": "2",
        "MpiDefault": "none",
        "SlurmctldPidFile": str(folder / "slurmctld.pid"),
        "SlurmdPidFile": str(folder / "slurmd.pid"),
        "SlurmdSpoolDir": str(folder / "spool"),
        "StateSaveLocation": str(folder / "state"),
        "SlurmctldLogFile": str(folder / "slurmctld.log"),
        "SlurmdLogFile": str(folder / "slurmd.log"),
        **settings,
    }
    node_line = f"NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN"
    partition = f"PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP"
    return "".join(f"{key}={value}\n" for key, value in lines.items()) + f"{node_line}\n{partition}\n"


def _cluster_env(conf: Path) -> dict[str, str]:
    inherited = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_", "SQUEUE_", "SINFO_", "SCONTROL_"))
    }
    folders = [str(Path(sys.executable).parent), *SEARCH_PATH.split(os.pathsep)]
    path = os.pathsep.join(dict.fromkeys(folder for folder in folders if folder))
    return {**inherited, "SLURM_CONF": str(conf), "PATH": path}


def _wait_idle(cluster: SlurmCluster, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    state = ""
    while time.monotonic() < deadline:
        result = cluster.run(["sinfo", "--noheader", "--Node", "--format=%T"], timeout=10)
        state = result.stdout.strip() or result.stderr.strip()
        if result.returncode == 0 and state == "idle":
            return
        time.sleep(0.2)
    logs = _tail(cluster.folder / "slurmctld.log") + _tail(cluster.folder / "slurmd.log")
    pytest.fail(f"the SLURM node is not idle after {timeout:.0f} s (sinfo: {state!r}){logs}")


def _cancel_jobs(cluster: SlurmCluster, timeout: float) -> None:
    """Cancel every job left in this (private) cluster and wait until none runs or completes, so that no job step
    outlives slurmd."""
    with contextlib.suppress(subprocess.SubprocessError, OSError):
        cluster.run(["scancel", "--full", f"--user={os.geteuid()}"], timeout=10)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = cluster.run(["squeue", "--noheader", "--format=%i %T"], timeout=10)
            if result.returncode != 0 or not result.stdout.strip():
                return
            time.sleep(0.25)


@contextlib.contextmanager
def slurm_cluster(settings: Mapping[str, str] | None = None) -> Iterator[SlurmCluster]:
    """Start a one-node cluster (this host, all its CPUs, partition `debug`), yield it once `sinfo` shows the node
    idle, then cancel its jobs, stop its daemons (and munged, if this started it) and delete its folder. `settings`
    adds or replaces slurm.conf lines (`{"KillWait": "30"}`)."""
    missing = [name for name in BINARIES + MUNGE_BINARIES if _which(name) is None]
    if missing:
        pytest.fail(f"SLURM or MUNGE binaries {missing} not found: install them with `{INSTALL}`")
    if os.geteuid() != 0:
        pytest.fail("the test SLURM cluster runs slurmd (and munged) as root, so its tests must run as root (as in CI)")
    node = socket.gethostname().split(".")[0]  # what `hostname -s` prints, which slurmd takes for its NodeName
    cpus = len(os.sched_getaffinity(0))  # what `nproc` prints
    memory_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20 * 95 // 100  # under what slurmd sees
    folder = Path(tempfile.mkdtemp(prefix="tests-slurm-"))
    for sub in ("spool", "state"):
        (folder / sub).mkdir()
    conf = folder / "slurm.conf"
    settings = {**SETTINGS, **(settings or {})}
    conf.write_text(_slurm_conf(folder, node, cpus, memory_mb, settings))
    cluster = SlurmCluster(env=_cluster_env(conf), folder=folder, node=node, cpus=cpus)
    started: dict[str, int] = {}  # daemon: PID, in the order they started (and stop last-first)
    try:
        if not _munge_works():
            started["munged"] = _start_munged()
        for daemon, extra in (("slurmctld", []), ("slurmd", ["-N", node])):
            command = [_which(daemon) or daemon, "-f", str(conf), *extra]
            result = subprocess.run(command, env=cluster.env, capture_output=True, text=True, timeout=60)
            deadline = time.monotonic() + (30 if result.returncode == 0 else 0)  # it exits 0 once it has forked
            while (pid := _pid_from(folder / f"{daemon}.pid", str(conf))) is None and time.monotonic() < deadline:
                time.sleep(0.1)
            if pid is None:
                output = (result.stderr.strip() or result.stdout.strip()) + _tail(folder / f"{daemon}.log")
                pytest.fail(f"{daemon} did not start (exit code {result.returncode}): {output}")
            started[daemon] = pid
        _wait_idle(cluster)
        yield cluster
    finally:
        try:
            if "slurmd" in started:
                _cancel_jobs(cluster, timeout=float(settings.get("KillWait", 30)) + 15)
            for pid in reversed(started.values()):
                _stop(pid)
        finally:
            shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def slurm() -> Iterator[SlurmCluster]:
    """One cluster for the whole test session (register it by importing it into a conftest.py)."""
    with slurm_cluster() as cluster:
        yield cluster
