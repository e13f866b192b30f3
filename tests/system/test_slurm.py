"""slurm/fit.sbatch and slurm/sweep.sbatch on a real one-node SLURM cluster (tests/system/slurm_cluster.py): a 2-task
DDP fit, a job preempted by SLURM's requeue signal and by a hard requeue, and a 2-task sweep array reaching n_trials."""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.helpers import REPO_ROOT, subprocess_env, write_sweep, write_synthetic_mnist
from tests.system.slurm_cluster import SlurmCluster, slurm  # noqa: F401 (the session's cluster)

# 1,000 training images over 2 tasks in batches of 1: 500 steps per epoch, a second or two on 2 cores, so that a
# signal sent once the first epoch is saved arrives while later ones train.
SLOW_FIT = ["--data.val_size=200", "--data.batch_size=1", "--model.hidden_sizes=[16]", "--trainer.max_epochs=3"]
SLOW_FIT += ["--trainer.enable_progress_bar=false", "--trainer.limit_val_batches=20"]
STEPS_PER_EPOCH = 500


@pytest.fixture
def cluster(slurm: SlurmCluster, synthetic_dir: Path) -> SlurmCluster:  # noqa: F811
    """The session's cluster, submitting with this checkout's Python and the synthetic data trusted."""
    return trusting(slurm, synthetic_dir)


def trusting(cluster: SlurmCluster, data_dir: Path) -> SlurmCluster:
    """`cluster`, whose jobs run this checkout's Python and accept the synthetic files in `data_dir` as MNIST."""
    env = {**subprocess_env(MNIST_LIGHTNING_TEST_SYNTHETIC=str(data_dir)), **cluster.env}
    env["PYTHONPATH"] = subprocess_env()["PYTHONPATH"]
    return dataclasses.replace(cluster, env=env)


def fit(cluster: SlurmCluster, workdir: Path, synthetic_dir: Path, *args: str) -> int:
    script = str(REPO_ROOT / "slurm" / "fit.sbatch")
    return cluster.sbatch([script, f"--data.data_dir={synthetic_dir}", *args], cwd=workdir)


def output_of(workdir: Path, job: int) -> str:
    return "".join(path.read_text() for path in workdir.glob(f"slurm-*-{job}*.out"))


def run_folder_of(workdir: Path, job: int) -> Path:
    runs = list((workdir / "lightning_logs").iterdir())
    assert [run.name for run in runs] == [f"slurm_{job}.0"], "one run folder for the job, whatever its requeues"
    return runs[0]


