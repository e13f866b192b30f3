"""The Trainer flags and LightningCLI conventions a Lightning user knows: each works end to end (fit, checkpoints,
the test after fit, the summary, the dashboard) or is refused before training in one line that names the flag.

Every case runs `cli_main` in this process on synthetic data, a few steps each.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException

from mnist_lightning.cli import cli_main
from mnist_lightning.runs import read_checkpoint
from mnist_lightning.sources import DATASETS
from tests.synthetic import one_line_error, trust_synthetic_mnist

# 4 training steps of 50 images per epoch, 2 epochs; 2 batches each of validation and test.
QUICK = [
    "--data.val_size=200",
    "--data.batch_size=50",
    "--model.hidden_sizes=[16]",
    "--trainer.max_epochs=2",
    "--trainer.limit_train_batches=4",
    "--trainer.limit_val_batches=2",
    "--trainer.limit_test_batches=2",
    "--trainer.enable_progress_bar=false",
]

WORKS = {
    "precision 32-true": ["--trainer.precision=32-true"],
    "precision 16-mixed": ["--trainer.precision=16-mixed"],  # bf16-mixed on a CPU, as Lightning warns
    "precision bf16-mixed": ["--trainer.precision=bf16-mixed"],
    "precision 16-true": ["--trainer.precision=16-true"],
    "precision bf16-true": ["--trainer.precision=bf16-true"],
    "precision 64-true": ["--trainer.precision=64-true"],
    "no logger": ["--trainer.logger=false"],
    "CSVLogger": ["--trainer.logger=CSVLogger", "--trainer.logger.save_dir=."],
    "no checkpointing": ["--trainer.enable_checkpointing=false"],
    "no progress bar": ["--trainer.enable_progress_bar=false"],
    "no model summary": ["--trainer.enable_model_summary=false"],
    "no validation": ["--trainer.limit_val_batches=0"],
    "no test": ["--trainer.limit_test_batches=0"],
    "val_check_interval": ["--trainer.val_check_interval=0.5"],
    "check_val_every_n_epoch": ["--trainer.check_val_every_n_epoch=2"],
    "max_steps, endless epochs": ["--trainer.max_epochs=-1", "--trainer.max_steps=6"],
    "accumulate_grad_batches": ["--trainer.accumulate_grad_batches=2"],
    "gradient_clip_val": ["--trainer.gradient_clip_val=0.5"],
    "overfit_batches": ["--trainer.overfit_batches=2"],
    "fast_dev_run": ["--trainer.fast_dev_run=true"],
    "deterministic": ["--trainer.deterministic=true"],
    "EarlyStopping": [
        "--trainer.callbacks+=EarlyStopping",
        "--trainer.callbacks.monitor=val/acc",
        "--trainer.callbacks.mode=max",
        "--trainer.callbacks.patience=1",
    ],
    "StochasticWeightAveraging": ["--trainer.callbacks+=StochasticWeightAveraging", "--trainer.callbacks.swa_lrs=0.01"],
    "EMAWeightAveraging": ["--trainer.callbacks+=EMAWeightAveraging", "--trainer.callbacks.decay=0.9"],
    "Fashion-MNIST": ["--data.dataset=fashion_mnist"],
}

# Each refused case: the flags, and the flag its one-line error must name.
REFUSED = {
    "nothing to train": (["--trainer.limit_train_batches=0"], "limit_train_batches"),
    "transformer-engine on a CPU": (["--trainer.precision=transformer-engine"], "precision"),
    "a GPU that is not there": (["--trainer.accelerator=gpu"], "accelerator"),
    "negative max_epochs": (["--trainer.max_epochs=-5"], "max_epochs"),
    "an unknown precision": (["--trainer.precision=8-true"], "precision"),
}


@pytest.fixture(autouse=True)
def no_pytest_argv(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["mnist-lightning"])


@pytest.fixture
def workdir(synthetic_mnist: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def data_args(data_dir: Path) -> list[str]:
    return [f"--data.data_dir={data_dir}"]


@pytest.mark.parametrize("flags", WORKS.values(), ids=WORKS.keys())
def test_fit_works_end_to_end(
    flags: list[str], workdir: Path, synthetic_mnist: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    cli = cli_main(["fit", *QUICK, *data_args(synthetic_mnist), *flags])
    output = capfd.readouterr()
    printed = output.out + output.err
    assert "Traceback" not in printed
    trainer = cli.trainer
    assert trainer.global_step > 0, "it trained"
    assert next(cli.model.parameters()).isfinite().all()

    tested = re.search(r"Test accuracy\s+(\S+)", output.out).group(1)
    if "--trainer.limit_test_batches=0" in flags:
        assert tested == "not"
    else:
        assert 0 <= float(tested) <= 1

    best = re.search(r"Best checkpoint\s+(.+)", output.out).group(1)
    keeps_checkpoints = not any(
        f in flags for f in ("--trainer.enable_checkpointing=false", "--trainer.fast_dev_run=true")
    )
    if keeps_checkpoints and "--trainer.limit_val_batches=0" not in flags:
        assert read_checkpoint(Path(best))["global_step"] > 0
    else:
        assert best.startswith("none")

    logs_a_run = not any(f in flags for f in ("--trainer.logger=false", "--trainer.fast_dev_run=true"))
    runs = list((workdir / "lightning_logs").glob("version_*"))
    assert len(runs) == logs_a_run
    if logs_a_run:
        run = runs[0]
        assert (run / "config.yaml").is_file() and f"Run folder        {run.relative_to(workdir)}" in output.out
        if keeps_checkpoints:
            assert read_checkpoint(run / "checkpoints" / "last.ckpt")["global_step"] == trainer.global_step
        if "--trainer.limit_test_batches=0" not in flags:
            assert (run / "confusion_matrix_test.png").is_file() and (run / "misclassified_test.png").is_file()
    else:
        assert not list(workdir.glob("*.png")), "without a run folder the dashboard saves no figure"


@pytest.mark.parametrize(
    ("precision", "dtype"),
    [("16-true", torch.float16), ("bf16-true", torch.bfloat16), ("64-true", torch.float64)],
)
def test_true_precision_trains_and_checkpoints_in_that_dtype(
    precision: str, dtype: torch.dtype, workdir: Path, synthetic_mnist: Path
) -> None:
    cli = cli_main(["fit", *QUICK, *data_args(synthetic_mnist), f"--trainer.precision={precision}"])
    assert next(cli.model.parameters()).dtype == dtype
    last = read_checkpoint(workdir / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt")
    assert last["state_dict"]["net.1.weight"].dtype == dtype


def test_the_csv_logger_gets_the_metrics_and_a_note_about_tensorboard_panels(
    workdir: Path, synthetic_mnist: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    cli_main(["fit", *QUICK, *data_args(synthetic_mnist), "--trainer.logger=CSVLogger", "--trainer.logger.save_dir=."])
    output = capfd.readouterr()
    run = workdir / "lightning_logs" / "version_0"
    header = (run / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"val/acc", "train/loss", "test/acc"} <= set(header)
    assert (run / "confusion_matrix_val.png").is_file()
    assert (output.out + output.err).count("TensorBoard panels") == 1
    assert "tensorboard --logdir" not in output.out


@pytest.mark.parametrize(("flags", "named"), REFUSED.values(), ids=REFUSED.keys())
def test_fit_refuses_in_one_line_naming_the_flag(
    flags: list[str], named: str, workdir: Path, synthetic_mnist: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    error = one_line_error(capfd, ["fit", *QUICK, *data_args(synthetic_mnist), *flags])
    assert named in error
    assert not list(workdir.glob("lightning_logs/*/checkpoints")), "refused before training"


def test_lightnings_refusals_keep_their_traceback_for_debugging(
    workdir: Path, synthetic_mnist: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MNIST_LIGHTNING_DEBUG", "1")
    with pytest.raises(MisconfigurationException, match="gpu"):
        cli_main(["fit", *QUICK, *data_args(synthetic_mnist), "--trainer.accelerator=gpu"])


# --- --ckpt_path: a file, `last`, `best`, or none, through every subcommand ---------------------------------------


@pytest.fixture(scope="module")
def fitted_runs(synthetic_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with two fitted runs: version_0 (MNIST) and, more recent, version_1 (Fashion-MNIST)."""
    workdir = tmp_path_factory.mktemp("runs")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(workdir)
        patch.setattr(sys, "argv", ["mnist-lightning"])
        for name, spec in DATASETS.items():
            patch.setitem(DATASETS, name, spec)
        trust_synthetic_mnist(synthetic_dir)
        for dataset in ("mnist", "fashion_mnist"):
            cli_main(["fit", *QUICK, *data_args(synthetic_dir), f"--data.dataset={dataset}", "--test_after_fit=false"])
    return workdir


