"""Every private name and message text of another library that this project relies on, each with why, in one place.

Each entry has a test in tests/integration/test_compat.py that makes the library do what the entry relies on (not a
look at the library's source text) and fails when an upgrade changes it. Nothing here imports a library at module
level: the modules that use an entry import what they need, and `serve --model x.onnx` starts without Lightning
(flag_errors, which `serve` uses, takes its patterns from here).
"""

from __future__ import annotations

from typing import Any

# --- Private names and behaviours ---------------------------------------------------------------------------------

# Keys LightningCLI adds to a model's saved hyperparameters (`load_from_checkpoint` support), which are not
# constructor arguments: runs.checkpoints leaves them out when it rebuilds a model.
CLI_ENTRIES = ("_instantiator", "_class_path")

# The attribute Lightning sets on a LightningModule around every hook call (about 40 times per training step), which
# model.py lets past nn.Module's slow `__setattr__`.
CURRENT_HOOK = "_current_fx_name"


# Relied on without a name: under SLURM, Lightning installs its requeue handler for SIGUSR1 only where none is in
# place. interrupts.py handles SLURM's SIGUSR1 itself (a stop at a batch end, a save, the requeue), before any Trainer
# runs; Lightning's handler would save an hpc checkpoint from inside the handler, mid-step, and requeue the job itself.


class CLIInternals:
    """LightningCLI's private methods that this project's CLI needs, as a mixin in front of LightningCLI.

    LightningCLI has no public way to: build a subcommand's callbacks and Trainer while leaving out a callback that
    `add_lightning_class_args` configured (`_get`, `_parser`, `_instantiate_trainer`, which its own
    `instantiate_trainer` calls); list a subcommand's flags for "did you mean" (`_parser`); or keep `_parse_ckpt_path`
    from reading the `--ckpt_path` checkpoint a second time and replacing every model setting with the checkpoint's
    (cli.py reads it once and decides per setting: runs.checkpoints.model_settings).
    """

    def _parse_ckpt_path(self) -> None:
        """Does nothing: cli.py applies a checkpoint's model settings itself."""

    def subcommand_parser(self, subcommand: str) -> Any:
        """The parser of `subcommand` (LightningCLI's `_parser`)."""
        return self._parser(subcommand)  # type: ignore[attr-defined]

    def configured(self, key: str, default: Any = None) -> Any:
        """The instantiated value of `key` in this subcommand's configuration (LightningCLI's `_get`)."""
        return self._get(self.config_init, key, default=default)  # type: ignore[attr-defined]

    def trainer_with(self, config: dict[str, Any], callbacks: list[Any]) -> Any:
        """The Trainer of `config` with exactly `callbacks` beside those of `--trainer.callbacks`
        (LightningCLI's `_instantiate_trainer`)."""
        return self._instantiate_trainer(config, callbacks)  # type: ignore[attr-defined]


def stop_at_batch_end(trainer: Any) -> None:
    """Make a Trainer's loops stop at the end of the current batch, as they do after SIGTERM.

    Lightning's loops read `trainer.received_sigterm`, a property of its signal connector's private flag, with no
    public setter; its own SIGTERM handling deadlocks DDP processes that receive a signal at slightly different moments,
    so callbacks.stop sets the flag at a batch end that every process agreed on.
    """
    trainer._signal_connector.received_sigterm = True


def raised_by_lightning(error: BaseException) -> bool:
    """Whether `error` was raised by Lightning's own code (its last frame is in the `lightning` package).

    Lightning refuses a Trainer flag it cannot use (`--trainer.strategy nope`, `--trainer.devices -5`) with a
    ValueError or TypeError from its own checks, not only with MisconfigurationException; flags.lightnings_refusal
    shows those as one line, and any other ValueError or TypeError, a bug, with its traceback.
    """
    import traceback
    from pathlib import Path

    import lightning

    frames = traceback.extract_tb(error.__traceback__)
    return bool(frames) and Path(frames[-1].filename).is_relative_to(Path(lightning.__file__).parent)


def numpy_reconstruct() -> Any:
    """numpy's `_reconstruct`, the name by which pickled arrays rebuild themselves: data.sources allows it (and
    nothing else of numpy's) when it unpickles MNIST's registry copy. It moved from numpy.core to numpy._core in
    NumPy 2."""
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # NumPy 1
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


def tensorboard_file_writer(writer: Any) -> Any:
    """A torch SummaryWriter's event-file writer (`file_writer`, public in name but undocumented): the dashboard adds
    the hparams summary through it, as `SummaryWriter.add_hparams` does, without the sub-run add_hparams makes."""
    return writer.file_writer


# --- Message texts -------------------------------------------------------------------------------------------------

