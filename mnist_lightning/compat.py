"""Every private name and message text of another library that this project relies on, each with why, in one place.

Each entry has a test in tests/unit/test_compat.py that exercises the behaviour it relies on (not the library's
source text) and fails when an upgrade changes it. Nothing here imports a library at module level: the modules that
use an entry import what they need, and `serve --model x.onnx` starts without Lightning.
"""

from __future__ import annotations

from typing import Any

# Keys LightningCLI adds to a model's saved hyperparameters (`load_from_checkpoint` support), which are not
# constructor arguments: runs.checkpoints leaves them out when it rebuilds a model.
CLI_ENTRIES = ("_instantiator", "_class_path")

# The attribute Lightning sets on a LightningModule around every hook call (about 40 times per training step), which
# model.py lets past nn.Module's slow `__setattr__`.
CURRENT_HOOK = "_current_fx_name"


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


def stop_at_batch_end(trainer: Any) -> None:
    """Make a Trainer's loops stop at the end of the current batch, as they do after SIGTERM.

    Lightning's loops read `trainer.received_sigterm`, a property of its signal connector's private flag, with no
    public setter; its own SIGTERM handling deadlocks DDP processes that receive a signal at slightly different moments,
    so callbacks.stop sets the flag at a batch end that every process agreed on.
    """
    trainer._signal_connector.received_sigterm = True


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
