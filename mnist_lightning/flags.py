"""Trainer flags that cannot work here, refused before anything runs, and Lightning's own refusals of a flag: each
one line that names the flag and the fix."""

from __future__ import annotations

import re
import traceback
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException

from mnist_lightning.errors import ArgumentError

LIGHTNING_SOURCE = Path(L.__file__).parent

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


def lightnings_refusal(error: Exception) -> ArgumentError | None:
    """Lightning's refusal of a flag (a MisconfigurationException, or a ValueError or TypeError raised by its own
    checks) as one line with a hint; None for any other error."""
    frames = traceback.extract_tb(error.__traceback__)
    raised_by_lightning = bool(frames) and Path(frames[-1].filename).is_relative_to(LIGHTNING_SOURCE)
    if not isinstance(error, MisconfigurationException) and not raised_by_lightning:
        return None
    message = " ".join(str(error).split())
    return ArgumentError(f"{message} ({hint_for(message)})")


def hint_for(message: str) -> str:
    if re.search(r"\bgpu\b|cuda|mps", message, re.IGNORECASE) and not torch.cuda.is_available():
        return "this machine has no GPU: use --trainer.accelerator cpu, or auto"
    return "a Trainer flag Lightning refused: `python -m mnist_lightning fit --help` lists each with its values"