def checkpoint_used(output: str) -> str:
    return re.search(r"Using the \w+ checkpoint of the most recent run: (\S+)", output).group(1)


@pytest.mark.parametrize("subcommand", ["validate", "test", "predict"])
@pytest.mark.parametrize("ckpt_path", [None, "best", "last", "file"])
def test_evaluation_uses_the_most_recent_runs_checkpoint_and_says_which(
    subcommand: str,
    ckpt_path: str | None,
    fitted_runs: Path,
    synthetic_mnist: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(fitted_runs)
    checkpoints = fitted_runs / "lightning_logs" / "version_1" / "checkpoints"
    (best,) = (path for path in checkpoints.glob("*.ckpt") if path.name != "last.ckpt")
    ckpt = [] if ckpt_path is None else [f"--ckpt_path={best if ckpt_path == 'file' else ckpt_path}"]
    cli = cli_main([subcommand, *QUICK, *data_args(synthetic_mnist), "--data.dataset=fashion_mnist", *ckpt])
    output = capfd.readouterr()
    expected = checkpoints / "last.ckpt" if ckpt_path == "last" else best
    assert Path(cli.trainer.ckpt_path).resolve() == expected.resolve()
    if ckpt_path != "file":
        assert Path(checkpoint_used(output.err)).resolve() == expected.resolve()
    assert "Traceback" not in output.out + output.err


@pytest.mark.parametrize("subcommand", ["validate", "test", "predict"])
def test_evaluation_without_any_trained_run_is_refused(
    subcommand: str, workdir: Path, synthetic_mnist: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    error = one_line_error(capfd, [subcommand, *data_args(synthetic_mnist)])
    assert "no --ckpt_path" in error and "fit" in error


def test_fit_ckpt_path_last_resumes_the_most_recent_run_in_its_own_folder(
    fitted_runs: Path, synthetic_mnist: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(fitted_runs)
    run = Path("lightning_logs") / "version_1"
    before = read_checkpoint(run / "checkpoints" / "last.ckpt")["global_step"]
    args = [*QUICK, *data_args(synthetic_mnist), "--data.dataset=fashion_mnist", "--test_after_fit=false"]
    cli_main(["fit", *args, "--ckpt_path=last", "--trainer.max_epochs=3"])
    assert f"Resuming {run}" in capfd.readouterr().out
    assert read_checkpoint(run / "checkpoints" / "last.ckpt")["global_step"] == before + 4
    assert not list(fitted_runs.glob("lightning_logs/version_2/checkpoints")), "no new run was started"


@pytest.mark.parametrize(("ckpt_path", "named"), [("last", "no last checkpoint"), ("best", "pass --ckpt_path last")])
def test_fit_refuses_a_special_checkpoint_it_cannot_resume(
    ckpt_path: str, named: str, workdir: Path, synthetic_mnist: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    assert named in one_line_error(capfd, ["fit", *QUICK, *data_args(synthetic_mnist), f"--ckpt_path={ckpt_path}"])


def test_predict_refuses_a_folder_without_images(
    fitted_runs: Path, synthetic_mnist: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd
) -> None:
    monkeypatch.chdir(fitted_runs)
    (tmp_path / "notes.txt").write_text("not a digit")
    error = one_line_error(capfd, ["predict", *data_args(synthetic_mnist), f"--data.predict_path={tmp_path}"])
    assert "--data.predict_path" in error and "no image" in error
