"""Errors a user can fix, and the one place that prints them: one line that names the problem and the fix."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

DEBUG_VARIABLE = "MNIST_LIGHTNING_DEBUG"


class UserError(Exception):
    """Base of the errors whose message is the whole story; no traceback is needed to act on it."""


class ArgumentError(UserError, ValueError):
    """An argument value that cannot work, caught before any training starts."""


class DataError(UserError, RuntimeError):
    """A problem with the dataset files."""


class CheckpointError(UserError, ValueError):
    """A checkpoint that is missing, unreadable, unsafe or made for another architecture."""


class TrainingDiverged(UserError, FloatingPointError):
    """The training loss stopped being a finite number."""


def first_line(error: BaseException) -> str:
    """The first line of an exception's message, or its type's name when it has none (an empty EOFError, say)."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


@contextmanager
def one_line_errors() -> Iterator[None]:
    """Print a `UserError` as `error: <message>` on a line of its own on stderr and exit with status 2; with
    `MNIST_LIGHTNING_DEBUG=1` the traceback instead. Every command of `python -m mnist_lightning` runs inside this."""
    try:
        yield
    except UserError as e:
        if os.environ.get(DEBUG_VARIABLE):
            raise
        # On a line of its own, after a progress bar too; in a distributed run each process says which it is.
        rank = global_rank()
        print(f"\n{f'[rank: {rank}] ' if rank else ''}error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def global_rank() -> int:
    """This process's rank in a distributed run (0 when it runs alone), from the variables its launcher set
    (Lightning's, torchrun's, SLURM's)."""
    for variable in ("RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        if os.environ.get(variable, "").isdigit():
            return int(os.environ[variable])
    return 0
