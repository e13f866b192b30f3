"""Checkpoints: reading one safely before anything loads it, what it records (its dataset, its network, its score),
and what `--ckpt_path last`, `best` or nothing mean."""

from __future__ import annotations

import inspect
import pickle
import re
import sys
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_only

from mnist_lightning.data.module import MNISTDataModule
from mnist_lightning.datasets import DEFAULT_DATASET, DatasetSpec, dataset_of_record, get_dataset
from mnist_lightning.errors import CheckpointError
from mnist_lightning.model import MNISTClassifier
from mnist_lightning.runs.folders import CONFIG_FILE, command_on, run_of_checkpoint
from mnist_lightning.runs.slurm import JobStep

# Hyperparameters that decide the shapes of the weights.
ARCHITECTURE = ("input_size", "hidden_sizes", "num_classes")
DATAMODULE_STATE = MNISTDataModule.__qualname__  # where Lightning saves a data module's state_dict()
# What a checkpoint of MNISTClassifier may hold as hyperparameters (LightningCLI adds the last two).
MODEL_PARAMETERS = {*inspect.signature(MNISTClassifier).parameters, "_instantiator", "_class_path"}
FIT_COMMAND = "`python -m mnist_lightning fit`"


def read_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint as plain data (`torch.load(weights_only=True)`): a pickle that would run code is refused.

    When it does not load, the error names the newest checkpoint beside it that does, and how to resume from that.
    """
    try:
        return _read_plain_checkpoint(path)
    except CheckpointError as e:
        alternative = newest_loadable_checkpoint(path.parent, besides=path) if path.parent.is_dir() else None
        if alternative is None:
            raise
        run = run_of_checkpoint(path)
        if run is not None and (run / CONFIG_FILE).is_file():
            hint = f"resume with: {command_on('fit', run, alternative)}"
        else:
            hint = f"pass --ckpt_path {alternative} instead"
        raise CheckpointError(f"{e}; the newest checkpoint beside it that loads is {alternative}: {hint}") from None


def loads(path: Path) -> bool:
    """Whether `read_checkpoint` would accept `path`."""
    try:
        _read_plain_checkpoint(path)
    except CheckpointError:
        return False
    return True


def newest_loadable_checkpoint(folder: Path, besides: Path | None = None) -> Path | None:
    """The most recently written `.ckpt` in `folder` (other than `besides`) that `read_checkpoint` accepts, or None."""
    candidates = [p for p in _checkpoints_in(folder) if p != besides]
    return next((candidate for candidate in candidates if loads(candidate)), None)


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


def dataset_of(checkpoint: dict[str, Any], source: str, note_assumed: bool = False) -> DatasetSpec:
    """The dataset a checkpoint's network was trained on, with the classes and normalization it was trained with.

    Checkpoints record it in the data module's state; those of earlier versions of this project only by name, and the
    first ones not at all (then MNIST, said in a note on stderr when `note_assumed`).
    """
    facts = checkpoint.get(DATAMODULE_STATE, {}).get("dataset")
    if facts is not None:
        return dataset_of_record(facts, source)
    name = (checkpoint.get("datamodule_hyper_parameters") or {}).get("dataset")
    spec = get_dataset(name or DEFAULT_DATASET)
    if name is None and note_assumed:
        print(
            f"note: {source} does not record its dataset (an earlier version wrote it): taken as {spec.name}, with "
            "its classes and normalization",
            file=sys.stderr,
        )
    return spec


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
    """The validation accuracy of the checkpoint's weights, as its `val/acc` ModelCheckpoint recorded it."""
    for name, state in checkpoint.get("callbacks", {}).items():
        if name.startswith("ModelCheckpoint") and state.get("monitor") == "val/acc":
            score = state.get("current_score")
            if score is not None:
                return float(score)
    return None