def wait_until(condition, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def assert_finished_as_uninterrupted(run: Path, epochs: int, steps_per_epoch: int) -> None:
    """last.ckpt holds the state after `epochs` epochs, and each epoch has exactly one point on the curves."""
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert (last["epoch"], last["global_step"]) == (epochs - 1, epochs * steps_per_epoch)
    events = EventAccumulator(str(run))
    events.Reload()
    steps = [event.step for event in events.Scalars("val/acc")]
    assert len(steps) == epochs and steps == sorted(set(steps)), steps


def test_a_two_task_fit_trains_ddp_tests_and_prints_its_summary(
    cluster: SlurmCluster, synthetic_dir: Path, tmp_path: Path
) -> None:
    job = fit(
        cluster, tmp_path, synthetic_dir, "--data.val_size=200", "--data.batch_size=50", "--model.hidden_sizes=[32]"
    )
    assert cluster.wait(job, timeout=180) == "COMPLETED", output_of(tmp_path, job)[-3000:]
    output = output_of(tmp_path, job)
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in output  # DDP across both tasks
    run = run_folder_of(tmp_path, job)
    assert re.search(rf"Run folder\s+lightning_logs/slurm_{job}\.0\n", output)
    assert re.search(r"Test accuracy\s+[01]\.\d{4}", output)
    assert (run / "config.yaml").is_file()
    # 1,000 images in batches of 50 over 2 processes: 10 steps per epoch, 20 epochs (fit.sbatch keeps the default).
    assert_finished_as_uninterrupted(run, 20, 10)


def test_a_job_preempted_three_times_resumes_in_its_folder_each_time_to_the_same_epoch_count(
    slurm: SlurmCluster,  # noqa: F811
    tmp_path: Path,
) -> None:
    """SLURM's requeue signal while an epoch trains, a hard requeue (`scontrol requeue`: no signal, whatever the moment)
    of the resumed run, then the requeue signal after the fit, during the test: three runs resumed, one job."""
    # 300 test images took under a second, which the last signal could miss (the job then ends unrequeued); 3,000 in
    # batches of 1 take a few seconds.
    data_dir = tmp_path / "data"
    write_synthetic_mnist(data_dir, test=3000)
    cluster = trusting(slurm, data_dir)
    job = fit(cluster, tmp_path, data_dir, *SLOW_FIT)

    def printed(text: str) -> Callable[[], bool]:
        return lambda: text in output_of(tmp_path, job)

    wait_until(lambda: any(tmp_path.glob("lightning_logs/*/checkpoints/last.ckpt")))  # the first epoch is saved
    assert cluster.run(["scancel", "--signal=USR1", str(job)]).returncode == 0
    wait_until(printed(f"Resuming lightning_logs/slurm_{job}.0 from"))  # the second run, before or while it trains
    assert cluster.run(["scontrol", "requeue", str(job)]).returncode == 0
    # The third run, between its fit and its test or during that test:
    wait_until(printed("`Trainer.fit` stopped: `max_epochs"), timeout=180)
    assert cluster.run(["scancel", "--signal=USR1", str(job)]).returncode == 0
    assert cluster.wait(job, timeout=240) == "COMPLETED", output_of(tmp_path, job)[-3000:]
    output = output_of(tmp_path, job)
    assert cluster.job_info(job)["Restarts"] == "3", output[-3000:]
    assert output.count("stopped by SLURM's requeue signal (SIGUSR1)") == 2, output[-3000:]
    assert output.count(f"job {job} is requeued") == 2
    assert len(re.findall(rf"Resuming lightning_logs/slurm_{job}\.0 from \S+\.ckpt", output)) == 3, output[-3000:]
    assert "Traceback" not in output
    assert re.search(r"Test accuracy\s+[01]\.\d{4}", output)
    assert_finished_as_uninterrupted(run_folder_of(tmp_path, job), 3, STEPS_PER_EPOCH)


def test_a_two_task_sweep_array_shares_one_study_reaches_n_trials_and_a_preempted_worker_rejoins(
    cluster: SlurmCluster, synthetic_dir: Path, tmp_path: Path
) -> None:
    sweep = write_sweep(tmp_path, n_trials=4, search_space={"model.lr": {"low": 0.001, "high": 0.01, "log": True}})
    script = str(REPO_ROOT / "slurm" / "sweep.sbatch")
    # One CPU each, so that both tasks run at once on this 2-core node; trials of a few seconds (200 steps an epoch).
    args = ["--array=0-1", "--cpus-per-task=1", script, "--config", str(sweep), f"--data.data_dir={synthetic_dir}"]
    job = cluster.sbatch([*args, "--data.batch_size=5", "--trainer.max_epochs=3"], cwd=tmp_path)
    first = tmp_path / f"slurm-mnist-sweep-{job}_0.out"
    wait_until(lambda: first.is_file() and "Study sweep" in first.read_text())
    time.sleep(2)  # in its first trial
    assert cluster.run(["scancel", "--signal=USR1", f"{job}_0"]).returncode == 0
    assert cluster.wait(job, timeout=300) == "COMPLETED", output_of(tmp_path, job)[-3000:]
    assert cluster.job_info(f"{job}_0")["Restarts"] == "1", "the preempted worker requeued itself and rejoined"
    assert f"job {job}_0 is requeued" in first.read_text()
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "lightning_logs" / "sweep" / "optuna-journal.log"))
    )
    trials = optuna.load_study(study_name="sweep", storage=storage).get_trials()
    counted = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert 4 <= len(counted) <= 5  # one over at most, when both tasks start the last trial at the same moment
    assert len({t.params["model.lr"] for t in counted}) == len(counted)  # no parameter set twice
    (stopped,) = [t for t in trials if t.state == TrialState.FAIL and "stopped" in t.user_attrs.get("error", "")]
    (retried,) = [t for t in counted if t.user_attrs.get("retry_of") == stopped.number]
    assert retried.params == stopped.params
    # Both tasks worked on the study (the other task may have finished it while the preempted one waited in the queue).
    assert len({t.user_attrs["worker"]["pid"] for t in trials if "worker" in t.user_attrs}) >= 2
    assert first.read_text().count("Study sweep") == 2, "the requeued worker opened the study again"
