"""Checkpoints: reading one safely before anything loads it, what it records (its dataset, its network, its score),
and what `--ckpt_path last`, `best` or nothing mean."""

from __future__ import annotations

import inspect
import pickle
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_only

from mnist_lightning.compat import CLI_ENTRIES
from mnist_lightning.data.module import MNISTDataModule
from mnist_lightning.datasets import DatasetSpec, dataset_of_record
from mnist_lightning.errors import CheckpointError, first_line
from mnist_lightning.model import MONITORED, MNISTClassifier
from mnist_lightning.runs.folders import CONFIG_FILE, command_on, run_of_checkpoint
from mnist_lightning.runs.slurm import JobStep

# What a resumed fit takes from the command line when given: how it goes on training. Everything else continues as
# the checkpoint recorded it: the trained network (the shapes of its weights, what its inputs mean), and the
# optimizer and schedule whose states the checkpoint holds.
APPLIED_ON_RESUME = ("lr", "weight_decay", "dropout", "label_smoothing")
DATAMODULE_STATE = MNISTDataModule.__qualname__  # where Lightning saves a data module's state_dict()
# What a checkpoint of MNISTClassifier may hold as hyperparameters, LightningCLI's own entries among them.
MODEL_PARAMETERS = {*inspect.signature(MNISTClassifier).parameters, *CLI_ENTRIES}
FIT_COMMAND = "`python -m mnist_lightning fit`"
WRITTEN_BY_FIT = f"use a checkpoint written by this project's {FIT_COMMAND}"
LAST = "last"  # the name of a run's latest state (callbacks.last_checkpoint.LastCheckpoint writes it)
LAST_FILE = f"{LAST}{ModelCheckpoint.FILE_EXTENSION}"  # what `--ckpt_path last` looks for, unless told otherwise


def read_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint as plain data (`torch.load(weights_only=True)`): a pickle that would run code is refused.

    When it does not load, the error names the newest checkpoint beside it that does, and how to resume from that.
    """
    try:
        return _read_plain_checkpoint(path)
    except CheckpointError as e:
        found = newest_loadable_checkpoint(path.parent, besides=path) if path.parent.is_dir() else None
        if found is None:
            raise
        alternative = found.path
        run = run_of_checkpoint(path)
        if run is not None and (run / CONFIG_FILE).is_file():
            hint = f"resume with: {command_on('fit', run, alternative)}"
        else:
            hint = f"pass --ckpt_path {alternative} instead"
        raise CheckpointError(f"{e}; the newest checkpoint beside it that loads is {alternative}: {hint}") from None


def newest_loadable_checkpoint(folder: Path, besides: Path | None = None) -> Found | None:
    """The most recently written `.ckpt` in `folder` (other than `besides`) that `read_checkpoint` accepts, read."""
    candidates = (p for p in _checkpoints_in(folder) if p != besides)
    return next((found for candidate in candidates if (found := _found(candidate)) is not None), None)


def _checkpoints_in(folder: Path) -> list[Path]:
    """The `.ckpt` files in `folder`, newest first."""
    return sorted((p for p in folder.glob("*.ckpt") if p.is_file()), key=lambda p: p.stat().st_mtime_ns, reverse=True)


def _read_plain_checkpoint(path: Path) -> dict[str, Any]:
    if path.is_dir():
        raise CheckpointError(f"--ckpt_path {path} is a folder: pass a .ckpt file in it (in a run: checkpoints/*.ckpt)")
    if not path.is_file():
        raise CheckpointError(f"--ckpt_path {path}: no such file")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except PermissionError as e:
        raise CheckpointError(f"--ckpt_path {path} cannot be read ({e.strerror}): make it readable") from None
    except Exception as e:  # torch.load fails on a broken file with nearly any exception type
        code = re.search(r"unsupported GLOBAL (\S+)", str(e))
        if isinstance(e, pickle.UnpicklingError) and code:
            raise CheckpointError(
                f"--ckpt_path {path} was refused by torch.load(weights_only=True): it would call {code.group(1)}, "
                "and loading it without that restriction could run code from the file; use checkpoints you made"
            ) from None
        what = "an empty file (0 bytes)" if path.stat().st_size == 0 else "not a complete checkpoint"
        raise CheckpointError(
            f"--ckpt_path {path} is {what}: it was truncated, or not written by torch.save; use another checkpoint"
        ) from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"--ckpt_path {path} is not a Lightning checkpoint (no state_dict)")
    foreign = sorted(set(checkpoint.get("hyper_parameters") or {}) - MODEL_PARAMETERS)
    if foreign:
        raise CheckpointError(
            f"--ckpt_path {path} is not a checkpoint of this project's MNISTClassifier (it has hyperparameters "
            f"{', '.join(foreign)}): use one written by `python -m mnist_lightning fit`"
        )
    return checkpoint


def dataset_of(checkpoint: dict[str, Any], source: str) -> DatasetSpec:
    """The dataset a checkpoint's network was trained on, with the image shape and classes it was trained with, as
    the data module's state records it."""
    facts = checkpoint.get(DATAMODULE_STATE, {}).get("dataset")
    if facts is None:
        raise CheckpointError(f"{source} does not record its dataset: use a checkpoint written by {FIT_COMMAND}")
    return dataset_of_record(facts, source)


