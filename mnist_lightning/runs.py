"""Run folders and checkpoints: claiming `version_N` safely, checking a checkpoint before anything loads it, and
saving and resuming when a run stops early."""

from __future__ import annotations

import contextlib
import pickle
import re
import sys
import zipfile
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only

from mnist_lightning.errors import CheckpointError, UserError

# Hyperparameters that decide the shapes of the weights.
ARCHITECTURE = ("input_size", "hidden_sizes", "num_classes")


def claim_next_version(root: Path) -> int:
    """Create `root/version_N` for the lowest N above every existing one and return N.

    `mkdir` either creates the folder or fails, so two runs started at the same moment never share one.
    """
    root.mkdir(parents=True, exist_ok=True)
    while True:
        taken = [int(m.group(1)) for p in root.iterdir() if (m := re.fullmatch(r"version_(\d+)", p.name))]
        version = max(taken, default=-1) + 1
        try:
            (root / f"version_{version}").mkdir()
            return version
        except FileExistsError:
            continue


def run_version_of(checkpoint: Path, root: Path) -> int | None:
    """N when `checkpoint` lies in `root/version_N/checkpoints/`, else None."""
    folder = checkpoint.resolve().parent
    match = re.fullmatch(r"version_(\d+)", folder.parent.name)
    if folder.name == "checkpoints" and match and folder.parent.parent == root.resolve():
        return int(match.group(1))
    return None


def read_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint as plain data (`torch.load(weights_only=True)`): a pickle that would run code is refused.

    When it does not load, the error names the newest checkpoint beside it that does, and how to resume from that.
    """
    try:
        return _read_plain_checkpoint(path)
    except CheckpointError as e:
        alternative = newest_loadable_checkpoint(path.parent, besides=path)
        if alternative is None:
            raise
        config = path.parent.parent / "config.yaml"
        if config.is_file():
            hint = f"resume with: python -m mnist_lightning fit --config {config} --ckpt_path {alternative}"
        else:
            hint = f"pass --ckpt_path {alternative} instead"
        raise CheckpointError(f"{e}; the newest checkpoint of that run that loads is {alternative}: {hint}") from None


def newest_loadable_checkpoint(folder: Path, besides: Path | None = None) -> Path | None:
    """The most recently written `.ckpt` in `folder` (other than `besides`) that `read_checkpoint` accepts, or None."""
    candidates = [p for p in folder.glob("*.ckpt") if p.is_file() and p != besides]
    for candidate in sorted(candidates, key=lambda p: p.stat().st_mtime_ns, reverse=True):
        with contextlib.suppress(CheckpointError):
            _read_plain_checkpoint(candidate)
            return candidate
    return None


def _read_plain_checkpoint(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"--ckpt_path {path}: no such file")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        lines = [line.strip() for line in str(e).splitlines()]
        reason = next((line for line in lines if re.search(r"global|operand|load key", line, re.I)), lines[0])
        raise CheckpointError(
            f"--ckpt_path {path} was refused by torch.load(weights_only=True) ({reason}): it is not plain checkpoint "
            "data, and loading it without that restriction could run code from the file"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as e:
        raise CheckpointError(
            f"--ckpt_path {path} is not a complete checkpoint (truncated, or not written by torch.save): "
            f"{str(e).splitlines()[0]}"
        ) from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"--ckpt_path {path} is not a Lightning checkpoint (no state_dict)")
    return checkpoint


def log_root(trainer_config: Any) -> Path:
    """The folder that holds a configuration's runs: `save_dir/name` of its TensorBoard or CSV logger, else the
    Trainer's `default_root_dir` (where Lightning keeps checkpoints without a logger)."""
    logger = trainer_config.logger
    if isinstance(logger, list):
        logger = logger[0] if logger else None
    init_args = getattr(logger, "init_args", None)
    if init_args is not None and getattr(logger, "class_path", "").endswith(("TensorBoardLogger", "CSVLogger")):
        return Path(init_args.save_dir or ".") / (init_args.name or "")
    return Path(trainer_config.default_root_dir or ".")


def latest_checkpoints_folder(root: Path) -> Path | None:
    """The `checkpoints/` folder under `root` (a run's, or root's own) holding the most recently written checkpoint."""
    files = [*root.glob("checkpoints/*.ckpt"), *root.glob("*/checkpoints/*.ckpt")]
    return max(files, key=lambda file: file.stat().st_mtime).parent if files else None


