"""Every input of `python -m mnist_lightning sweep` a user can get wrong, one case a row: the sweep file, the sweep's
own flags, the fit flags, `--storage` and the study's folder. Each is one line, `error: ...`, exit status 2, before
anything is written (tests/unit/test_sweep_config.py has the first cases of the search space)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from tests.helpers import REPO_ROOT, SWEEP, as_a_user, read_only_folder, sweep_error, write_sweep

BYTES = bytes(range(256)) * 4  # not text in any encoding YAML reads


def sweep_file(**changes: object) -> Callable[[Path], list[str]]:
    """A case: SWEEP with `changes` (a value None drops the section) as the sweep file."""

    def arguments(folder: Path) -> list[str]:
        content = {**SWEEP, **changes}
        path = folder / "sweep.yaml"
        path.write_text(yaml.safe_dump({k: v for k, v in content.items() if v is not None}, sort_keys=False))
        return [f"--config={path}"]

    return arguments


def raw_sweep_file(content: bytes | str, name: str = "sweep.yaml") -> Callable[[Path], list[str]]:
    """A case: a sweep file holding `content` as it is."""

    def arguments(folder: Path) -> list[str]:
        path = folder / name
        path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
        return [f"--config={path}"]

    return arguments


def fit_file(content: bytes | str | None) -> Callable[[Path], list[str]]:
    """A case: a sweep file whose `fit:` names fit.yaml holding `content` (None: no such file; "/": a folder)."""

    def arguments(folder: Path) -> list[str]:
        fit = folder / "fit.yaml"
        if content == "/":
            fit.mkdir()
        elif isinstance(content, bytes):
            fit.write_bytes(content)
        elif content is not None:
            fit.write_text(content)
        return [f"--config={write_sweep(folder, fit='fit.yaml')}"]

    return arguments


def space(**parameters: object) -> Callable[[Path], list[str]]:
    """A case: SWEEP with this search space (keys with `__` for dots)."""
    return sweep_file(search_space={key.replace("__", "."): value for key, value in parameters.items()})


def flags(*extra: str) -> Callable[[Path], list[str]]:
    """A case: the good SWEEP file, and these flags."""
    return lambda folder: [f"--config={write_sweep(folder)}", *extra]


def with_folder(setup: Callable[[Path], None], *extra: str) -> Callable[[Path], list[str]]:
    """A case: the good SWEEP file and these flags, after `setup(folder)`."""

    def arguments(folder: Path) -> list[str]:
        setup(folder)
        return [f"--config={write_sweep(folder)}", *extra]

    return arguments


def a_file(*parts: str) -> Callable[[Path], None]:
    def setup(folder: Path) -> None:
        path = folder.joinpath(*parts)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("a file\n")

    return setup


def a_folder(*parts: str) -> Callable[[Path], None]:
    return lambda folder: folder.joinpath(*parts).mkdir(parents=True)


CASES: dict[str, tuple[Callable[[Path], list[str]], list[str]]] = {
    # The sweep file
    "no --config": (lambda folder: [], ["--config is required: name the sweep file, e.g. python -m mnist_lightning"]),
    "missing sweep file": (
        lambda folder: [f"--config={folder / 'nope.yaml'}"],
        ["nope.yaml: no such file; pass a sweep file"],
    ),
    "sweep file is a folder": (lambda folder: [f"--config={folder}"], [": a folder, not a sweep file"]),
    "empty sweep file": (raw_sweep_file(""), ["sweep.yaml is empty, not a YAML mapping of fit, metric"]),
    "sweep file of plain text": (
        raw_sweep_file("hello world\n"),
        ["holds a str, 'hello world', not a YAML mapping of fit"],
    ),
    "sweep file of random bytes": (raw_sweep_file(BYTES), ["sweep.yaml is not text (YAML); pass a sweep file"]),
    "sweep file not YAML": (
        raw_sweep_file("fit: [fast.yaml\n"),
        [
            "sweep.yaml is not valid YAML: while parsing a flow sequence, did not find expected ',' or ']' at line 2, "
            "column 1"
        ],
    ),
    "sweep file a list": (raw_sweep_file("- fit\n- search_space\n"), ["holds a list, ['fit', 'search_space']"]),
    "a fit config as the sweep file": (
        lambda folder: [f"--config={REPO_ROOT / 'configs' / 'fast.yaml'}"],
        ["fast.yaml is a fit config (", "not a sweep file: name it in a sweep file's `fit:` section"],
    ),
    "misspelt section": (
        raw_sweep_file(yaml.safe_dump({**SWEEP, "serach_space": SWEEP["search_space"]})),
        ["unknown section 'serach_space': did you mean search_space?"],
    ),
    "no fit section": (sweep_file(fit=None), ["no `fit:` section: name the fit config the trials start from"]),
    "fit is a number": (sweep_file(fit=3), ["fit must name the fit config the trials start from", "got 3"]),
    "fit file missing": (fit_file(None), ["fit config", "fit.yaml does not exist (the path is relative to the sweep"]),
    "fit file empty": (fit_file(""), ["fit.yaml is empty, not a YAML mapping of fit settings"]),
    "fit file of random bytes": (fit_file(BYTES), ["fit.yaml is not text (YAML); pass a fit config"]),
    "fit file not YAML": (fit_file("model: {lr: 0.1\n"), ["fit.yaml is not valid YAML"]),
    "fit file a list": (
        fit_file("- model\n"),
        ["fit.yaml holds a list, ['model'], not a YAML mapping of fit settings"],
    ),
    "fit file a folder": (fit_file("/"), ["fit.yaml: a folder, not a fit config"]),
    "fit file with a wrong setting": (fit_file("model: {lr: fast}\n"), ["model.lr"]),
    "metric not a name": (sweep_file(metric=5), ["metric must name a logged metric (val/acc_best, val/loss, ...)"]),
    "direction misspelt": (sweep_file(direction="maximise"), ["direction must be maximize or minimize"]),
    "n_trials zero": (sweep_file(n_trials=0), ["n_trials must be a positive integer, got 0"]),
    "sampler not a mapping": (sweep_file(sampler=[42]), ["sampler must be a mapping of optuna arguments"]),
    "sampler argument misspelt": (
        sweep_file(sampler={"n_startup": 3}),
        ["sampler: ", "unexpected keyword argument 'n_startup'; see the arguments of optuna's TPESampler"],
    ),
    "sampler seed not a number": (sweep_file(sampler={"seed": "abc"}), ["sampler: ", "'abc'"]),
    "pruner argument misspelt": (sweep_file(pruner={"warmup": 1}), ["pruner: ", "MedianPruner"]),
    "empty search space": (sweep_file(search_space={}), ["search_space must map dotted keys to ranges"]),
    "a range not a mapping": (space(model__lr=0.1), ["search_space model.lr: give {low: ..., high: ...}"]),
    "range field misspelt": (space(model__lr={"lo": 0.1, "high": 1}), ["unknown field 'lo': did you mean low?"]),
    "choices and a range": (
        space(model__lr={"choices": [0.1], "low": 0.1}),
        ["model.lr: give either choices or a range"],
    ),
    "range without high": (space(model__lr={"low": 0.1}), ["model.lr: give both low and high (or choices)"]),
    "range end not a number": (space(model__lr={"low": "small", "high": 1}), ["low must be a number, got 'small'"]),
    "step zero": (space(model__lr={"low": 0.1, "high": 1, "step": 0}), ["model.lr: step must be above 0, got 0"]),
    "fractional step of an integer range": (
        space(data__batch_size={"low": 10, "high": 50, "step": 0.5}),
        ["an integer range (low 10, high 50) takes an integer step, got 0.5"],
    ),
    "log as text": (space(model__lr={"low": 0.1, "high": 1, "log": "false"}), ["log must be true or false"]),
    "log and step": (
        space(model__lr={"low": 0.1, "high": 1, "log": True, "step": 0.1}),
        ["either log or step, not both"],
    ),
    "repeated choice": (space(model__lr={"choices": [0.1, 0.1]}), ["choices [0.1, 0.1] repeat a value"]),
    "misspelt trainer key": (
        space(trainer__max_epoch={"low": 1, "high": 5}),
        ["search_space key trainer.max_epoch is not a fit setting: did you mean trainer.max_epochs?"],
    ),
    "fewer parameter sets than n_trials": (
        flags("--n_trials=5"),
        ["n_trials 5 is more than the 4 different parameter sets that search_space", "lower --n_trials to 4"],
    ),
    # The sweep's own flags
    "--workers 0": (flags("--workers=0"), ["--workers 0: expected a positive integer"]),
    "--n_trials -1": (flags("--n_trials", "-1"), ["--n_trials -1: expected a positive integer"]),
    "--n_trials not a number": (flags("--n_trials=abc"), ["--n_trials abc: expected a positive integer"]),
    "--n_trials without a value": (flags("--n_trials"), ["--n_trials needs a value: --n_trials VALUE"]),
    "--worker misspelt": (flags("--worker=2"), ["unknown flag --worker: did you mean --workers?"]),
    "--n-trials misspelt": (flags("--n-trials", "3"), ["unknown flag --n-trials: did you mean --n_trials?"]),
    "--storge misspelt": (flags("--storge=x"), ["unknown flag --storge: did you mean --storage?"]),
    "--work abbreviated": (flags("--work", "2"), ["unknown flag --work: did you mean --workers?"]),
    "--stu abbreviated": (flags("--stu=wide"), ["unknown flag --stu: did you mean --study?"]),
    "--conf abbreviated": (lambda folder: ["--conf", str(write_sweep(folder))], ["did you mean --config?"]),
    "empty --study": (flags("--study="), ["--study '': a study name must be a plain folder name"]),
    "--study a path": (flags("--study=a/b"), ["--study 'a/b': a study name must be a plain folder name"]),
    # Fit flags
    "fit flag of the wrong type": (flags("--trainer.max_epochs=many"), ["--trainer.max_epochs"]),
    "trials of no epochs": (flags("--trainer.max_epochs=0"), ["--trainer.max_epochs 0: the trials would not train"]),
    "trials that never validate": (
        flags("--trainer.limit_val_batches=0"),
        ["--trainer.limit_val_batches 0: the trials would never validate, and val/loss (metric: in"],
    ),
    "--ckpt_path": (flags("--ckpt_path=last.ckpt"), ["every trial of a sweep trains from scratch", "drop --ckpt_path"]),
    "ckpt_path in the fit config": (
        sweep_file(fit={**SWEEP["fit"], "ckpt_path": "last.ckpt"}),
        ["--ckpt_path last.ckpt: no such file"],  # (one that exists: "every trial of a sweep trains from scratch")
    ),
    # --storage
    "empty --storage": (flags("--storage="), ["--storage is empty: pass postgresql://USER:PASSWORD@HOST/DB"]),
    "unknown database kind": (flags("--storage=foo://bar/x"), ["--storage foo://bar/x: no database of kind 'foo'"]),
    "URL with one slash": (
        flags("--storage=postgresql:/host/db"),
        ["--storage postgresql:/host/db is not a database URL (scheme://...)"],
    ),
    "URL with a port not a number": (
        flags("--storage=postgresql://u:secret@host:port/db"),
        ["--storage postgresql://... is not a database URL"],
    ),
    "journal path a folder": (
        with_folder(a_folder("journal"), "--storage=journal"),
        ["journal journal is a folder: pass a new path, or the journal of a sweep"],
    ),
    "journal path under a file": (
        with_folder(a_file("afile"), "--storage=afile/journal.log"),
        ["journal afile/journal.log cannot be written: afile is a file, where a folder is needed: move it away"],
    ),
    "not a journal": (
        with_folder(a_file("notes.txt"), "--storage=notes.txt"),
        ["notes.txt is not an Optuna journal file, or is damaged (line 1: JSONDecodeError", "it was left as it was"],
    ),
    # The study's folder
    "study folder's parent a file": (
        with_folder(a_file("afile"), "--trainer.default_root_dir=afile"),
        ["the study's folder afile/lightning_logs/sweep cannot be written: afile is a file, where a folder is needed"],
    ),
    "study folder a file": (
        with_folder(a_file("lightning_logs", "sweep")),
        ["the study's folder lightning_logs/sweep cannot be written: lightning_logs/sweep is a file"],
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_a_users_mistake_is_one_line_and_nothing_is_written(
    case: str, workdir: Path, capsys: pytest.CaptureFixture
) -> None:
    make_arguments, expected = CASES[case]
    arguments = make_arguments(workdir)
    before = {path: path.read_bytes() if path.is_file() else None for path in workdir.rglob("*")}
    line = sweep_error(capsys, *arguments)
    for text in expected:
        assert text in line, line
    assert "secret" not in line, "a password is never printed"
    after = {path: path.read_bytes() if path.is_file() else None for path in workdir.rglob("*")}
    assert after == before, "nothing was written"


@pytest.mark.parametrize("where", ["study folder", "journal folder", "journal"])
def test_a_read_only_folder_or_journal_is_one_line(where: str, workdir: Path, capsys: pytest.CaptureFixture) -> None:
    (workdir / "ro").mkdir()
    config = write_sweep(workdir)
    if where == "journal":
        journal = workdir / "ro" / "journal.log"
        journal.write_bytes(b"")
        journal.chmod(0o444)
        with as_a_user():
            line = sweep_error(capsys, f"--config={config}", "--storage=ro/journal.log")
        assert "journal ro/journal.log cannot be written: it is read-only: make it writable (chmod u+rw)" in line
        assert journal.read_bytes() == b"" and os.listdir(workdir / "ro") == ["journal.log"]
        return
    flag = "--trainer.default_root_dir=ro" if where == "study folder" else "--storage=ro/journal.log"
    with read_only_folder(workdir / "ro"):
        line = sweep_error(capsys, f"--config={config}", flag)
    assert "cannot be written: the folder ro is read-only: make it writable" in line
    assert os.listdir(workdir / "ro") == []


def test_help_lists_the_sweeps_flags_and_says_where_the_others_are(capsys: pytest.CaptureFixture) -> None:
    from mnist_lightning.commands import main

    with pytest.raises(SystemExit) as exit_info:
        main(["sweep", "--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for flag in ("--config", "--study", "--storage", "--n_trials", "--workers"):
        assert flag in text
    assert "python -m mnist_lightning fit --help" in text
