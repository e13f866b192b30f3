"""The thread choice: the CPUs a process may use (affinity, cgroup quota), what other processes keep busy of them, and
one thread per CPU left free; OMP_NUM_THREADS wins."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from mnist_lightning import threads
from mnist_lightning.callbacks.threads import ThreadsFollowLoad


@pytest.mark.parametrize(
    ("cpus", "others", "wanted"),
    [
        (2, 0.0, 2),
        (2, 0.2, 2),
        (2, 0.3, 1),
        (2, 1.0, 1),
        (2, 2.0, 1),
        (8, 1.1, 7),
        (8, 1.3, 6),
        (8, 0.0, 8),
        (1, 0.0, 1),
    ],
)
def test_one_thread_per_cpu_no_other_process_holds(cpus: int, others: float, wanted: int) -> None:
    assert threads.threads_for(cpus, others) == wanted


def test_the_cgroup_quota_caps_the_cpus(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert threads.cgroup_quota(tmp_path) == 1.5
    assert threads.usable_cpus(tmp_path) == min(2, len(os.sched_getaffinity(0)))
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert threads.cgroup_quota(tmp_path) is None
    assert threads.usable_cpus(tmp_path) == len(os.sched_getaffinity(0)), "no quota: the affinity mask"
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("50000")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000")
    assert threads.cgroup_quota(v1) == 0.5 and threads.usable_cpus(v1) == 1


def write_stat(path: Path, busy_ticks: int, cpus: list[int]) -> None:
    """A /proc/stat whose CPUs `cpus` have spent `busy_ticks` each in user time (and as much idle)."""
    lines = ["cpu  0 0 0 0 0 0 0 0 0 0"]
    lines += [f"cpu{n} {busy_ticks} 0 0 {busy_ticks} 0 0 0 0 0 0" for n in cpus]
    path.write_text("\n".join(lines) + "\n")


def test_the_meter_counts_what_others_keep_busy_of_our_cpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stat = tmp_path / "stat"
    cpus = sorted(os.sched_getaffinity(0))
    write_stat(stat, 0, cpus)
    clock = iter([100.0, 101.0, 102.0])
    monkeypatch.setattr(threads.time, "monotonic", lambda: next(clock))
    own = iter([os.times_result((0, 0, 0, 0, 0)), os.times_result((0.5, 0, 0, 0, 0))] * 2)
    monkeypatch.setattr(threads.os, "times", lambda: next(own))
    meter = threads.LoadMeter(stat)
    write_stat(stat, os.sysconf("SC_CLK_TCK"), cpus)  # each CPU busy for the whole second
    assert meter.others() == pytest.approx(len(cpus) - 0.5), "all busy, half a core of it ours"
    assert threads.LoadMeter(tmp_path / "missing").others() is None


class FixedLoad:
    def __init__(self, others: float | None) -> None:
        self.value = others

    def others(self) -> float | None:
        return self.value


def test_the_callback_sets_the_threads_unless_the_user_chose(monkeypatch: pytest.MonkeyPatch) -> None:
    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
        callback = ThreadsFollowLoad(FixedLoad(1.0), cpus=2)
        callback.follow()
        assert torch.get_num_threads() == 1, "beside a busy process"
        callback.meter = FixedLoad(0.0)
        callback.follow()
        assert torch.get_num_threads() == 2, "the neighbour has gone"
        callback.meter = FixedLoad(None)
        callback.follow()
        assert torch.get_num_threads() == 2, "nothing known, nothing changed"
        monkeypatch.setenv("OMP_NUM_THREADS", "3")
        chosen = ThreadsFollowLoad(FixedLoad(1.0), cpus=2)
        torch.set_num_threads(3)
        chosen.follow()
        assert torch.get_num_threads() == 3, "OMP_NUM_THREADS wins"
    finally:
        torch.set_num_threads(before)
