"""Where each command writes, and what it reads: an evaluation inside the run of its checkpoint, `last` under the
name the last-checkpoint callback writes, a resume that applies a new learning rate, and one read of a checkpoint."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from mnist_lightning.cli import cli_main
from tests.helpers import QUICK_RUN, cli_context, one_line_error


@pytest.fixture(scope="module")
def fitted(synthetic_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A working folder with one fitted run, lightning_logs/version_0."""
    workdir = tmp_path_factory.mktemp("fitted")
    with cli_context(synthetic_dir, workdir):
        cli_main(["fit", *QUICK_RUN, f"--data.data_dir={synthetic_dir}", "--test_after_fit=false"])
    return workdir


def runs_in(workdir: Path) -> list[str]:
    return sorted(path.name for path in (workdir / "lightning_logs").iterdir())


@pytest.mark.parametrize("subcommand", ["validate", "test", "predict"])
def test_an_evaluation_of_a_runs_checkpoint_writes_inside_that_run_each_time(
    subcommand: str, fitted: Path, synthetic_mnist: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(fitted)
    run = Path("lightning_logs") / "version_0"
    args = [subcommand, *QUICK_RUN, f"--data.data_dir={synthetic_mnist}", f"--ckpt_path={run}/checkpoints/last.ckpt"]
    for _ in range(2):  # a repeat writes into the same folder
        cli = cli_main(args)
        assert Path(cli.trainer.log_dir).resolve() == (run / f"{subcommand}-last").resolve()
    assert runs_in(fitted) == ["version_0"], "no version_N of its own fills TensorBoard's run list"
    written = {path.name for path in (run / f"{subcommand}-last").iterdir()}
    assert "config.yaml" in written and any(name.startswith("events.out.tfevents") for name in written)
    if subcommand == "predict":
        assert "predictions.csv" in written


def test_an_evaluation_of_a_checkpoint_outside_any_run_gets_a_folder_of_its_own(
    fitted: Path, synthetic_mnist: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loose = tmp_path / "model.ckpt"
    shutil.copy(fitted / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt", loose)
    monkeypatch.chdir(tmp_path)
    cli = cli_main(["test", *QUICK_RUN, f"--data.data_dir={synthetic_mnist}", f"--ckpt_path={loose}"])
    assert Path(cli.trainer.log_dir).resolve() == (tmp_path / "lightning_logs" / "version_0").resolve()


def test_a_checkpoint_is_read_once_per_command(
    fitted: Path, synthetic_mnist: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(fitted)
    reads: list[str] = []
    load = torch.load

    def counted(f, *args, **kwargs):
        reads.append(str(f))
        return load(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", counted)
    cli_main(["test", *QUICK_RUN, f"--data.data_dir={synthetic_mnist}"])  # the most recent run's best checkpoint
    (best,) = reads
    assert "last" not in Path(best).name
    reads.clear()
    last = Path("lightning_logs") / "version_0" / "checkpoints" / "last.ckpt"
    args = [*QUICK_RUN, f"--data.data_dir={synthetic_mnist}", "--test_after_fit=false", "--trainer.max_epochs=3"]
    cli_main(["fit", *args, f"--ckpt_path={last}"])
    assert reads == [str(last)], "a resumed fit reads its checkpoint once, Lightning's restore included"


def test_last_follows_the_name_the_last_checkpoint_callback_writes(
    workdir: Path, synthetic_mnist: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    args = ["fit", *QUICK_RUN, f"--data.data_dir={synthetic_mnist}", "--test_after_fit=false"]
    cli_main([*args, "--last_checkpoint.filename=mine"])
    assert (workdir / "lightning_logs" / "version_0" / "checkpoints" / "mine.ckpt").is_file()
    cli = cli_main([*args, "--last_checkpoint.filename=mine", "--ckpt_path=last", "--trainer.max_epochs=3"])
    assert Path(cli.trainer.ckpt_path).name == "mine.ckpt"
    assert runs_in(workdir) == ["version_0"], "the run was resumed, not a new one started"


def test_a_resumed_fit_applies_a_new_learning_rate_and_keeps_the_network_and_says_both(
    workdir: Path, synthetic_mnist: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    args = ["fit", *QUICK_RUN, f"--data.data_dir={synthetic_mnist}", "--test_after_fit=false"]
    cli_main(args)
    last = Path("lightning_logs") / "version_0" / "checkpoints" / "last.ckpt"
    capfd.readouterr()
    resumed = [*args, f"--ckpt_path={last}", "--trainer.max_epochs=3", "--model.lr=0.01", "--model.hidden_sizes=[64]"]
    cli = cli_main(resumed)
    assert cli.model.hparams.lr == 0.01 and cli.model.hparams.hidden_sizes == [16]
    assert {group["lr"] for group in cli.trainer.optimizers[0].param_groups} == {0.01}, "trained on with the new lr"
    note = f"note: {last}: hidden_sizes=[16] from the checkpoint, not [64]; lr=0.01 applied (the checkpoint trained "
    assert f"{note}with 0.001)\n" in capfd.readouterr().err


def test_a_refusal_during_set_up_leaves_no_run_folder(
    workdir: Path, synthetic_mnist: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    error = one_line_error(capfd, ["fit", f"--data.data_dir={synthetic_mnist}", "--data.val_size=60000"])
    assert error.startswith("error: val_size=60000 leaves no training images")
    assert not list((workdir / "lightning_logs").glob("version_*"))
