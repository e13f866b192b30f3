"""How many threads torch computes with: the CPUs this process may use, less what other processes keep busy.

torch's default is a thread per core, and its OpenMP threads spin at the end of each parallel region waiting for the
slowest one. When another process holds one of the cores, the thread that lost its core makes every other one spin:
beside one busy process a `fit` of the seed configuration took 7× as long per epoch on 2 cores, with one thread
1.3× (docs/performance.md, "Beside a busy process"). A second thread is worth about 5 % on a quiet machine, more for
wider networks, so one thread always is not the answer either: `LoadMeter` measures what the other processes use,
and `threads_for` gives them their cores. callbacks.threads.ThreadsFollowLoad applies it while a run goes on.

The CPUs a process may use are its affinity mask (`taskset`, SLURM's `--cpus-per-task`), capped by its cgroup's CPU
quota (a container's `--cpus`): not the machine's core count. `OMP_NUM_THREADS` (or a `torch.set_num_threads` of the
user's before the run) always wins: then nothing here changes the threads.

Pure Python, no torch at import: commands.py starts the meter before the slow imports.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

# Set by the user (or by a launcher such as torchrun, or the tests): their choice stands.
USER_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
CGROUP = Path("/sys/fs/cgroup")
PROC_STAT = Path("/proc/stat")
# A neighbour that keeps a quarter of a core busy or more takes a core from us: its thread would be the one that
# loses the core, and the others would spin waiting for it.
SHARE_THAT_TAKES_A_CORE = 0.25


def user_chose_threads() -> bool:
    """Whether the user fixed the thread count (an OpenMP/MKL variable): then this module leaves it alone."""
    return any(os.environ.get(name) for name in USER_VARIABLES)


def usable_cpus(cgroup: Path = CGROUP) -> int:
    """The CPUs this process may run on: its affinity mask, capped by its cgroup's CPU quota (rounded up)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = cgroup_quota(cgroup)
    return max(1, min(cpus, math.ceil(quota))) if quota else max(1, cpus)


def cgroup_quota(cgroup: Path = CGROUP) -> float | None:
    """The CPU quota of this process's cgroup in cores (cgroup v2 `cpu.max`, or v1 `cpu.cfs_quota_us` over
    `cpu.cfs_period_us`), or None when there is none."""
    try:
        quota, period = (cgroup / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int((cgroup / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((cgroup / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota <= 0 else quota / period
    except (OSError, ValueError):
        return None


def threads_for(cpus: int, others: float) -> int:
    """Threads for a process that may use `cpus` CPUs while other processes keep `others` of them busy: one per CPU
    nobody else holds (a neighbour's quarter of a core counts as holding it), at least one."""
    taken = max(0, math.ceil(others - SHARE_THAT_TAKES_A_CORE))
    return max(1, min(cpus, cpus - taken))


class LoadMeter:
    """What other processes keep busy of this process's CPUs, between two readings: busy time of those CPUs in
    /proc/stat, less this process's own CPU time (all its threads)."""

    def __init__(self, stat: Path = PROC_STAT) -> None:
        self.stat = stat
        self.cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        self.last = self._reading()

    def _reading(self) -> tuple[float, float, float] | None:
        """(wall seconds, busy seconds of our CPUs, this process's CPU seconds), or None without /proc/stat."""
        try:
            lines = self.stat.read_text().splitlines()
        except OSError:
            return None
        ticks = os.sysconf("SC_CLK_TCK")
        wanted = {f"cpu{n}" for n in self.cpus}
        busy = 0
        for line in lines:
            name, *fields = line.split()
            if name in wanted:
                values = [int(v) for v in fields[:8]]
                busy += sum(values) - values[3] - values[4]  # all but idle and iowait
        own = os.times()
        return time.monotonic(), busy / ticks, own.user + own.system

    def others(self) -> float | None:
        """Cores' worth of our CPUs that other processes kept busy since the last call (or since the meter started),
        or None when that cannot be known (no /proc/stat, or no time has passed)."""
        now = self._reading()
        last, self.last = self.last, now
        if now is None or last is None or now[0] - last[0] < 0.05:
            return None
        wall = now[0] - last[0]
        return max(0.0, ((now[1] - last[1]) - (now[2] - last[2])) / wall)


# Started when this module is imported (commands.py does it first thing), so that the first choice, at the start of
# a run, sees what the machine did during the several seconds of imports.
METER = LoadMeter()