# Message texts of Lightning's, by what the project does with them. Warnings (regular expressions, for
# warnings.filterwarnings): Lightning's note that a resumed run's checkpoint folder is not empty (it is the run's own);
# that an evaluation's checkpoint was written with other callbacks (only a resumed fit needs their states); that
# LightningCLI is given args while sys.argv holds others (a sweep's trials); that `srun` exists but is not used (on
# any machine with SLURM installed, where slurm/fit.sbatch runs fits under srun); and a deprecation inside Lightning,
# printed twice per fit with torch 2.14.
RESUMED_FOLDER_NOT_EMPTY = r"Checkpoint directory .* exists and is not empty"
EVALUATION_WITH_OTHER_CALLBACKS = r"Be aware that when using `ckpt_path`, callbacks used to create"
CLI_ARGS_BESIDE_ARGV = r"LightningCLI's args parameter is intended"
SRUN_NOT_USED = r"The `srun` command is available on your system but is not used"
TREESPEC_DEPRECATION = r"`isinstance\(treespec, LeafSpec\)` is deprecated"
# Log records the project says better itself (defaults.is_not_noise drops a record that holds one): Lightning's
# adverts; its signal connector's notes of a signal and of SLURM requeueing (interrupts.py ends the command with one
# line that says what happened); ModelCheckpoint's note of the checkpoint it saved when a run stopped
# ("An <error> was raised with message: ..."; callbacks.last_checkpoint says where and how to resume).
NOISE = ("💡 Tip", "Received SIGTERM", "Bypassing SIGTERM", "SLURM auto-requeueing enabled")
SAVED_ON_EXCEPTION = ("An ", "was raised with message")
# The loggers that write those records.
NOISY_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch.trainer.connectors.signal_connector")

# jsonargparse's and argparse's complaints about a command line or a --config file (the text of the
# argparse.ArgumentError that parsers made with `exit_on_error=False` raise), which flag_errors.parse_error turns into
# one line that names the flag or file and the fix; a complaint that no pattern fits is shown as it is (`... lists every
# flag`). Regular expressions, each used as its comment says.
# re.match: the setting whose value jsonargparse refused (`Parser key "trainer.max_epochs":`, then why, indented).
PARSER_KEY = r'Parser key "([^"]+)":'
# The two kinds of --config path that is not a file to read; re.search, CONFIG_PATH: which, and the path.
MISSING_FILE = "File does not exist"
NOT_A_FILE = "Path is not a file"  # a folder, /dev/null, a pipe
CONFIG_PATH = rf"({MISSING_FILE}|{NOT_A_FILE}): '([^']*)'"
# re.search: the value refused, as a union type's complaint ends (`Given value: x`) or another's (`. Got value: x`).
GIVEN_VALUE = r"(?:Given value|Got value): (.*)"
# re.findall: the kinds of value a flag expected, each a pair of which one is empty: a type (`<class 'int'>`), a choice
# (LITERAL, then the choices as a Python literal), a class (CLASS_KIND), or one of jsonargparse.typing's restricted
# types (`Not of type PositiveInt`; flag_errors.RESTRICTED says each in words).
LITERAL = "typing.Literal"
CLASS_KIND = "dot import path"
KIND = r"Expected an? (<class '\w+'>|typing\.Literal\[[^\]]*\]|" + CLASS_KIND + r")|Not of type (\w+)"
# re.match: a flag the parser does not have (jsonargparse's spelling and argparse's).
UNRECOGNIZED = r"[Uu]nrecognized arguments: (\S+)"
# re.search: a --config file's key the subcommand does not have (`Subcommand 'fit' does not accept option 'modle.lr'`).
NOT_ACCEPTED = r"does not accept option '([^']+)'"
# re.match (argparse's): the required flags left out, comma-separated, and a flag given without its value.
REQUIRED = r"the following arguments are required: (.+)"
NO_VALUE = r"argument (--[\w.]+): expected one argument"
# str.startswith: a --config file that is not valid YAML (PyYAML's complaint follows `: `), and one that holds no
# mapping (what it holds follows the first `:`).
INVALID_CONFIG = "Problems parsing config"
NOT_A_MAPPING = "Unexpected config"
# PyYAML's marks in its complaints (`while parsing ...\n  in "<file>", line 2, column 17\ndid not find ...`), by which
# flag_errors.yaml_reason puts one on one line: re.split on YAML_MARK, and re.findall of YAML_LINE_COLUMN for where.
YAML_MARK = r'in "[^"]*", (?:line \d+, column \d+|position \d+):?'
YAML_LINE_COLUMN = r"line \d+, column \d+"

# A class given on the command line whose package is missing (a logger, a progress bar), by which flags.missing_package
# names it and the `pip install` that brings it (re.search each): jsonargparse's `Problem with given class_path
# 'lightning.pytorch.loggers.WandbLogger'`, and in the ImportError under it, Lightning's (lightning_utilities')
# `Requirement 'wandb>=0.12.10' not met. HINT: Try running `pip install -U 'wandb>=0.12.10'``.
CLASS_PATH = r"class_path '([\w.]+)'"
REQUIREMENT_NOT_MET = r"Requirement '([^']+)' not met"
PIP_INSTALL = r"`(pip install [^`]+)`"
