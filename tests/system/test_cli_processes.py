"""The command line as users run it, in fresh processes on synthetic data: fit, test, predict and resume from what
fit wrote, signals and kill -9 during fits, runs started together, and predicting your own images."""

from __future__ import annotations

import csv
import re
import signal
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mnist_lightning.files import TEMPORARY
from mnist_lightning.runs.checkpoints import read_checkpoint
from tests.helpers import (
    TINY_RUN,
    cli_command,
    drawn_seven,
    hold_at,
    kill_inside_a_save,
    marker_flag,
    printed_path,
    printed_test_accuracy,
    release,
    run_cli,
    start_cli,
    subprocess_env,
    wait_for,
    wait_for_phase,
)

# 1,000 training images in batches of 50: 20 steps per epoch.
SMALL_RUN = ["--data.val_size=200", "--data.batch_size=50", "--model.hidden_sizes=[32]", "--trainer.max_epochs=2"]


STEPS_PER_EPOCH = 20


@pytest.fixture(scope="module")
def fitted(synthetic_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """One `fit` in a fresh process: (its run folder, what it printed)."""
    workdir = tmp_path_factory.mktemp("fit")
    output = run_cli(synthetic_dir, workdir, "fit", *SMALL_RUN)
    return workdir / "lightning_logs" / "version_0", output


def test_fit_writes_checkpoints_config_and_tensorboard_events(fitted: tuple[Path, str]) -> None:
    run, _ = fitted
    checkpoints = sorted(path.name for path in (run / "checkpoints").iterdir())
    assert "last.ckpt" in checkpoints
    assert any(re.fullmatch(r"epoch0[01]-val_acc[01]\.\d{4}\.ckpt", name) for name in checkpoints), checkpoints
    assert list(run.glob("events.out.tfevents.*"))
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["model"]["hidden_sizes"] == [32] and config["seed_everything"] == 42
    assert config["trainer"]["max_epochs"] == 2


def test_overrides_reach_hparams_yaml(fitted: tuple[Path, str]) -> None:
    hparams = yaml.safe_load((fitted[0] / "hparams.yaml").read_text())
    assert hparams["hidden_sizes"] == [32] and hparams["batch_size"] == 50 and hparams["val_size"] == 200


def test_fit_prints_a_summary_that_names_the_best_checkpoint_and_test_accuracy(fitted: tuple[Path, str]) -> None:
    run, output = fitted
    best = printed_path("Best checkpoint", output)
    assert (run.parent.parent / best).resolve().parent == (run / "checkpoints").resolve()
    assert re.search(r"Test accuracy\s+[01]\.\d{4}", output)
    assert "tensorboard --logdir lightning_logs" in output
    assert printed_path("Run folder", output) == Path("lightning_logs") / "version_0"


def test_fit_prints_no_third_party_noise(fitted: tuple[Path, str]) -> None:
    _, output = fitted
    assert "LeafSpec" not in output and "litlogger" not in output
    assert "Warning" not in output, output


def test_a_fresh_process_reproduces_the_test_accuracy_from_the_saved_config(
    fitted: tuple[Path, str], synthetic_dir: Path
) -> None:
    run, fit_output = fitted
    best = printed_path("Best checkpoint", fit_output)
    output = run_cli(synthetic_dir, run.parent.parent, "test", f"--config={run / 'config.yaml'}", f"--ckpt_path={best}")
    assert printed_test_accuracy(output) == printed_test_accuracy(fit_output)


def test_predict_writes_a_csv_row_per_test_image(fitted: tuple[Path, str], synthetic_dir: Path) -> None:
    run, _ = fitted
    last = run / "checkpoints" / "last.ckpt"
    config = run / "config.yaml"
    output = run_cli(synthetic_dir, run.parent.parent, "predict", f"--config={config}", f"--ckpt_path={last}")
    path = Path(re.search(r"Predictions for 300 images written to (\S+)", output).group(1))
    rows = list(csv.DictReader((run.parent.parent / path).open()))
    assert len(rows) == 300 and sorted(int(row["index"]) for row in rows) == list(range(300))
    assert all(0 <= int(row["prediction"]) <= 9 and 0.1 <= float(row["confidence"]) <= 1 for row in rows)
    correct = sum(row["label"] == row["prediction"] for row in rows)
    assert correct / len(rows) > 0.8, "the synthetic classes are easy: predictions must mostly be right"


def test_resume_continues_the_same_run_from_the_saved_epoch(fitted: tuple[Path, str], synthetic_dir: Path) -> None:
    run, _ = fitted
    output = run_cli(
        synthetic_dir,
        run.parent.parent,
        "fit",
        f"--config={run / 'config.yaml'}",
        f"--ckpt_path={run / 'checkpoints' / 'last.ckpt'}",
        "--trainer.max_epochs=3",
        "--test_after_fit=false",
    )
    resumed = re.search(r"Resuming (\S+) from", output).group(1)
    assert (run.parent.parent / resumed).resolve() == run.resolve()
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    assert state["epoch"] == 2 and state["global_step"] == 3 * STEPS_PER_EPOCH
    events = EventAccumulator(str(run))
    events.Reload()
    steps = [event.step for event in events.Scalars("train/loss")]
    assert steps == [STEPS_PER_EPOCH * epoch - 1 for epoch in (1, 2, 3)], "the curve continues, one point per epoch"


@pytest.mark.parametrize(("signum", "exit_code"), [(signal.SIGINT, 128 + 2), (signal.SIGTERM, 128 + 15)])
def test_a_signal_saves_the_state_and_the_printed_command_resumes_to_the_same_epoch_count(
    synthetic_dir: Path, tmp_path: Path, signum: int, exit_code: int
) -> None:
    run = tmp_path / "lightning_logs" / "version_0"
    markers = hold_at(tmp_path / "markers", "train-1")  # the fit waits after the first step of its second epoch
    process = start_cli(synthetic_dir, tmp_path, "fit", *SMALL_RUN, "--test_after_fit=false", marker_flag(markers))
    wait_for_phase(markers, "train-1", process)
    process.send_signal(signum)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == exit_code, output[-3000:]
    resume = re.search(r"resume with: python -m mnist_lightning (fit .*)", output, re.IGNORECASE).group(1).split()
    interrupted = read_checkpoint(run / "checkpoints" / "last.ckpt")
    assert STEPS_PER_EPOCH <= interrupted["global_step"] < 2 * STEPS_PER_EPOCH, "stopped in the second epoch"

    release(markers)
    run_cli(synthetic_dir, tmp_path, *resume, "--test_after_fit=false")
    final = read_checkpoint(run / "checkpoints" / "last.ckpt")
    assert final["epoch"] == 1, "the resumed run ends at the epoch count of an uninterrupted one"
    assert final["global_step"] > interrupted["global_step"]


# 2 epochs of 100 steps, last.ckpt saved after each: a save to kill the fit in is never far.
SAVING_RUN = ["--data.val_size=200", "--data.batch_size=10", "--model.hidden_sizes=[32]", "--trainer.max_epochs=2"]
SAVING_RUN += ["--last_checkpoint.every_n_train_steps=1", "--trainer.enable_progress_bar=false"]


def test_kill_9_never_leaves_a_broken_checkpoint(synthetic_dir: Path, tmp_path: Path) -> None:
    checkpoints = tmp_path / "lightning_logs" / "version_0" / "checkpoints"
    process = start_cli(synthetic_dir, tmp_path, "fit", *SAVING_RUN)
    wait_for(checkpoints / "last.ckpt", process)
    # Killed inside a checkpoint write: stopped while a temporary file of its is there, then killed.
    left = kill_inside_a_save(process.pid, checkpoints)
    process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL
    assert any(TEMPORARY.fullmatch(name) for name in left), left
    for path in checkpoints.glob("*.ckpt"):
        assert read_checkpoint(path)["state_dict"], path


def test_two_runs_started_together_get_their_own_folders(synthetic_dir: Path, tmp_path: Path) -> None:
    processes = [start_cli(synthetic_dir, tmp_path, "fit", *TINY_RUN) for _ in range(2)]
    outputs = [process.communicate(timeout=300)[0] for process in processes]
    assert [process.returncode for process in processes] == [0, 0], outputs
    folders = sorted(str(printed_path("Run folder", output)) for output in outputs)
    assert folders == ["lightning_logs/version_0", "lightning_logs/version_1"]
    for folder in folders:
        assert (tmp_path / folder / "config.yaml").exists() and (tmp_path / folder / "checkpoints").exists()


def test_predict_on_a_folder_writes_csv_table_and_grid_and_exits_1_for_skipped_files(
    tiny_checkpoint: Path, synthetic_dir: Path, tmp_path: Path
) -> None:
    images = tmp_path / "mine"
    images.mkdir()
    drawn_seven().save(images / "a.jpg")
    drawn_seven(mode="RGB", offset=(40, 100)).save(images / "b.png")
    (images / "c.txt").write_text("not a digit")
    command = cli_command(synthetic_dir, "predict", f"--ckpt_path={tiny_checkpoint}", f"--data.predict_path={images}")
    result = subprocess.run(command, cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stderr[-3000:]
    assert re.search(r"\bfile\s+class\s+confidence\s+top 3\n", result.stdout), result.stdout
    assert re.search(rf"{re.escape(str(images / 'a.jpg'))}\s+\d\s+[01]\.\d{{4}}\s+\d:", result.stdout)
    assert f"skipped {images / 'c.txt'}: not an image file" in result.stderr
    run = tiny_checkpoint.parent.parent / f"predict-{tiny_checkpoint.stem}"  # inside the checkpoint's run
    assert not (tmp_path / "lightning_logs").exists(), "no run folder of its own"
    rows = list(csv.DictReader((run / "predictions.csv").open()))
    assert [Path(row["file"]).name for row in rows] == ["a.jpg", "b.png", "c.txt"]
    assert rows[0]["prediction"] == rows[1]["prediction"] != "" and rows[2]["problem"]
    assert (run / "predictions.png").read_bytes().startswith(b"\x89PNG")
