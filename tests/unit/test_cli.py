"""The command line's configuration, parsed and printed without running anything: defaults, presets, flags that do
not parse, and the process-wide defaults it sets."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
import yaml
from jsonargparse import Namespace

from mnist_lightning.cli import build_cli, cli_main, named_subcommand
from mnist_lightning.defaults import stop_probing_for_nvml_without_gpus
from mnist_lightning.errors import ArgumentError
from tests.helpers import REPO_ROOT, one_line_error


def test_print_config_prints_yaml_with_the_overrides(synthetic_mnist: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", "--model.hidden_sizes=[800, 800]", "--data.batch_size=128", "--print_config"])
    assert exit_info.value.code == 0
    config = yaml.safe_load(capsys.readouterr().out)
    assert config["model"]["hidden_sizes"] == [800, 800] and config["data"]["batch_size"] == 128
    assert config["trainer"]["max_epochs"] == 20 and config["checkpoint"]["monitor"] == "val/acc"
    # The network's sizes come from the dataset, which is the checkpoint's or MNIST when none is named.
    assert "input_size" not in config["model"] and "num_classes" not in config["model"]
    assert config["data"]["dataset"] is None


def test_the_seed_config_is_the_starting_point(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli_main(["fit", f"--config={REPO_ROOT / 'configs' / 'seed.yaml'}", "--print_config"])
    config = yaml.safe_load(capsys.readouterr().out)
    model, data = config["model"], config["data"]
    assert model["hidden_sizes"] == [100] and model["lr"] == 0.001 and model["optimizer"] == "adam"
    assert data["batch_size"] == 100 and config["trainer"]["max_epochs"] == 20
    # Nothing the presets add is on.
    assert (model["dropout"], model["weight_decay"], model["label_smoothing"]) == (0, 0, 0)
    assert model["lr_schedule"] == "constant" and model["batch_norm"] is False
    assert all(data[name] == 0 for name in ("rotation", "zoom", "shift", "elastic_alpha"))


@pytest.mark.parametrize(
    ("bad_args", "named"),
    [
        (["fit", "--no_such_flag=1"], "--no_such_flag"),
        (["fit", "--data.batch_size=many"], "--data.batch_size many"),
        (["fit", "--config=does-not-exist.yaml"], "does-not-exist.yaml"),
        (["fit", "--model.no_such_key=1"], "--model.no_such_key"),
        (["fit", "--config=missing.yaml"], "missing.yaml"),
        (["fit", f"--config={REPO_ROOT / 'pyproject.toml'}"], "pyproject.toml"),
        (["fit", "--model.input_size=100"], "model.input_size"),  # set from the dataset: data.input_size
        (["fit", "--model.num_classes=26"], "model.num_classes"),
    ],
)
def test_bad_flags_unknown_keys_and_bad_config_files_exit_non_zero(
    bad_args: list[str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each is refused in one line, which names what is wrong: exit status 2, no traceback, no usage text."""
    line = one_line_error(capsys, bad_args, alone=True)
    assert named in line, line


def test_without_gpus_torch_stops_probing_for_nvml_on_every_optimizer_step(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTORCH_NVML_BASED_CUDA_CHECK", "1")  # what importing Lightning does
    gpus = torch.cuda.device_count()
    stop_probing_for_nvml_without_gpus()
    assert ("PYTORCH_NVML_BASED_CUDA_CHECK" in os.environ) == (gpus > 0)


def test_a_mistake_in_dict_args_names_their_subcommand_not_the_processs_own_argv(monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", ["pytest", "validate", "--bogus"])  # a caller's own command line (the sweep's)
    with pytest.raises(ArgumentError, match=r"^--trainer\.max_epochs abc: .*`python -m mnist_lightning test --help`"):
        build_cli({"subcommand": "test", "test": {"trainer": {"max_epochs": "abc"}}})
    namespace = Namespace(subcommand="test", test=Namespace(trainer=Namespace(max_epochs="abc")))  # only test's parser
    with pytest.raises(ArgumentError, match=r"^--trainer\.max_epochs abc: .*`python -m mnist_lightning test --help`"):
        build_cli(namespace)


def test_only_the_named_subcommands_parser_is_built(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """LightningCLI builds a parser for each of its four subcommands (~0.06 s of CPU each, benchmarks/startup.py): the
    project builds only the one its arguments start with, and all four when they start with a flag."""
    assert named_subcommand(["test", "--trainer.max_epochs=1"]) == "test"
    assert named_subcommand({"subcommand": "validate", "validate": {}}) == "validate"
    assert named_subcommand(["--config", "run.yaml", "fit"]) is None and named_subcommand([]) is None
    monkeypatch.setattr(sys, "argv", ["mnist-lightning", "predict", "--data.batch_size=8"])
    assert named_subcommand(None) == "predict"

    cli = build_cli(["fit", "--trainer.max_epochs=2"], parse_only=True)
    assert cli.subcommands() == {"fit": {"model", "train_dataloaders", "val_dataloaders", "datamodule"}}
    assert "{fit}" in cli.parser.format_help()  # the subcommands Lightning actually built, as argparse lists them
    assert cli.config["fit"]["trainer"]["max_epochs"] == 2

    config = tmp_path / "all.yaml"
    config.write_text("fit:\n  trainer:\n    max_epochs: 3\n")
    cli = build_cli(["--config", str(config), "fit"], parse_only=True)
    assert "{fit,validate,test,predict}" in cli.parser.format_help()
    assert cli.config["subcommand"] == "fit" and cli.config["fit"]["trainer"]["max_epochs"] == 3