def best_checkpoint(folder: Path) -> Path | None:
    """The best checkpoint in a run's `checkpoints/` folder: the only one besides last.ckpt, or, when several are
    kept (`--checkpoint.save_top_k`), the one the newest of them records as best."""
    kept = sorted((p for p in folder.glob("*.ckpt") if not p.name.startswith("last")), key=lambda p: p.stat().st_mtime)
    if len(kept) <= 1:
        return kept[0] if kept else None
    states = read_checkpoint(kept[-1]).get("callbacks", {})
    recorded = [Path(state["best_model_path"]).name for key, state in states.items() if key.startswith("ModelCheck")]
    return next((folder / name for name in recorded if (folder / name).is_file()), kept[-1])


def resolve_checkpoint(subcommand: str, ckpt_path: str | None, root: Path) -> str | None:
    """What `--ckpt_path` means here, as a file (or None for a fresh fit).

    `fit`: `last` resumes the most recent run under `root`. `validate`, `test`, `predict`: `last` is that run's
    last.ckpt, `best` or no `--ckpt_path` its best checkpoint; never the untrained weights of a new model.
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
    folder = latest_checkpoints_folder(root)
    which = "last" if ckpt_path == "last" else "best"
    found = None if folder is None else folder / "last.ckpt" if which == "last" else best_checkpoint(folder)
    if found is None or not found.is_file():
        given = f"--ckpt_path {ckpt_path}" if ckpt_path else "no --ckpt_path"
        raise CheckpointError(
            f"{subcommand} with {given}: no {which} checkpoint in {folder or root}: train one with "
            "`python -m mnist_lightning fit`, or pass --ckpt_path FILE"
        )
    if subcommand != "fit" and rank_zero_only.rank == 0:  # a resumed fit says "Resuming ..." itself
        print(f"Using the {which} checkpoint of the most recent run: {found}", file=sys.stderr)
    return str(found)


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


def run_folder(trainer: L.Trainer) -> Path:
    """The run's folder, as `trainer.log_dir` gives it but without its broadcast: safe to call on rank 0 alone.

    (`trainer.log_dir` is a collective call; made by one process of several, it waits for the others forever.)
    """
    if not trainer.loggers:
        return Path(trainer.default_root_dir)
    logger = trainer.loggers[0]
    if isinstance(logger, (TensorBoardLogger, CSVLogger)):
        return Path(logger.log_dir)
    return Path(logger.save_dir or trainer.default_root_dir)


def fit_summary(trainer: L.Trainer, best_path: str, best_val_acc: float | None, test_acc: float | None) -> str:
    """What `fit` prints at its end: the best checkpoint, the accuracies, the run folder and what to run next."""
    lines = [f"Best checkpoint   {best_path}" if best_path else "Best checkpoint   none: the final weights count"]
    if best_val_acc is not None:
        lines.append(f"  val accuracy    {best_val_acc:.4f}")
    tested = "not tested (--trainer.limit_test_batches 0)" if test_acc is None else f"{test_acc:.4f}"
    lines.append(f"Test accuracy     {tested}")
    logger = trainer.logger
    if isinstance(logger, (TensorBoardLogger, CSVLogger)):
        run = run_folder(trainer)
        lines.append(f"Run folder        {run}")
        if isinstance(logger, TensorBoardLogger):
            lines.append(f"TensorBoard       tensorboard --logdir {run.parent}")
        else:
            lines.append(f"Metrics           {Path(logger.experiment.metrics_file_path)}")
        if best_path:
            command = f"python -m mnist_lightning test --config {run / 'config.yaml'} --ckpt_path {best_path}"
            lines.append(f"Test it again     {command}")
    return "\n" + "\n".join(lines)


class LastCheckpoint(ModelCheckpoint):
    """ModelCheckpoint that also saves when `fit` stops early (Ctrl-C, SIGTERM, an error) and says how to resume,
    except on a mistake the user must fix first."""

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        # A diverged model's state is not worth resuming, and must not replace the last good last.ckpt; a UserError
        # explains itself.
        if isinstance(exception, UserError):
            return
        super().on_exception(trainer, pl_module, exception)
        # Before the first step there is nothing to resume.
        if not self.save_on_exception or trainer.global_step == 0 or trainer.state.fn != "fit":
            return
        if not trainer.is_global_zero:
            return
        checkpoint = self.format_checkpoint_name({})
        print(
            f"\nStopped by {type(exception).__name__} at epoch {trainer.current_epoch}, step {trainer.global_step}; "
            f"the state at this moment is saved to {checkpoint}.\nResume with: python -m mnist_lightning fit "
            f"--config {run_folder(trainer) / 'config.yaml'} --ckpt_path {checkpoint}",
            file=sys.stderr,
        )
