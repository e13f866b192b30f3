"""The Trainer flags and LightningCLI conventions a Lightning user knows: each works end to end (fit, checkpoints,
the test after fit, the summary, the dashboard, the run folder) or is refused before training in one line that names
the flag.

Every case runs `cli_main` in this process on synthetic data, a few steps each.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException

from mnist_lightning.cli import cli_main
from mnist_lightning.runs.checkpoints import read_checkpoint
from tests.helpers import QUICK_RUN, one_line_error

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
    "no test after fit": ["--test_after_fit=false"],
}


# Each refused case: the flags, and the flag its one-line error must name.
REFUSED = {
    "nothing to train": (["--trainer.limit_train_batches=0"], "limit_train_batches"),
    "transformer-engine on a CPU": (["--trainer.precision=transformer-engine"], "precision"),
    "a GPU that is not there": (["--trainer.accelerator=gpu"], "accelerator"),
    "negative max_epochs": (["--trainer.max_epochs=-5"], "max_epochs"),
    "an unknown precision": (["--trainer.precision=8-true"], "precision"),
}


@pytest.mark.parametrize("flags", WORKS.values(), ids=WORKS.keys())
def test_fit_works_end_to_end(
    flags: list[str], workdir: Path, synthetic_mnist: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    cli = cli_main(["fit", *QUICK_RUN, f"--data.data_dir={synthetic_mnist}", *flags])
    output = capfd.readouterr()
    printed = output.out + output.err
    assert "Traceback" not in printed
    trainer = cli.trainer
    assert trainer.global_step > 0, "it trained"
    assert next(cli.model.parameters()).isfinite().all()

    tested = re.search(r"Test accuracy\s+(\S+)", output.out).group(1)
    if "--trainer.limit_test_batches=0" in flags:
        assert tested == "not"
    elif "--test_after_fit=false" in flags:
        assert "Test accuracy     not tested (--test_after_fit false)" in output.out
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

    # Every run has a folder of its own, with a logger or without; fast_dev_run writes nothing.
    has_a_run = "--trainer.fast_dev_run=true" not in flags
    logs_to_the_run = has_a_run and "--trainer.logger=false" not in flags
    assert "Run folder" in output.out
    runs = list((workdir / "lightning_logs").glob("version_*"))
    assert len(runs) == has_a_run
    if has_a_run:
        run = runs[0]
        assert (run / "config.yaml").is_file() and f"Run folder        {run.relative_to(workdir)}" in output.out
        if keeps_checkpoints:
            assert read_checkpoint(run / "checkpoints" / "last.ckpt")["global_step"] == trainer.global_step
        tested_here = not any(f in flags for f in ("--trainer.limit_test_batches=0", "--test_after_fit=false"))
        if logs_to_the_run and tested_here:
            assert (run / "confusion_matrix_test.png").is_file() and (run / "misclassified_test.png").is_file()
    if "--trainer.logger=false" in flags:
        assert [path.name for path in workdir.iterdir()] == ["lightning_logs"], "nothing in the working folder"
    if not logs_to_the_run:
        assert not list(workdir.rglob("*.png")), "without a logger the dashboard saves no figure"


@pytest.mark.parametrize(
    ("precision", "dtype"),
    [("16-true", torch.float16), ("bf16-true", torch.bfloat16), ("64-true", torch.float64)],
)
def test_true_precision_trains_and_checkpoints_in_that_dtype(
    precision: str, dtype: torch.dtype, workdir: Path, synthetic_mnist: Path
) -> None:
    cli = cli_main(["fit", *QUICK_RUN, f"--data.data_dir={synthetic_mnist}", f"--trainer.precision={precision}"])
    assert next(cli.model.parameters()).dtype == dtype
    last = read_checkpoint(workdir / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt")
    assert last["state_dict"]["net.1.weight"].dtype == dtype


def test_the_csv_logger_gets_the_metrics_and_a_note_about_tensorboard_panels(
    workdir: Path, synthetic_mnist: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    cli_main(
        [
            "fit",
            *QUICK_RUN,
            f"--data.data_dir={synthetic_mnist}",
            "--trainer.logger=CSVLogger",
            "--trainer.logger.save_dir=.",
        ]
    )
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
    error = one_line_error(capfd, ["fit", *QUICK_RUN, f"--data.data_dir={synthetic_mnist}", *flags])
    assert named in error
    assert not list(workdir.glob("lightning_logs/*/checkpoints")), "refused before training"
    assert not list(workdir.glob("lightning_logs/version_*")), "a run refused before training leaves no folder"


def test_lightnings_refusals_keep_their_traceback_for_debugging(
    workdir: Path, synthetic_mnist: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MNIST_LIGHTNING_DEBUG", "1")
    with pytest.raises(MisconfigurationException, match="gpu"):
        cli_main(["fit", *QUICK_RUN, f"--data.data_dir={synthetic_mnist}", "--trainer.accelerator=gpu"])


@pytest.mark.parametrize(
    ("logger", "root"),
    [
        ([], "out/lightning_logs"),
        (["--trainer.logger=false"], "out/lightning_logs"),
        (["--trainer.logger.init_args.save_dir=logs"], "out/logs/lightning_logs"),
    ],
    ids=["TensorBoardLogger", "no logger", "relative save_dir"],
)
def test_every_run_gets_a_folder_under_default_root_dir(
    logger: list[str], root: str, workdir: Path, synthetic_mnist: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    args = [*QUICK_RUN, f"--data.data_dir={synthetic_mnist}", "--trainer.default_root_dir=out", *logger]
    cli_main(["fit", *args, "--test_after_fit=false"])
    assert f"Run folder        {Path(root) / 'version_0'}" in capfd.readouterr().out
    fitted = workdir / root / "version_0"
    assert (fitted / "config.yaml").is_file() and read_checkpoint(fitted / "checkpoints" / "last.ckpt")
    assert [path.name for path in workdir.iterdir()] == ["out"], "nothing outside --trainer.default_root_dir"
    for subcommand in ["validate", "test", "predict"]:
        cli = cli_main([subcommand, *args])  # the best checkpoint of the run under default_root_dir
        best = Path(cli.trainer.ckpt_path)
        assert best.parent == Path(root) / "version_0" / "checkpoints"
        evaluation = fitted / f"{subcommand}-{best.stem}"
        assert (evaluation / "config.yaml").is_file(), "an evaluation is a run too, inside the run it evaluates"
    assert (evaluation / "predictions.csv").is_file()
    assert sorted(path.name for path in (workdir / root).iterdir()) == ["version_0"]
