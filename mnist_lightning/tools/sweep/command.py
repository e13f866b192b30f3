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

from mnist_lightning import interrupts
from mnist_lightning.cli import build_cli
from mnist_lightning.errors import ArgumentError
from mnist_lightning.runs.folders import runs_root
from mnist_lightning.tools.sweep.config import SweepConfig, check_keys, read_sweep_config
from mnist_lightning.tools.sweep.report import report
from mnist_lightning.tools.sweep.study import CLAIMED, JOURNAL_FILE, Sweep, database_url, open_study, reap_dead_trials
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
    print(f"Study {sweep.study_name}: {claimed} of {sweep.n_trials} trials done or running ({sweep.storage})")
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


def parse_sweep(args: list[str]) -> Sweep:
    """The sweep's own flags; every other flag is a fit override, checked by LightningCLI before any trial runs."""
    parser = argparse.ArgumentParser(
        prog="python -m mnist_lightning sweep",
        allow_abbrev=False,
        description="Search hyperparameters with Optuna; any --model.*, --data.*, --trainer.* flag reaches every "
        "trial.",
    )
    parser.add_argument("--config", required=True, type=Path, help="the sweep file, e.g. configs/sweep.yaml")
    parser.add_argument("--study", help="study name (default: the sweep file's name)")
    parser.add_argument("--storage", help="postgresql://USER@HOST/DB (default: a journal file in the study folder)")
    parser.add_argument("--n_trials", type=int, help="COMPLETE + PRUNED trials to reach (default: the sweep file's)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes on this machine (default 1)")
    own, overrides = parser.parse_known_args(args)
    if own.workers < 1 or (own.n_trials is not None and own.n_trials < 1):
        raise ArgumentError("--workers and --n_trials must be positive integers")
    config = read_sweep_config(own.config)
    searched = {p.key for p in config.space}
    for flag in overrides:
        key = flag.removeprefix("--").split("=", 1)[0]
        if flag.startswith("--") and key in searched:
            raise ArgumentError(
                f"--{key} is searched by {own.config}: drop the flag, or remove {key} from search_space"
            )
    fit_args = ("fit", f"--config={config.fit}", *overrides)
    logs_root, fixed = check_fit_args(fit_args, config)
    study_name = own.study or own.config.stem
    if not study_name or "/" in study_name or study_name.startswith("."):
        raise ArgumentError(f"--study {study_name!r}: a study name must be a plain folder name")
    folder = logs_root / study_name
    return Sweep(
        config=config,
        study_name=study_name,
        storage=database_url(own.storage) if own.storage else str(folder / JOURNAL_FILE),
        n_trials=own.n_trials or config.n_trials,
        workers=own.workers,
        fit_args=fit_args,
        fixed=fixed,
        folder=folder,
    )


def check_fit_args(fit_args: tuple[str, ...], config: SweepConfig) -> tuple[Path, dict[str, Any]]:
    """Parse the trials' fit arguments with both ends of every range and every choice, so that a mistake stops the
    sweep once, before any trial. Returns the folder the study's folder goes in (lightning_logs), and the settings
    every trial shares (`fixed_settings`)."""
    check = build_cli(list(fit_args), parse_only=True)  # a mistake in them is a UserError of one line
    fit = check.config.fit
    check_keys(config.space, [f"{section}.{key}" for section in ("model", "data") for key in fit[section].as_dict()])
    rounds = max(len(p.extremes()) for p in config.space)
    for i in range(rounds):
        values = [p.flag(p.extremes()[min(i, len(p.extremes()) - 1)]) for p in config.space]
        try:
            check.parser.parse_args([*fit_args, *values])
        except argparse.ArgumentError as e:
            raise ArgumentError(f"search_space in {config.path}: {' '.join(str(e).split())}") from None
    return runs_root(fit.trainer), fixed_settings(fit.as_dict(), {p.key for p in config.space})


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


def fixed_settings(fit: dict[str, Any], searched: set[str]) -> dict[str, Any]:
    """Every setting of the trials' fit that the sweep does not search, as `{dotted key: value}` of plain data: what
    the study records, so that a re-run with other settings is not mixed into it."""
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and "class_path" not in value:
            for key, inner in value.items():
                walk(f"{prefix}.{key}" if prefix else key, inner)
        elif prefix not in searched and not prefix.startswith(INCIDENTAL):
            flat[prefix] = json.loads(json.dumps(value, default=str))

    walk("", fit)
    return flat
