"""Every input of fit, validate, test and predict that a user can get wrong, in every broken form: one line that names
the input, what is wrong and the fix (no traceback, no usage text), and nothing the user has is touched.

Each table row is a case; the tests run `cli_main` in this process on synthetic data.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from mnist_lightning.cli import cli_main
from tests.helpers import QUICK_RUN, CodeOnUnpickling, one_line_error

SUBCOMMANDS = ["fit", "validate", "test", "predict"]


def write_checkpoint_like(kind: str, folder: Path, good: Path) -> Path:
    """A file (or folder) named x.ckpt that is broken in the way `kind` says."""
    path = folder / "x.ckpt"
    writers: dict[str, Callable[[], object]] = {
        "missing": lambda: None,
        "empty": lambda: path.write_bytes(b""),
        "a folder": lambda: path.mkdir(),
        "text": lambda: path.write_text("model: not a checkpoint\n"),
        "random bytes": lambda: path.write_bytes(os.urandom(4000)),
        "truncated": lambda: path.write_bytes(good.read_bytes()[: good.stat().st_size // 2]),
        "plain data": lambda: torch.save({"weights": torch.zeros(3)}, path),
        "another program's": lambda: torch.save({"state_dict": {}, "hyper_parameters": {"n_layers": 3}}, path),
        "code on loading": lambda: torch.save({"state_dict": {}, "payload": CodeOnUnpickling(folder / "ran")}, path),
    }
    if kind == "a device":
        return Path(os.devnull)
    writers[kind]()
    return path


# Each broken form of --ckpt_path, and what its one line must say.
BROKEN_CHECKPOINTS = {
    "missing": "no such file",
    "empty": "is an empty file (0 bytes)",
    "a folder": "is a folder: pass a .ckpt file",
    "text": "is not a complete checkpoint",
    "random bytes": "is not a complete checkpoint",
    "truncated": "is not a complete checkpoint",
    "plain data": "is not a Lightning checkpoint",
    "another program's": "is not a checkpoint of this project's MNISTClassifier (it has hyperparameters n_layers)",
    "code on loading": "refused by torch.load(weights_only=True)",
}


@pytest.mark.parametrize("subcommand", SUBCOMMANDS)
@pytest.mark.parametrize("kind", BROKEN_CHECKPOINTS)
def test_every_broken_checkpoint_is_one_line_for_every_command(
    kind: str,
    subcommand: str,
    tiny_checkpoint: Path,
    synthetic_mnist: Path,
    workdir: Path,
    capfd: pytest.CaptureFixture[str],
) -> None:
    path = write_checkpoint_like(kind, workdir, tiny_checkpoint)
    args = [subcommand, *QUICK_RUN, f"--data.data_dir={synthetic_mnist}", f"--ckpt_path={path}"]
    line = one_line_error(capfd, args)
    assert line.startswith(f"error: --ckpt_path {path}") and BROKEN_CHECKPOINTS[kind] in line, line
    assert not (workdir / "ran").exists(), "no code from the file ran"
    assert not list(workdir.glob("lightning_logs/version_*")), "a refused command leaves no run folder"


def test_a_broken_last_checkpoint_beside_good_runs_breaks_nothing_that_did_not_ask_for_it(
    tiny_checkpoint: Path, synthetic_mnist: Path, workdir: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """A newer run whose checkpoints are empty files: `test` without --ckpt_path and `--ckpt_path last` use the newest
    run whose checkpoints load."""
    good = workdir / "lightning_logs" / "version_0"
    shutil.copytree(tiny_checkpoint.parent.parent, good)
    broken = workdir / "lightning_logs" / "version_1" / "checkpoints"
    broken.mkdir(parents=True)
    for name in ("last.ckpt", "epoch00-val_acc0.9000.ckpt"):
        (broken / name).write_bytes(b"")
    for ckpt in ([], ["--ckpt_path=last"]):
        cli = cli_main(["test", *QUICK_RUN, f"--data.data_dir={synthetic_mnist}", *ckpt])
        assert Path(cli.trainer.ckpt_path).parent == Path("lightning_logs/version_0/checkpoints"), ckpt
    assert "Using the last checkpoint of the most recent run that has one" in capfd.readouterr().err


def test_an_interrupted_newer_run_without_a_best_checkpoint_leaves_the_older_best_in_use(
    tiny_checkpoint: Path, synthetic_mnist: Path, workdir: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """A fit stopped before its first validation has a last.ckpt and no best checkpoint: `test` still finds the best
    one of the run before it (it said "no best checkpoint ... train one with fit")."""
    shutil.copytree(tiny_checkpoint.parent.parent, workdir / "lightning_logs" / "version_0")
    interrupted = workdir / "lightning_logs" / "version_1" / "checkpoints"
    interrupted.mkdir(parents=True)
    shutil.copy(tiny_checkpoint.parent / "last.ckpt", interrupted / "last.ckpt")
    cli = cli_main(["test", *QUICK_RUN, f"--data.data_dir={synthetic_mnist}"])
    assert Path(cli.trainer.ckpt_path) == Path("lightning_logs/version_0/checkpoints") / tiny_checkpoint.name


def write_config_like(kind: str, folder: Path) -> Path:
    path = folder / "run.yaml"
    writers: dict[str, Callable[[], object]] = {
        "missing": lambda: None,
        "empty": lambda: path.write_text(""),
        "a folder": lambda: path.mkdir(),
        "random bytes": lambda: path.write_bytes(bytes(range(128, 256)) * 4),
        "not YAML": lambda: path.write_text("model:\n  hidden_sizes: [100\n"),
        "a list": lambda: path.write_text("- model\n- data\n"),
        "a typo in a key": lambda: path.write_text("modle:\n  lr: 0.01\n"),
        "a wrong type": lambda: path.write_text("trainer:\n  max_epochs: many\n"),
    }
    if kind == "a device":
        return Path(os.devnull)
    writers[kind]()
    return path


BROKEN_CONFIGS = {
    "missing": "--config {path}: no such file",
    "empty": "--config {path} is empty, not a YAML mapping of settings",
    "a folder": "--config {path}: a folder, not a YAML file",
    "a device": "--config {path}: not a regular file; pass a YAML file",
    "random bytes": "a --config file is not text (YAML)",
    "not YAML": "--config {path} is not valid YAML: while parsing a flow sequence",
    "a list": "--config {path} holds '- model - data', not a YAML mapping of settings",
    "a typo in a key": "--config {path} sets modle.lr, which fit does not have: did you mean model.lr?",
    "a wrong type": "--trainer.max_epochs many: expected",
}


@pytest.mark.parametrize("kind", BROKEN_CONFIGS)
def test_every_broken_config_file_is_one_line_without_usage(
    kind: str, workdir: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    path = write_config_like(kind, workdir)
    line = one_line_error(capfd, ["fit", f"--config={path}"], alone=True)
    assert BROKEN_CONFIGS[kind].format(path=path) in line, line


# A value a Lightning user might type, and what its one line must say.
WRONG_VALUES = {
    "not a number": (["--trainer.max_epochs=abc"], "error: --trainer.max_epochs abc: expected an integer or null"),
    "not a choice": (["--model.optimizer=sgd"], "error: --model.optimizer sgd: expected one of adam, adamw"),
    "a mistyped flag": (["--trainer.max_epocs=3"], "did you mean --trainer.max_epochs?"),
    "an unknown dataset": (["--data.dataset=mnsit"], "not a known dataset: did you mean mnist?"),
    "a logger whose package is missing": (
        ["--trainer.logger=WandbLogger"],
        "error: WandbLogger needs wandb>=0.12.10, which is not installed: pip install -U 'wandb>=0.12.10'",
    ),
    "an unknown class": (["--trainer.logger=NoSuchLogger"], "--trainer.logger NoSuchLogger: expected a class"),
}


@pytest.mark.parametrize(("flags", "expected"), WRONG_VALUES.values(), ids=WRONG_VALUES.keys())
def test_wrong_values_are_one_line_without_usage_and_hints_name_the_module(
    flags: list[str], expected: str, workdir: Path, synthetic_mnist: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    line = one_line_error(capfd, ["fit", *QUICK_RUN, f"--data.data_dir={synthetic_mnist}", *flags])
    assert expected in line, line
    assert "__main__.py" not in line and ("--help" not in line or "python -m mnist_lightning fit --help" in line)


def test_help_names_the_command_a_user_types(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli_main(["fit", "--help"])
    assert capsys.readouterr().out.startswith("usage: python -m mnist_lightning [options] fit")


def test_a_data_folder_that_is_a_file_is_one_line(
    tiny_checkpoint: Path, workdir: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    line = one_line_error(capfd, ["fit", *QUICK_RUN, f"--data.data_dir={tiny_checkpoint}"])
    assert f"could not write the data folder {tiny_checkpoint} (" in line, line
    assert "a file stands where a folder is needed" in line and "--data.data_dir DIR" in line


def test_a_users_own_progress_bar_replaces_the_default_one(
    workdir: Path, synthetic_mnist: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar

    cli = cli_main(["fit", *QUICK_RUN, f"--data.data_dir={synthetic_mnist}", "--trainer.callbacks+=RichProgressBar"])
    bars = [callback for callback in cli.trainer.callbacks if isinstance(callback, (RichProgressBar, TQDMProgressBar))]
    assert [type(bar) for bar in bars] == [RichProgressBar]


def test_runs_without_a_logger_get_folders_of_their_own_and_never_collide(
    workdir: Path, synthetic_mnist: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """`--trainer.logger false` twice in one folder: two run folders (it crashed the second time, writing config.yaml
    and checkpoints/ into the working folder)."""
    args = ["fit", *QUICK_RUN, f"--data.data_dir={synthetic_mnist}", "--trainer.logger=false", "--test_after_fit=false"]
    for _ in range(2):
        cli_main(args)
    runs = sorted((workdir / "lightning_logs").iterdir())
    assert [run.name for run in runs] == ["version_0", "version_1"]
    assert all((run / "config.yaml").is_file() and (run / "checkpoints" / "last.ckpt").is_file() for run in runs)
    assert [path.name for path in workdir.iterdir()] == ["lightning_logs"]


def test_a_run_that_fails_before_training_leaves_no_folder_and_keeps_what_was_there(
    synthetic_mnist: Path, workdir: Path, tmp_path_factory: pytest.TempPathFactory, capfd: pytest.CaptureFixture[str]
) -> None:
    empty_data = tmp_path_factory.mktemp("no-data")  # and no source to fetch from (synthetic_mnist)
    kept = workdir / "lightning_logs" / "version_0" / "notes.txt"
    kept.parent.mkdir(parents=True)
    kept.write_text("mine")
    line = one_line_error(capfd, ["fit", *QUICK_RUN, f"--data.data_dir={empty_data}"], alone=True)
    assert line.startswith("error: could not obtain mnist, tried (1) already on disk") and "by hand" in line
    assert sorted(path.name for path in (workdir / "lightning_logs").iterdir()) == ["version_0"]
    assert kept.read_text() == "mine"
