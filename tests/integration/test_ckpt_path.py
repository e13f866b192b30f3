"""`--ckpt_path`: a file, `last`, `best` or none, through every subcommand, and the dataset it brings with it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from mnist_lightning.cli import cli_main
from mnist_lightning.runs.checkpoints import read_checkpoint
from tests.helpers import QUICK_RUN, cli_context, one_line_error

NO_RUN = (
    "error: {subcommand} with {given}: no run under lightning_logs has a {which} checkpoint that loads: train one "
    "with `python -m mnist_lightning fit`, or pass --ckpt_path FILE"
)


@pytest.fixture(scope="module")
def fitted_runs(synthetic_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with two fitted runs: version_0 (MNIST) and, more recent, version_1 (Fashion-MNIST)."""
    workdir = tmp_path_factory.mktemp("runs")
    with cli_context(synthetic_dir, workdir):
        for dataset in ("mnist", "fashion_mnist"):
            args = [*QUICK_RUN, f"--data.data_dir={synthetic_dir}", f"--data.dataset={dataset}"]
            cli_main(["fit", *args, "--test_after_fit=false"])
    return workdir


def best_of(run: Path) -> Path:
    """The best checkpoint of a run folder (the one that is not last.ckpt)."""
    (best,) = (path for path in (run / "checkpoints").glob("*.ckpt") if path.name != "last.ckpt")
    return best


def checkpoint_used(output: str) -> tuple[str, Path]:
    """Which checkpoint (best or last) evaluation says it uses, and its file."""
    which, file = re.search(r"Using the (\w+) checkpoint of the most recent run that has one: (\S+)", output).groups()
    return which, Path(file)


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
    best = best_of(checkpoints.parent)
    ckpt = [] if ckpt_path is None else [f"--ckpt_path={best if ckpt_path == 'file' else ckpt_path}"]
    cli = cli_main(
        [subcommand, *QUICK_RUN, f"--data.data_dir={synthetic_mnist}", "--data.dataset=fashion_mnist", *ckpt]
    )
    output = capfd.readouterr()
    expected = checkpoints / "last.ckpt" if ckpt_path == "last" else best
    assert Path(cli.trainer.ckpt_path).resolve() == expected.resolve()
    if ckpt_path != "file":
        which, used = checkpoint_used(output.err)
        assert which == ("last" if ckpt_path == "last" else "best") and used.resolve() == expected.resolve()
    assert "Traceback" not in output.out + output.err


@pytest.mark.parametrize("subcommand", ["validate", "test", "predict"])
def test_evaluation_without_any_trained_run_is_refused(
    subcommand: str, workdir: Path, synthetic_mnist: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    error = one_line_error(capfd, [subcommand, f"--data.data_dir={synthetic_mnist}"])
    assert "no --ckpt_path" in error and "fit" in error
    assert error == NO_RUN.format(subcommand=subcommand, given="no --ckpt_path", which="best")


@pytest.mark.parametrize(
    ("ckpt_path", "named"),
    [
        ("last", NO_RUN.format(subcommand="fit", given="--ckpt_path last", which="last")),
        ("best", "pass --ckpt_path last"),
    ],
)
def test_fit_refuses_a_special_checkpoint_it_cannot_resume(
    ckpt_path: str, named: str, workdir: Path, synthetic_mnist: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    line = one_line_error(capfd, ["fit", *QUICK_RUN, f"--data.data_dir={synthetic_mnist}", f"--ckpt_path={ckpt_path}"])
    assert named in line


def test_predict_refuses_a_folder_without_images(
    fitted_runs: Path, synthetic_mnist: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd
) -> None:
    monkeypatch.chdir(fitted_runs)
    (tmp_path / "notes.txt").write_text("not a digit")
    error = one_line_error(capfd, ["predict", f"--data.data_dir={synthetic_mnist}", f"--data.predict_path={tmp_path}"])
    assert "--data.predict_path" in error and "no image" in error


def test_the_checkpoints_dataset_is_used_unless_another_is_named_which_is_refused(
    fitted_runs: Path, synthetic_mnist: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(fitted_runs)
    fashion = best_of(fitted_runs / "lightning_logs" / "version_1")
    assert torch.load(fashion, weights_only=True)["MNISTDataModule"]["dataset"]["name"] == "fashion_mnist"
    cli = cli_main(["test", *QUICK_RUN, f"--data.data_dir={synthetic_mnist}", f"--ckpt_path={fashion}"])
    assert cli.datamodule.spec.name == "fashion_mnist" and cli.datamodule.spec.classes[0] == "T-shirt/top"
    line = one_line_error(
        capfd, ["test", f"--data.data_dir={synthetic_mnist}", "--data.dataset=mnist", f"--ckpt_path={fashion}"]
    )
    assert line == (
        f"error: --ckpt_path {fashion} was trained on fashion_mnist, not --data.dataset mnist: leave --data.dataset "
        "out (the checkpoint's dataset is used), or pass a checkpoint of that dataset"
    )


# Last: it resumes (changes) the more recent of the fitted runs.
def test_fit_ckpt_path_last_resumes_the_most_recent_run_in_its_own_folder(
    fitted_runs: Path, synthetic_mnist: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(fitted_runs)
    run = Path("lightning_logs") / "version_1"
    before = read_checkpoint(run / "checkpoints" / "last.ckpt")["global_step"]
    args = [*QUICK_RUN, f"--data.data_dir={synthetic_mnist}", "--data.dataset=fashion_mnist", "--test_after_fit=false"]
    cli_main(["fit", *args, "--ckpt_path=last", "--trainer.max_epochs=3"])
    resumed = re.search(r"Resuming (\S+) from", capfd.readouterr().out).group(1)
    assert Path(resumed).resolve() == run.resolve()
    assert read_checkpoint(run / "checkpoints" / "last.ckpt")["global_step"] == before + 4
    assert not list(fitted_runs.glob("lightning_logs/version_2/checkpoints")), "no new run was started"
    kept = sorted(path.name for path in (run / "checkpoints").glob("epoch*.ckpt"))
    assert len(kept) == 1, f"--checkpoint.save_top_k 1 holds across a resume: {kept}"
