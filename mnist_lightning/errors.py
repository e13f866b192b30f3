"""Errors a user can fix. The command line prints each as one line that names the problem and the fix."""

from __future__ import annotations


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