def dataset_to_use(checkpoint: dict[str, Any], ckpt_path: str, asked: str | None) -> str:
    """The dataset a command on `checkpoint` uses: the checkpoint's; `asked` (--data.dataset), if given, must agree."""
    trained_on = dataset_of(checkpoint, f"--ckpt_path {ckpt_path}").name
    if asked not in (None, trained_on):
        raise CheckpointError(
            f"--ckpt_path {ckpt_path} was trained on {trained_on}, not --data.dataset {asked}: leave --data.dataset "
            "out (the checkpoint's dataset is used), or pass a checkpoint of that dataset"
        )
    return trained_on


def val_accuracy_of(checkpoint: dict[str, Any]) -> float | None:
    """The validation accuracy of the checkpoint's weights, as its ModelCheckpoint monitoring `MONITORED` recorded
    it."""
    for name, state in checkpoint.get("callbacks", {}).items():
        if name.startswith("ModelCheckpoint") and state.get("monitor") == MONITORED:
            score = state.get("current_score")
            if score is not None:
                return float(score)
    return None


def hyperparameters_of(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The model's constructor arguments a checkpoint records (without LightningCLI's `_instantiator` and
    `_class_path` entries)."""
    return {k: v for k, v in (checkpoint.get("hyper_parameters") or {}).items() if k not in CLI_ENTRIES}


def model_settings(
    checkpoint: dict[str, Any], given: dict[str, Any], defaults: dict[str, Any], resuming: bool
) -> tuple[dict[str, Any], list[str]]:
    """The model's settings for a command on `checkpoint`, and a note for each value given that it does not use.

    The trained network's settings (`TRAINED`) come from the checkpoint. A resumed fit (`resuming`) trains on with
    the values given for `APPLIED_ON_RESUME` (a new learning rate, say), when they differ from the defaults
    (`defaults`); every other setting continues as the checkpoint recorded it. `given`: this command's parsed model
    settings. docs/flags.md lists which is which.
    """
    saved = hyperparameters_of(checkpoint)
    settings, notes = {}, []
    constant_lr = saved.get("lr_schedule", "constant") == "constant"
    for name, value in saved.items():
        if name not in given:  # set from the data module (input_size, num_classes, mean, std): the checkpoint's
            settings[name] = value
            continue
        wanted = _plain(given[name])
        chosen = resuming and name in APPLIED_ON_RESUME and wanted != _plain(defaults.get(name))
        if chosen and name in ("lr", "weight_decay") and not constant_lr:
            chosen = False  # the schedule's state continues from the checkpoint and sets the learning rate itself
        if chosen:
            settings[name] = given[name]
            if wanted != _plain(value):
                notes.append(f"{name}={wanted} applied (the checkpoint trained with {_plain(value)})")
            continue
        settings[name] = value
        if wanted != _plain(value) and wanted != _plain(defaults.get(name)):
            notes.append(f"{name}={_plain(value)} from the checkpoint, not {wanted}")
    return settings, notes


def model_from_checkpoint(checkpoint: dict[str, Any], source: str) -> MNISTClassifier:
    """The trained model a checkpoint holds, in eval mode (dropout off, batch norm on its running statistics), built
    from its hyperparameters: how `export`, `serve` and `predict` outside Lightning get it."""
    try:
        model = MNISTClassifier(**hyperparameters_of(checkpoint))
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{source} does not fit MNISTClassifier ({first_line(e)}): {WRITTEN_BY_FIT}") from None
    try:
        model.load_state_dict(checkpoint["state_dict"])
    except CheckpointError as e:  # the model's own wording of weights that do not fit it
        raise CheckpointError(f"{source} does not fit MNISTClassifier: {e}") from None
    return model.eval()


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, (list, tuple)) else value


def best_checkpoint(folder: Path, last_file: str) -> Found | None:
    """The best checkpoint in a run's `checkpoints/` folder that loads, read: the newest besides `last_file`, or, when
    several are kept (`--checkpoint.save_top_k`), the one it records as best."""
    for candidate in (p for p in _checkpoints_in(folder) if p.name != last_file):
        if (found := _found(candidate)) is None:
            continue
        states = found.content.get("callbacks", {})
        recorded = [
            Path(state.get("best_model_path") or "").name
            for key, state in states.items()
            if key.startswith("ModelCheck")
        ]
        best = next(
            (folder / name for name in recorded if name and name != candidate.name and (folder / name).is_file()), None
        )
        return (_found(best) if best is not None else None) or found
    return None


def last_checkpoint(folder: Path, last_file: str) -> Found | None:
    """A run's last checkpoint (`checkpoints/<last_file>`), read, if it loads."""
    return _found(folder / last_file) if (folder / last_file).is_file() else None


