"""SLURM jobs: the job step this process runs in, the run folder that outlives the job's requeues, and the requeue.

A requeued job is a new process with the same job id (and `SLURM_RESTART_COUNT` 1, 2, ...) whose steps are numbered
from 0 again: `slurm_<job id>.<step id>` names the same run folder in every run of the job, on every process of a
distributed run, without asking rank 0. slurm/fit.sbatch and docs/scaling.md show the whole arrangement.
"""

from __future__ import annotations

import os
import re
import subprocess
from contextlib import AbstractContextManager
from dataclasses import dataclass

from mnist_lightning import interrupts


@dataclass(frozen=True)
class JobStep:
    """A step of a SLURM job (what `srun` starts): its job (`123`, or `120_4` for task 4 of array job 120) and step."""

    job: str
    step: str
    restarts: int

    @property
    def folder_name(self) -> str:
        """The run folder's name: the same in every run of the job, and a new one for each step."""
        return f"slurm_{self.job}.{self.step}"


def current_step() -> JobStep | None:
    """The SLURM job step this process runs in, or None outside one (an `salloc` shell runs no step)."""
    job, step = job_id(), os.environ.get("SLURM_STEP_ID")
    if not job or step is None:
        return None
    return JobStep(job, step, int(os.environ.get("SLURM_RESTART_COUNT") or 0))


def job_id() -> str:
    """This process's SLURM job as `scontrol` names it (`123`, or `120_4` for task 4 of array job 120); "" outside
    a job."""
    if os.environ.get("SLURM_ARRAY_JOB_ID") and os.environ.get("SLURM_ARRAY_TASK_ID"):
        return f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID", "")


def in_job() -> bool:
    """Whether this process runs inside a SLURM job (a batch script, `srun`, `salloc`)."""
    return bool(os.environ.get("SLURM_JOB_ID"))


def signals_handled() -> AbstractContextManager[None]:
    """`interrupts.handled` for a command: inside a SLURM job, its requeue signal (SIGUSR1) too, which requeues it."""
    return interrupts.handled(requeue=requeue if in_job() else None)


def requeue() -> str:
    """Requeue this process's SLURM job (`scontrol requeue`), and say what happened in a few words."""
    job = job_id()
    if not re.fullmatch(r"[0-9_]+", job):
        return "not requeued: this process is not part of a SLURM job"
    try:
        result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"`scontrol requeue {job}` failed ({e}): requeue the job yourself, or submit it again"
    if result.returncode != 0:
        reason = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        return f"`scontrol requeue {job}` failed ({reason[0]}): submit the job again (does it allow --requeue?)"
    return f"job {job} is requeued and resumes where it stopped"