def architecture_differences(checkpoint: dict[str, Any], hparams: dict[str, Any]) -> list[str]:
    """`name: checkpoint value vs this run's value` for each architecture hyperparameter that differs."""
    saved = checkpoint.get("hyper_parameters", {})
    return [
        f"{name}={_plain(saved[name])} in the checkpoint, {_plain(hparams[name])} here"
        for name in ARCHITECTURE
        if name in saved and name in hparams and _plain(saved[name]) != _plain(hparams[name])
    ]


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, (list, tuple)) else value


def best_checkpoint(folder: Path) -> Path | None:
    """The best checkpoint in a run's `checkpoints/` folder that loads: the only one besides last.ckpt, or, when
    several are kept (`--checkpoint.save_top_k`), the one the newest of them records as best."""
    kept = [p for p in _checkpoints_in(folder) if not p.name.startswith("last") and loads(p)]
    if len(kept) <= 1:
        return kept[0] if kept else None
    states = read_checkpoint(kept[0]).get("callbacks", {})
    recorded = [Path(state["best_model_path"]).name for key, state in states.items() if key.startswith("ModelCheck")]
    return next((folder / name for name in recorded if folder / name in kept), kept[0])


def last_checkpoint(folder: Path) -> Path | None:
    """A run's `checkpoints/last.ckpt`, if it loads."""
    last = folder / "last.ckpt"
    return last if last.is_file() and loads(last) else None


def runs_by_recency(root: Path) -> list[Path]:
    """The `checkpoints/` folders of the runs under `root`, the one with the most recently written checkpoint first."""
    newest = {}
    for file in root.glob("*/checkpoints/*.ckpt"):
        newest[file.parent] = max(newest.get(file.parent, 0), file.stat().st_mtime_ns)
    return sorted(newest, key=newest.__getitem__, reverse=True)


def requeued_resume_point(ckpt_path: str | None, root: Path, job_step: JobStep) -> str | None:
    """What a `fit` in a SLURM job step resumes from: the newest checkpoint of its run that loads, when the job's
    earlier runs (before it was requeued) left one newer than `ckpt_path`; else `ckpt_path`."""
    run = run_of_checkpoint(Path(ckpt_path)) if ckpt_path else root / job_step.folder_name
    newest = newest_loadable_checkpoint(run / "checkpoints") if run is not None and run.is_dir() else None
    if newest is None:
        return ckpt_path
    if ckpt_path and Path(ckpt_path).is_file() and Path(ckpt_path).stat().st_mtime_ns >= newest.stat().st_mtime_ns:
        return ckpt_path
    return str(newest)


def resolve_checkpoint(subcommand: str, ckpt_path: str | None, root: Path) -> str | None:
    """What `--ckpt_path` means here, as a file (or None for a fresh fit).

    `fit`: `last` resumes the most recent run under `root` that has a last.ckpt. `validate`, `test`, `predict`: `last`
    is the newest run's last.ckpt, `best` or no `--ckpt_path` its best checkpoint (of the newest run that has one
    that loads); never the untrained weights of a new model.
    """
    if subcommand == "fit":
        if ckpt_path == "best":
            raise CheckpointError(
                "fit --ckpt_path best: resuming needs the latest state, not the best: pass --ckpt_path last or a file"
            )
        if ckpt_path != "last":
            return ckpt_path
    elif ckpt_path not in (None, "best", "last"):
        return ckpt_path
    which = "last" if ckpt_path == "last" else "best"
    find = last_checkpoint if which == "last" else best_checkpoint
    found = next((file for folder in runs_by_recency(root) if (file := find(folder)) is not None), None)
    if found is None:
        given = f"--ckpt_path {ckpt_path}" if ckpt_path else "no --ckpt_path"
        raise CheckpointError(
            f"{subcommand} with {given}: no run under {root} has a {which} checkpoint that loads: train one with "
            f"{FIT_COMMAND}, or pass --ckpt_path FILE"
        )
    if subcommand != "fit" and rank_zero_only.rank == 0:  # a resumed fit says "Resuming ..." itself
        print(f"Using the {which} checkpoint of the most recent run that has one: {found}", file=sys.stderr)
    return str(found)
