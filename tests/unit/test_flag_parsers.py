"""Every command's flags are parsed by jsonargparse, LightningCLI's parser, and their mistakes are mapped to one line
by one module (mnist_lightning/flag_errors.py): `sweep`, `export` and `serve` refuse an abbreviated flag as they refuse
a misspelt one, with "did you mean", and a bad value, a missing required flag and a broken YAML file the same way."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from jsonargparse import ActionConfigFile, ArgumentParser

from mnist_lightning import commands
from mnist_lightning.flag_errors import YamlFile, closest_flag, parse_error, yaml_reason
from mnist_lightning.tools.sweep.command import split_sweep_args
from tests.helpers import one_line_error, write_sweep

SWEEP = "python -m mnist_lightning sweep"
EXPORT = "python -m mnist_lightning export"
SERVE = "python -m mnist_lightning serve"
BROKEN_YAML = "fit: [fast.yaml\n"
YAML_REASON = "while parsing a flow sequence, did not find expected ',' or ']' at line 2, column 1"


def good_sweep(*flags: str) -> Callable[[Path], list[str]]:
    return lambda folder: ["sweep", f"--config={write_sweep(folder)}", *flags]


def broken_sweep(folder: Path) -> list[str]:
    (folder / "sweep.yaml").write_text(BROKEN_YAML)
    return ["sweep", "--config=sweep.yaml"]


# case: (the command line in a folder, its one line)
CASES: dict[str, tuple[Callable[[Path], list[str]], str]] = {
    "sweep: an abbreviated flag": (
        good_sweep("--work", "2"),
        f"unknown flag --work: did you mean --workers? `{SWEEP} --help` lists every flag",
    ),
    "sweep: an abbreviated flag with its value": (
        good_sweep("--n=3"),
        f"unknown flag --n: did you mean --n_trials? `{SWEEP} --help` lists every flag",
    ),
    "sweep: an abbreviated --config": (
        lambda folder: ["sweep", "--conf", str(write_sweep(folder))],
        f"unknown flag --conf: did you mean --config? `{SWEEP} --help` lists every flag",
    ),
    "sweep: an abbreviated fit flag": (
        good_sweep("--trainer.max_epoch=1"),
        "unknown flag --trainer.max_epoch: did you mean --trainer.max_epochs? `python -m mnist_lightning fit --help` "
        "lists every flag",
    ),
    "sweep: a misspelt flag": (
        good_sweep("--storge", "x"),
        f"unknown flag --storge: did you mean --storage? `{SWEEP} --help` lists every flag",
    ),
    "sweep: a bad value": (
        good_sweep("--workers", "none"),
        f"--workers none: expected a positive integer (`{SWEEP} --help` says what each flag takes)",
    ),
    "sweep: a flag without its value": (
        good_sweep("--study"),
        f"--study needs a value: --study VALUE (`{SWEEP} --help` lists every flag)",
    ),
    "sweep: no --config": (
        lambda folder: ["sweep", "--workers=2"],
        f"--config is required: name the sweep file, e.g. {SWEEP} --config configs/sweep.yaml",
    ),
    "sweep: a broken sweep file": (broken_sweep, f"--config sweep.yaml is not valid YAML: {YAML_REASON}"),
    "sweep: a sweep file that is not a file": (
        lambda folder: ["sweep", f"--config={os.devnull}"],
        f"--config {os.devnull}: not a regular file; pass a sweep file (configs/sweep.yaml is an example)",
    ),
    "export: an abbreviated flag": (
        lambda folder: ["export", "--ckpt", "x.ckpt"],
        f"unknown flag --ckpt: did you mean --ckpt_path? `{EXPORT} --help` lists every flag",
    ),
    "export: a misspelt flag": (
        lambda folder: ["export", "--ckpt_path=x.ckpt", "--ouptut=y.onnx"],
        f"unknown flag --ouptut: did you mean --output? `{EXPORT} --help` lists every flag",
    ),
    "export: a bad value": (
        lambda folder: ["export", "--ckpt_path=x.ckpt", "--overwrite=maybe"],
        f"--overwrite maybe: expected true or false (`{EXPORT} --help` says what each flag takes)",
    ),
    "export: no --ckpt_path": (
        lambda folder: ["export", "--output=y.onnx"],
        f"--ckpt_path is required (`{EXPORT} --help` lists every flag)",
    ),
    "serve: an abbreviated flag": (
        lambda folder: ["serve", "--mod", "model.onnx"],
        f"unknown flag --mod: did you mean --model? `{SERVE} --help` lists every flag",
    ),
    "serve: an abbreviated flag with its value": (
        lambda folder: ["serve", "--model=model.onnx", "--run=torch"],
        f"unknown flag --run: did you mean --runtime? `{SERVE} --help` lists every flag",
    ),
    "serve: a misspelt flag": (
        lambda folder: ["serve", "--model=model.onnx", "--hots=0.0.0.0"],
        f"unknown flag --hots: did you mean --host? `{SERVE} --help` lists every flag",
    ),
    "serve: a bad value": (
        lambda folder: ["serve", "--model=model.onnx", "--port=http"],
        f"--port http: expected an integer (`{SERVE} --help` says what each flag takes)",
    ),
    "serve: no model": (
        lambda folder: ["serve", "--port=8000"],
        "pass either --ckpt_path CHECKPOINT or --model MODEL.onnx (one of them)",
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_a_flag_mistake_of_sweep_export_or_serve_is_one_line(
    case: str, workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_args, expected = CASES[case]
    args = make_args(workdir)
    before = sorted(workdir.rglob("*"))
    assert one_line_error(capsys, args, main=commands.main, alone=True) == f"error: {expected}"
    assert sorted(workdir.rglob("*")) == before, "nothing was written"


@pytest.mark.parametrize(
    ("command", "flags"),
    [
        ("sweep", ["--config", "--study", "--storage", "--n_trials", "--workers"]),
        ("export", ["--ckpt_path", "--output", "--overwrite", "--data_dir"]),
        ("serve", ["--ckpt_path", "--model", "--runtime", "--host", "--port"]),
    ],
)
def test_help_lists_every_flag(command: str, flags: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        commands.main([command, "--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert text.startswith(f"usage: python -m mnist_lightning {command} ")
    for flag in flags:
        assert flag in text


def test_sweep_help_wins_over_a_misspelling_and_says_where_the_other_flags_go(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        commands.main(["sweep", "--worker=2", "--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "reaches every trial: python -m mnist_lightning fit --help lists them" in text


@pytest.mark.parametrize(
    ("args", "own", "overrides"),
    [
        (["--config", "s.yaml", "--model.lr", "0.1"], ["--config", "s.yaml"], ["--model.lr", "0.1"]),
        (["--model.lr=0.1", "--config=s.yaml", "--workers=2"], ["--config=s.yaml", "--workers=2"], ["--model.lr=0.1"]),
        (["--n_trials", "-1", "--seed_everything", "3"], ["--n_trials", "-1"], ["--seed_everything", "3"]),
        (["--study", "--trainer.max_epochs=2"], ["--study"], ["--trainer.max_epochs=2"]),  # its value is missing
        (["--storage=a=b", "-h"], ["--storage=a=b", "-h"], []),
        (["--work", "2", "--config"], ["--config"], ["--work", "2"]),
    ],
)
def test_the_sweeps_own_flags_are_split_from_the_fit_overrides(
    args: list[str], own: list[str], overrides: list[str]
) -> None:
    assert split_sweep_args(args) == (own, overrides)


def test_an_abbreviation_is_taken_for_the_flag_it_abbreviates_before_a_close_spelling() -> None:
    flags = ["--model.lr", "--model.lr_warmup", "--trainer.max_epochs", "--workers"]
    assert closest_flag("--model.l", flags) == "--model.lr"
    assert closest_flag("--trainer.max_epoch", flags) == "--trainer.max_epochs"
    assert closest_flag("--wrokers", flags) == "--workers"
    assert closest_flag("--zzz", flags) is None


# --- YAML files: one wording, whoever reads the file --------------------------------------------------------------

BROKEN_FILES: dict[str, Callable[[Path], Path]] = {
    "missing": lambda folder: folder / "nope.yaml",
    "a folder": lambda folder: folder,
    "not a file": lambda folder: Path(os.devnull),
    "not YAML": lambda folder: write(folder / "run.yaml", BROKEN_YAML),
    "a list": lambda folder: write(folder / "run.yaml", "- model\n"),
}


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize("kind", BROKEN_FILES)
def test_a_broken_config_file_is_refused_in_the_same_words_by_jsonargparses_mapping_and_the_yaml_reader(
    kind: str, tmp_path: Path
) -> None:
    """`fit --config FILE` (jsonargparse reads the file; parse_error maps its complaint) and the sweep file (read by
    YamlFile) say the same of the same file."""
    path = BROKEN_FILES[kind](tmp_path)
    parser = ArgumentParser(prog="cmd", exit_on_error=False)
    parser.add_argument("--config", action=ActionConfigFile)
    parser.add_argument("--model", type=list[str], default=[])
    args = [f"--config={path}"]
    with pytest.raises(Exception) as jsonargparse_error:
        parser.parse_args(args)
    mapped = str(parse_error(jsonargparse_error.value, "cmd", {"--model": []}, args))
    with pytest.raises(ValueError) as read_error:
        YamlFile(f"--config {path}").mapping(path)
    if kind == "a list":  # jsonargparse gives its text, the reader what YAML made of it
        assert mapped == f"--config {path} holds '- model', not a YAML mapping of settings (model: ..., data: ..., ...)"
        assert str(read_error.value) == (
            f"--config {path} holds a list, ['model'], not a YAML mapping of settings (model: ..., data: ..., ...)"
        )
        return
    assert mapped == str(read_error.value)
    if kind == "not YAML":
        assert mapped == f"--config {path} is not valid YAML: {YAML_REASON}"


def test_a_yaml_file_that_is_not_text_or_a_pipe_is_one_line(tmp_path: Path) -> None:
    sweep_file = YamlFile("--config s.yaml", "sweep file", " (configs/sweep.yaml is an example)", "fit, ...")
    binary = tmp_path / "s.yaml"
    binary.write_bytes(bytes(range(128, 256)))
    with pytest.raises(ValueError, match=r"^--config s\.yaml is not text \(YAML\); pass a sweep file \(configs/"):
        sweep_file.read(binary)
    pipe = tmp_path / "pipe.yaml"
    os.mkfifo(pipe)
    with pytest.raises(ValueError, match=r"^--config s\.yaml: not a regular file; pass a sweep file"):
        sweep_file.read(pipe)  # not read: reading a pipe would wait for a writer
    empty = write(tmp_path / "empty.yaml", "")
    with pytest.raises(ValueError, match=r"^--config s\.yaml is empty, not a YAML mapping of fit, \.\.\. \(configs/"):
        sweep_file.mapping(empty)


def test_pyyamls_complaint_is_one_line_with_where() -> None:
    message = 'mapping values are not allowed here\n  in "<file>", line 1, column 5'
    assert yaml_reason(message) == "mapping values are not allowed here at line 1, column 5"
    message = 'unacceptable character #x0000: special characters are not allowed\n  in "<file>", position 3'
    assert yaml_reason(message) == "unacceptable character #x0000: special characters are not allowed"
