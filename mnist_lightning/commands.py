"""`python -m mnist_lightning COMMAND`: the LightningCLI subcommands (fit, validate, test, predict) and the commands
of their own beside them, each in its own module with a `main(args)`."""

from __future__ import annotations

import difflib
import importlib
import sys
from typing import Any

from mnist_lightning import interrupts, threads  # noqa: F401 (threads: its load meter starts now)
from mnist_lightning.errors import UserError, one_line_errors
from mnist_lightning.runs import slurm

# command: (module, what it does, the extra that installs what it needs)
COMMANDS = {
    "sweep": ("mnist_lightning.tools.sweep.command", "search hyperparameters with Optuna, each trial a fit", "sweep"),
    "export": ("mnist_lightning.tools.serving.export", "write a checkpoint as a self-checked ONNX model", "serve"),
    "serve": ("mnist_lightning.tools.serving.serve", "a web page and an HTTP API that read digits", "serve"),
}

LIGHTNING_SUBCOMMANDS = {
    "fit": "train, then test the best checkpoint",
    "validate": "evaluate a checkpoint on the validation split",
    "test": "evaluate a checkpoint on the official test set",
    "predict": "predict the test set, or your own images with --data.predict_path",
}

USAGE = "usage: python -m mnist_lightning COMMAND [FLAGS]\n\nLightning's subcommands and the commands beside them "
USAGE += "(python -m mnist_lightning COMMAND --help lists every flag):\n"


def main(args: list[str] | None = None) -> Any:
    """Run `python -m mnist_lightning` with `args` (default `sys.argv[1:]`), inside the one-line errors (set
    MNIST_LIGHTNING_DEBUG=1 for tracebacks) and the handling of Ctrl-C, SIGTERM and SLURM's requeue signal, which
    every command is run in, once. Returns what the command returns (the LightningCLI for fit, ...)."""
    given = args
    args = sys.argv[1:] if args is None else list(args)
    if not args or args[0] in ("-h", "--help"):
        abouts = {**LIGHTNING_SUBCOMMANDS, **{name: about for name, (_, about, _) in COMMANDS.items()}}
        print(USAGE + "".join(f"  {name:<9}  {about}\n" for name, about in abouts.items()), end="")
        raise SystemExit(0 if args else 2)
    if args[0] not in (*LIGHTNING_SUBCOMMANDS, *COMMANDS) and not args[0].startswith("-"):
        with one_line_errors():
            known = [*LIGHTNING_SUBCOMMANDS, *COMMANDS]
            close = difflib.get_close_matches(args[0], known, n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            raise UserError(f"no command {args[0]!r}: {hint}the commands are {', '.join(known)}")
    # Ctrl-C during the imports below (several seconds of them) ends with one line too, once they are done.
    with one_line_errors(), slurm.signals_handled():
        if args[0] not in COMMANDS:
            with interrupts.deferred():
                from mnist_lightning.cli import cli_main  # Lightning's import is the slow part of start-up
            return cli_main(given)  # None: LightningCLI reads sys.argv itself, and warns when given both
        module_name, _, extra = COMMANDS[args[0]]
        try:
            with interrupts.deferred():
                module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name is None or e.name.startswith("mnist_lightning"):
                raise
            raise UserError(
                f"`{args[0]}` needs {e.name}, which is not installed: pip install 'mnist-lightning[{extra}]'"
            ) from None
        return module.main(args[1:])
