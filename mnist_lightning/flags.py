"""Trainer flags that Lightning accepts but that cannot do what they say here: refused before anything runs, each
with one line that names the flag and the fix. (Lightning's own refusals are printed the same way by `cli_main`.)"""

from __future__ import annotations

from typing import Any

import torch

from mnist_lightning.errors import ArgumentError

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
