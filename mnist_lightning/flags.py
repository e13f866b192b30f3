"""Trainer flags that cannot work here, refused before anything runs, and Lightning's own refusals of a flag: each
one line that names the flag and the fix."""

from __future__ import annotations

import re
from typing import Any

import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException

from mnist_lightning import compat
from mnist_lightning.errors import ArgumentError, first_line

# The batches a subcommand cannot do without: at 0 it would run nothing, or test an untrained network.
NEEDED_BATCHES = {
    "fit": "limit_train_batches",
    "validate": "limit_val_batches",
    "test": "limit_test_batches",
    "predict": "limit_predict_batches",
}


def refuse_unworkable_flags(subcommand: str, config: Any) -> None:
    """Raise `ArgumentError` for a flag of `config` (one subcommand's parsed configuration) that cannot work."""
    trainer = config.trainer
    limit = NEEDED_BATCHES[subcommand]
    if getattr(trainer, limit) == 0:
        raise ArgumentError(f"--trainer.{limit} 0 leaves {subcommand} nothing to run: drop it, or give 1 or more")
    precision = str(trainer.precision)
    if precision.startswith("transformer-engine") and not torch.cuda.is_available():
        raise ArgumentError(
            f"--trainer.precision {precision} needs an NVIDIA GPU and the transformer_engine package: "
            "use bf16-mixed, 32-true or 64-true on this machine"
        )


def reconcile_flags_with_defaults(config: Any) -> None:
    """Keep Lightning's flags working beside this project's default callbacks (in `config`, one subcommand's)."""
    # Lightning refuses a progress bar callback with enable_progress_bar=False: silence the bar instead (refresh rate
    # 0 disables it).
    if config.trainer.enable_progress_bar is False:
        config.trainer.enable_progress_bar = True
        config.progress_bar.refresh_rate = 0
    if not config.trainer.logger:  # the learning-rate monitor has nowhere to log to
        config.trainer.callbacks = [
            callback
            for callback in config.trainer.callbacks or []
            if not getattr(callback, "class_path", "").endswith("LearningRateMonitor")
        ]


def lightnings_refusal(error: Exception) -> ArgumentError | None:
    """Lightning's refusal of a flag (a MisconfigurationException, or a ValueError or TypeError raised by its own
    checks: compat.raised_by_lightning) as one line with a hint; None for any other error."""
    if not isinstance(error, MisconfigurationException) and not compat.raised_by_lightning(error):
        return None
    message = " ".join(str(error).split())
    return ArgumentError(f"{message} ({hint_for(message)})")


def missing_package(error: BaseException) -> ArgumentError | None:
    """A class given on the command line (a logger, a progress bar) that needs a package which is not installed, as
    one line with the `pip install` that brings it (as compat names the texts that say so); None for any other error."""
    cause: BaseException | None = error
    while cause is not None and not isinstance(cause, ImportError):
        cause = cause.__cause__ or cause.__context__
    if cause is None:
        return None
    named = re.search(compat.CLASS_PATH, str(error))
    who = f"{named.group(1).rsplit('.', 1)[-1]} needs" if named else "this needs"
    hint = re.search(compat.PIP_INSTALL, str(cause))
    requirement = re.search(compat.REQUIREMENT_NOT_MET, str(cause))
    package = requirement.group(1) if requirement else cause.name or first_line(cause)
    return ArgumentError(
        f"{who} {package}, which is not installed: {hint.group(1) if hint else f'pip install {package}'}"
    )


def hint_for(message: str) -> str:
    if re.search(r"\bgpu\b|cuda|mps", message, re.IGNORECASE) and not torch.cuda.is_available():
        return "this machine has no GPU: use --trainer.accelerator cpu, or auto"
    return "a Trainer flag Lightning refused: `python -m mnist_lightning fit --help` lists each with its values"
