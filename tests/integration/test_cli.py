"""`fit` in this process, a step or two on synthetic data: the presets, EMA weight averaging, the profiler and the
callbacks each subcommand carries."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch.profilers import SimpleProfiler

from mnist_lightning.callbacks.predictions import PredictionWriter
from mnist_lightning.cli import cli_main
from mnist_lightning.defaults import NullProfiler
from mnist_lightning.runs.checkpoints import read_checkpoint
from tests.helpers import REPO_ROOT


@pytest.mark.parametrize("preset", ["seed", "fast", "strong"])
def test_each_preset_loads_and_trains_a_step(preset: str, synthetic_mnist: Path, workdir: Path) -> None:
    config = REPO_ROOT / "configs" / f"{preset}.yaml"
    data = [f"--data.data_dir={synthetic_mnist}", "--data.val_size=200"]
    cli = cli_main(["fit", f"--config={config}", *data, "--trainer.fast_dev_run=1"])
    assert cli.trainer.global_step == 1
    written = yaml.safe_load(config.read_text())
    assert {name: cli.model.hparams[name] for name in written["model"]} == written["model"]
    assert cli.datamodule.distortion.enabled == (preset == "strong")


def test_ema_weight_averaging_is_one_flag_and_its_checkpoints_hold_the_averaged_weights(
    synthetic_mnist: Path, workdir: Path
) -> None:
    data = [f"--data.data_dir={synthetic_mnist}", "--data.val_size=200", "--trainer.enable_progress_bar=false"]
    ema = ["--trainer.callbacks+=EMAWeightAveraging", "--trainer.callbacks.decay=0.9"]
    cli = cli_main(["fit", *data, *ema, "--trainer.max_epochs=2", "--test_after_fit=false"])
    checkpoint = read_checkpoint(Path(cli.trainer.checkpoint_callback.best_model_path))
    averaged, current = checkpoint["state_dict"], checkpoint["current_model_state"]
    assert averaged.keys() == current.keys()
    assert not torch.equal(averaged["net.1.weight"], current["net.1.weight"]), "the average differs from the weights"


@pytest.mark.parametrize(
    ("profiler", "profiler_class"), [([], NullProfiler), (["--trainer.profiler=simple"], SimpleProfiler)]
)
def test_fit_profiles_nothing_unless_asked_and_carries_no_prediction_writer(
    profiler: list[str], profiler_class: type, synthetic_mnist: Path, workdir: Path
) -> None:
    data = [f"--data.data_dir={synthetic_mnist}", "--data.val_size=200"]
    cli = cli_main(["fit", *data, *profiler, "--trainer.fast_dev_run=2"])
    assert type(cli.trainer.profiler) is profiler_class
    if profiler_class is SimpleProfiler:
        assert len(cli.trainer.profiler.recorded_durations["run_training_batch"]) == 2, "asked for, it measures"
    assert not any(isinstance(callback, PredictionWriter) for callback in cli.trainer.callbacks)