@dataclass(frozen=True)
class Found:
    """A checkpoint found by `--ckpt_path last` or `best`, read once: its path and its content."""

    path: Path
    content: dict[str, Any]


def _found(path: Path) -> Found | None:
    try:
        return Found(path, _read_plain_checkpoint(path))
    except CheckpointError:
        return None


def runs_by_recency(root: Path) -> list[Path]:
    """The `checkpoints/` folders of the runs under `root`, the one with the most recently written checkpoint first."""
    newest = {}
    for file in root.glob("*/checkpoints/*.ckpt"):
        newest[file.parent] = max(newest.get(file.parent, 0), file.stat().st_mtime_ns)
    return sorted(newest, key=newest.__getitem__, reverse=True)


def requeued_resume_point(
    ckpt_path: str | None, content: dict[str, Any] | None, root: Path, job_step: JobStep
) -> tuple[str | None, dict[str, Any] | None]:
    """What a `fit` in a SLURM job step resumes from (its path, and its content when read here): the newest checkpoint
    of its run that loads, when the job's earlier runs (before it was requeued) left one newer than `ckpt_path`; else
    `ckpt_path` (and its `content`, as given)."""
    run = run_of_checkpoint(Path(ckpt_path)) if ckpt_path else root / job_step.folder_name
    given = Path(ckpt_path) if ckpt_path else None
    newest = (
        newest_loadable_checkpoint(run / "checkpoints", besides=given) if run is not None and run.is_dir() else None
    )
    if newest is None or (
        given is not None and given.is_file() and given.stat().st_mtime_ns >= newest.path.stat().st_mtime_ns
    ):
        return ckpt_path, content
    return str(newest.path), newest.content


def resolve_checkpoint(
    subcommand: str, ckpt_path: str | None, root: Path, last_file: str = LAST_FILE
) -> tuple[str | None, dict[str, Any] | None]:
    """What `--ckpt_path` means here, as a file (None for a fresh fit), and its content when finding it read it.

    `fit`: `last` resumes the most recent run under `root` that has a last checkpoint (`last_file`, the name the
    last-checkpoint callback writes). `validate`, `test`, `predict`: `last` is the newest run's last checkpoint, `best`
    or no `--ckpt_path` its best checkpoint (of the newest run that has one that loads); never the untrained weights
    of a new model.
    """
    if subcommand == "fit":
        if ckpt_path == "best":
            raise CheckpointError(
                "fit --ckpt_path best: resuming needs the latest state, not the best: pass --ckpt_path last or a file"
            )
        if ckpt_path != "last":
            return ckpt_path, None
    elif ckpt_path not in (None, "best", "last"):
        return ckpt_path, None
    which = "last" if ckpt_path == "last" else "best"
    find = last_checkpoint if which == "last" else best_checkpoint
    found = next((file for folder in runs_by_recency(root) if (file := find(folder, last_file)) is not None), None)
    if found is None:
        given = f"--ckpt_path {ckpt_path}" if ckpt_path else "no --ckpt_path"
        raise CheckpointError(
            f"{subcommand} with {given}: no run under {root} has a {which} checkpoint that loads: train one with "
            f"{FIT_COMMAND}, or pass --ckpt_path FILE"
        )
    if subcommand != "fit" and rank_zero_only.rank == 0:  # a resumed fit says "Resuming ..." itself
        print(f"Using the {which} checkpoint of the most recent run that has one: {found.path}", file=sys.stderr)
    return str(found.path), found.content
