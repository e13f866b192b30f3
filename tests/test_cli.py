"""The command line end to end, on synthetic data: real processes, real files."""

from __future__ import annotations

import csv
import os
import re
import sys
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch.profilers import SimpleProfiler
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mnist_lightning.cli import NullProfiler, cli_main, stop_probing_for_nvml_without_gpus
from mnist_lightning.predictions import PredictionWriter
from mnist_lightning.runs import read_checkpoint
from tests.synthetic import REPO_ROOT, printed_test_accuracy, run_cli

# 1,000 training images in batches of 50: 20 steps per epoch.
SMALL_RUN = ["--data.val_size=200", "--data.batch_size=50", "--model.hidden_sizes=[32]", "--trainer.max_epochs=2"]
STEPS_PER_EPOCH = 20


@pytest.fixture(autouse=True)
def no_pytest_argv(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process runs take their arguments from `cli_main(args)`, never from pytest's own command line."""
    monkeypatch.setattr(sys, "argv", ["mnist-lightning"])


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
    best = re.search(r"Best checkpoint\s+(\S+)", output).group(1)
    assert (run.parent.parent / best).resolve().parent == (run / "checkpoints").resolve()
    assert re.search(r"Test accuracy\s+[01]\.\d{4}", output)
    assert "tensorboard --logdir lightning_logs" in output


def test_fit_prints_no_third_party_noise(fitted: tuple[Path, str]) -> None:
    _, output = fitted
    assert "LeafSpec" not in output and "litlogger" not in output
    assert "Warning" not in output, output


def test_a_fresh_process_reproduces_the_test_accuracy_from_the_saved_config(
    fitted: tuple[Path, str], synthetic_dir: Path
) -> None:
    run, fit_output = fitted
    best = re.search(r"Best checkpoint\s+(\S+)", fit_output).group(1)
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
    assert f"Resuming lightning_logs{os.sep}version_0" in output
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    assert state["epoch"] == 2 and state["global_step"] == 3 * STEPS_PER_EPOCH
    events = EventAccumulator(str(run))
    events.Reload()
    steps = [event.step for event in events.Scalars("train/loss")]
    assert steps == [STEPS_PER_EPOCH * epoch - 1 for epoch in (1, 2, 3)], "the curve continues, one point per epoch"


def test_print_config_prints_yaml_with_the_overrides(synthetic_mnist: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", "--model.hidden_sizes=[800, 800]", "--data.batch_size=128", "--print_config"])
    assert exit_info.value.code == 0
    config = yaml.safe_load(capsys.readouterr().out)
    assert config["model"]["hidden_sizes"] == [800, 800] and config["data"]["batch_size"] == 128
    assert config["trainer"]["max_epochs"] == 20 and config["checkpoint"]["monitor"] == "val/acc"


def test_the_seed_config_is_the_starting_point(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli_main(["fit", "--config=configs/seed.yaml", "--print_config"])
    config = yaml.safe_load(capsys.readouterr().out)
    model, data = config["model"], config["data"]
    assert model["hidden_sizes"] == [100] and model["lr"] == 0.001 and model["optimizer"] == "adam"
    assert data["batch_size"] == 100 and config["trainer"]["max_epochs"] == 20
    # Nothing the presets add is on.
    assert (model["dropout"], model["weight_decay"], model["label_smoothing"]) == (0, 0, 0)
    assert model["lr_schedule"] == "constant" and model["batch_norm"] is False
    assert all(data[name] == 0 for name in ("rotation", "zoom", "shift", "elastic_alpha"))


@pytest.mark.parametrize("preset", ["seed", "fast", "strong"])
def test_each_preset_loads_and_trains_a_step(
    preset: str, synthetic_mnist: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    config = REPO_ROOT / "configs" / f"{preset}.yaml"
    data = [f"--data.data_dir={synthetic_mnist}", "--data.val_size=200"]
    cli = cli_main(["fit", f"--config={config}", *data, "--trainer.fast_dev_run=1"])
    assert cli.trainer.global_step == 1
    written = yaml.safe_load(config.read_text())
    assert {name: cli.model.hparams[name] for name in written["model"]} == written["model"]
    assert cli.datamodule.distortion.enabled == (preset == "strong")


@pytest.mark.parametrize(
    "bad_args",
    [["fit", "--no_such_flag=1"], ["fit", "--data.batch_size=many"], ["fit", "--config=does-not-exist.yaml"]],
)
def test_bad_flags_exit_non_zero(bad_args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli_main(bad_args)
    assert exit_info.value.code != 0
    assert "error" in capsys.readouterr().err.lower()


def test_ema_weight_averaging_is_one_flag_and_its_checkpoints_hold_the_averaged_weights(
    synthetic_mnist: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    data = [f"--data.data_dir={synthetic_mnist}", "--data.val_size=200", "--trainer.enable_progress_bar=false"]
    ema = ["--trainer.callbacks+=EMAWeightAveraging", "--trainer.callbacks.decay=0.9"]
    cli = cli_main(["fit", *data, *ema, "--trainer.max_epochs=2", "--test_after_fit=false"])
    checkpoint = read_checkpoint(Path(cli.trainer.checkpoint_callback.best_model_path))
    averaged, current = checkpoint["state_dict"], checkpoint["current_model_state"]
    assert averaged.keys() == current.keys()
    assert not torch.equal(averaged["net.1.weight"], current["net.1.weight"]), "the average differs from the weights"


def test_without_gpus_torch_stops_probing_for_nvml_on_every_optimizer_step(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTORCH_NVML_BASED_CUDA_CHECK", "1")  # what importing Lightning does
    gpus = torch.cuda.device_count()
    stop_probing_for_nvml_without_gpus()
    assert ("PYTORCH_NVML_BASED_CUDA_CHECK" in os.environ) == (gpus > 0)


@pytest.mark.parametrize(
    ("profiler", "profiler_class"), [([], NullProfiler), (["--trainer.profiler=simple"], SimpleProfiler)]
)
def test_fit_profiles_nothing_unless_asked_and_carries_no_prediction_writer(
    profiler: list[str], profiler_class: type, synthetic_mnist: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    data = [f"--data.data_dir={synthetic_mnist}", "--data.val_size=200"]
    cli = cli_main(["fit", *data, *profiler, "--trainer.fast_dev_run=2"])
    assert type(cli.trainer.profiler) is profiler_class
    if profiler_class is SimpleProfiler:
        assert len(cli.trainer.profiler.recorded_durations["run_training_batch"]) == 2, "asked for, it measures"
    assert not any(isinstance(callback, PredictionWriter) for callback in cli.trainer.callbacks)
