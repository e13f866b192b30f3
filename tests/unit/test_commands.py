"""`python -m mnist_lightning`: the dispatcher between Lightning's subcommands and the commands of their own."""

from __future__ import annotations

import importlib

import pytest

from mnist_lightning.commands import COMMANDS, LIGHTNING_SUBCOMMANDS, main


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines() if line.startswith("  ")]
    assert listed == [*LIGHTNING_SUBCOMMANDS, *COMMANDS]


def test_no_command_prints_the_usage_and_fails(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([])
    assert exit_info.value.code == 2 and "usage: python -m mnist_lightning COMMAND" in capsys.readouterr().out


def test_a_mistyped_command_gets_one_line_with_the_closest(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["swep", "--config", "configs/sweep.yaml"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: no command 'swep': did you mean sweep? the commands are fit, validate, test, predict, sweep, export, "
        "serve"
    ]


def test_a_command_whose_extra_is_missing_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def without_optuna(name: str):
        raise ModuleNotFoundError("No module named 'optuna'", name="optuna")

    monkeypatch.setattr(importlib, "import_module", without_optuna)
    with pytest.raises(SystemExit) as exit_info:
        main(["sweep", "--config", "configs/sweep.yaml"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: `sweep` needs optuna, which is not installed: pip install 'mnist-lightning[sweep]'"
    ]
