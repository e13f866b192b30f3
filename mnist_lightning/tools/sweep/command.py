"""`python -m mnist_lightning sweep`: search hyperparameters with Optuna, each trial a `fit` of this project's
LightningCLI in its own run folder, `lightning_logs/<study>/trial_NNNN/`.

    python -m mnist_lightning sweep --config configs/sweep.yaml [--study NAME] [--storage URL] [--n_trials N]
        [--workers W] [--model.* / --data.* / --trainer.* overrides for every trial]

The study lives in Optuna's journal file in the study folder (or in `--storage postgresql://...`, which workers on
several machines can share). Re-running the same command continues it: finished trials are kept, trials whose
process died become FAIL, and the total stops at `n_trials` COMPLETE or PRUNED trials.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import warnings
from pathlib import Path
from typing import Any

import optuna
from jsonargparse import ArgumentParser
from jsonargparse.typing import PositiveInt

from mnist_lightning import interrupts
from mnist_lightning.cli import build_cli
from mnist_lightning.errors import ArgumentError
from mnist_lightning.flag_errors import closest_flag, flag_parser, parse, unknown_flag
from mnist_lightning.runs.folders import runs_root
from mnist_lightning.tools.sweep.config import SweepConfig, check_keys, read_sweep_config, space_size
from mnist_lightning.tools.sweep.report import report
from mnist_lightning.tools.sweep.study import (
    CLAIMED,
    JOURNAL_FILE,
    STORAGE_HELP,
    Sweep,
    check_journal_path,
    check_storage,
    open_study,
    reap_dead_trials,
    shown_storage,
    unwritable,
)
from mnist_lightning.tools.sweep.worker import run_workers, silence_sweep_noise

COMMAND = "python -m mnist_lightning sweep"


def main(args: list[str]) -> None:
    """Run `python -m mnist_lightning sweep ARGS`."""
    silence_sweep_noise()
    sweep = parse_sweep(args)
    study = open_study(sweep, check_identity=True)
    # The same command resumes a stopped sweep: what the line a stopped command ends with says.
    interrupts.note_resume("(finished trials are kept, stopped ones are tried again)", f"{COMMAND} {shlex.join(args)}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)  # RDB storage: workers elsewhere that stopped beating; retried
    for number in reap_dead_trials(study):
        print(f"trial {number} was left RUNNING by a process that is gone: marked FAIL, its parameters queued again")
    claimed = len(study.get_trials(deepcopy=False, states=CLAIMED))
    storage = shown_storage(sweep.storage)
    print(f"Study {sweep.study_name}: {claimed} of {sweep.n_trials} trials done or running ({storage})")
    failed_workers: list[str] = []
    if claimed < sweep.n_trials:
        # No more workers than trials to run: each would start one, and the extra ones would not run.
        failed_workers = run_workers(sweep, min(sweep.workers, sweep.n_trials - claimed))
    for number in reap_dead_trials(study):
        print(f"trial {number} was left RUNNING by a worker that died: marked FAIL, its parameters queued again")
    report(study, sweep)
    for line in failed_workers:
        print(f"error: {line}; re-run the same command to finish the study", file=sys.stderr)
    if failed_workers:
        raise SystemExit(1)


OWN_FLAGS = ("config", "study", "storage", "n_trials", "workers")
# The top-level flags of `fit` (LightningCLI's and this project's), which no sweep flag's misspelling is taken for.
FIT_FLAGS = ("seed_everything", "ckpt_path", "test_after_fit", "print_config", "optimizer", "lr_scheduler")
CONFIG_REQUIRED = f"name the sweep file, e.g. {COMMAND} --config configs/sweep.yaml"


def sweep_parser() -> ArgumentParser:
    """The sweep's own flags (`OWN_FLAGS`), parsed as every command's are (`flag_errors.parse`)."""
    parser = flag_parser(
        COMMAND,
        "Search hyperparameters with Optuna, each trial a fit. Every other flag (--model.*, --data.*, --trainer.*, "
        "...) reaches every trial: python -m mnist_lightning fit --help lists them. docs/sweeps.md says more.",
    )
    parser.add_argument("--config", type=Path, required=True, help="the sweep file, e.g. configs/sweep.yaml")
    parser.add_argument("--study", type=str, default=None, help="study name (default: the sweep file's name)")
    parser.add_argument(
        "--storage",
        type=str,
        default=None,
        help="postgresql://USER:PASSWORD@HOST/DB, shared by machines, or a journal file's path (default: "
        f"lightning_logs/<study>/{JOURNAL_FILE})",
    )
    parser.add_argument(
        "--n_trials",
        type=PositiveInt,
        default=None,
        help="COMPLETE + PRUNED trials to reach (default: the sweep file's)",
    )
    parser.add_argument("--workers", type=PositiveInt, default=1, help="worker processes on this machine")
    return parser


def split_sweep_args(args: list[str]) -> tuple[list[str], list[str]]:
    """`args` as the sweep's own flags (and --help), each with its value (`--flag value` or `--flag=value`), and the
    rest, in order: the fit overrides. (jsonargparse, unlike argparse, has no parse_known_args that works.)"""
    own: list[str] = []
    overrides: list[str] = []
    i = 0
    while i < len(args):
        flag = args[i].split("=", 1)[0]
        if flag in ("-h", "--help"):
            own.append(args[i])
        elif flag in {f"--{name}" for name in OWN_FLAGS}:
            takes_next = "=" not in args[i] and i + 1 < len(args) and not args[i + 1].startswith("--")
            own += args[i : i + 1 + takes_next]  # `--n_trials -1`: its value, refused by the parser
            i += takes_next
        else:
            overrides.append(args[i])
        i += 1
    return own, overrides


def parse_sweep(args: list[str]) -> Sweep:
    """The sweep's own flags; every other flag is a fit override, checked by LightningCLI before any trial runs.
    Nothing is written until everything has been checked."""
    own_args, overrides = split_sweep_args(args)
    parser = sweep_parser()
    if "-h" in own_args or "--help" in own_args:
        parse(parser, own_args)  # the help, whatever else is wrong, as for every command
    refuse_misspelt_sweep_flags(overrides)
    own = parse(parser, own_args, fixes={"--config": CONFIG_REQUIRED})
    if own.study is not None and (not own.study or "/" in own.study or own.study.startswith(".")):
        raise ArgumentError(f"--study {own.study!r}: a study name must be a plain folder name, e.g. --study wide")
    if own.storage is not None and not own.storage.strip():
        raise ArgumentError(f"--storage is empty: {STORAGE_HELP}")
    config = read_sweep_config(own.config)
    searched = {p.key for p in config.space}
    for flag in overrides:
        key = flag.removeprefix("--").split("=", 1)[0]
        if flag.startswith("--") and key in searched:
            raise ArgumentError(
                f"--{key} is searched by {own.config}: drop the flag, or remove {key} from search_space"
            )
        if flag.startswith("--") and key == "ckpt_path":
            raise ArgumentError(CKPT_PATH_REFUSED)
    fit_args = ("fit", f"--config={config.fit}", *overrides)
    logs_root, fixed = check_fit_args(fit_args, config)
    n_trials = own.n_trials or config.n_trials
    size = space_size(config.space)
    if size is not None and size < n_trials:
        raise ArgumentError(
            f"n_trials {n_trials} is more than the {size} different parameter sets that search_space in "
            f"{own.config} holds: lower --n_trials to {size}, or widen the search space"
        )
    study_name = own.study or own.config.stem
    if study_name.startswith("."):  # a sweep file named `.yaml`
        raise ArgumentError(
            f"study name {study_name!r}, the sweep file's name, would be a hidden folder: pass --study NAME"
        )
    folder = logs_root / study_name
    problem = unwritable(folder)
    if problem:
        raise ArgumentError(
            f"the study's folder {folder} cannot be written: {problem}, or run the sweep elsewhere with "
            "--trainer.default_root_dir DIR"
        )
    storage = str(folder / JOURNAL_FILE) if own.storage is None else check_storage(own.storage)
    if "://" not in storage:
        check_journal_path(Path(storage))
    return Sweep(
        config=config,
        study_name=study_name,
        storage=storage,
        n_trials=n_trials,
        workers=own.workers,
        fit_args=fit_args,
        fixed=fixed,
        folder=folder,
    )


CKPT_PATH_REFUSED = (
    "ckpt_path: every trial of a sweep trains from scratch (a checkpoint's network would replace the searched "
    "values): drop --ckpt_path, or ckpt_path from the fit config"
)


def refuse_misspelt_sweep_flags(overrides: list[str]) -> None:
    """A flag that is not a fit setting but close to one of the sweep's own (--worker, --n_trial, --storge), or an
    abbreviation of one (--work, --n), is a misspelling of it, not a fit override for LightningCLI to call unknown."""
    for flag in overrides:
        if not flag.startswith("--"):
            continue
        key = flag.removeprefix("--").split("=", 1)[0]
        if "." in key or key in FIT_FLAGS or key in OWN_FLAGS:
            continue
        close = closest_flag(key.replace("-", "_"), OWN_FLAGS, cutoff=0.75)
        if close:
            raise unknown_flag(f"--{key}", f"--{close}", COMMAND)


def check_fit_args(fit_args: tuple[str, ...], config: SweepConfig) -> tuple[Path, dict[str, Any]]:
    """Parse the trials' fit arguments with both ends of every range and every choice, so that a mistake stops the
    sweep once, before any trial. Returns the folder the study's folder goes in (lightning_logs), and the settings
    every trial shares (`fixed_settings`)."""
    check = build_cli(list(fit_args), parse_only=True)  # a mistake in them is a UserError of one line
    fit = check.config.fit
    if fit.get("ckpt_path") is not None:
        raise ArgumentError(CKPT_PATH_REFUSED)
    searched = {p.key for p in config.space}
    if fit.trainer.max_epochs == 0 and "trainer.max_epochs" not in searched:
        raise ArgumentError("--trainer.max_epochs 0: the trials would not train at all; give them an epoch or more")
    no_validation = fit.trainer.limit_val_batches == 0 and "trainer.limit_val_batches" not in searched
    if no_validation and config.metric.startswith("val/"):
        raise ArgumentError(
            f"--trainer.limit_val_batches 0: the trials would never validate, and {config.metric} (metric: in "
            f"{config.path}) comes from validation; drop the flag"
        )
    check_keys(config.space, sorted(flatten(fit.as_dict())))
    rounds = max(len(p.extremes()) for p in config.space)
    for i in range(rounds):
        values = [p.flag(p.extremes()[min(i, len(p.extremes()) - 1)]) for p in config.space]
        try:
            check.parser.parse_args([*fit_args, *values])
        except argparse.ArgumentError as e:
            raise ArgumentError(f"search_space in {config.path}: {' '.join(str(e).split())}") from None
    return runs_root(fit.trainer), fixed_settings(fit.as_dict(), searched)


# Settings that change where or how visibly a trial runs, not what it finds.
INCIDENTAL = (
    "config",
    "data.data_dir",
    "data.num_workers",
    "trainer.default_root_dir",
    "trainer.logger",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "progress_bar.",
    "dashboard.",
)


def flatten(settings: dict[str, Any]) -> dict[str, Any]:
    """`{dotted key: value}` of a parsed fit config; a class with its arguments (`class_path`) is one value."""
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and "class_path" not in value:
            for key, inner in value.items():
                walk(f"{prefix}.{key}" if prefix else key, inner)
        else:
            flat[prefix] = value

    walk("", settings)
    return flat


def fixed_settings(fit: dict[str, Any], searched: set[str]) -> dict[str, Any]:
    """Every setting of the trials' fit that the sweep does not search, as `{dotted key: value}` of plain data: what
    the study records, so that a re-run with other settings is not mixed into it."""
    return {
        key: json.loads(json.dumps(value, default=str))
        for key, value in flatten(fit).items()
        if key not in searched and not key.startswith(INCIDENTAL)
    }
