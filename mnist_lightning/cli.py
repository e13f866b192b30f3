"""The command line: `python -m mnist_lightning {fit,validate,test,predict}`, a LightningCLI.

Every constructor argument of `MNISTClassifier`, `MNISTDataModule` and `Trainer` is a flag
(`--model.hidden_sizes`, `--data.batch_size`, `--trainer.max_epochs`), and `--config FILE.yaml` takes them from YAML.
The network's input and output sizes come from the data module's dataset (`link_arguments`), and a checkpoint's
dataset from the checkpoint. `build_cli` is the one way every command, sweep trial and benchmark builds it.
"""

from __future__ import annotations

import argparse
import inspect
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from jsonargparse import Namespace
from jsonargparse.typing import get_registered_type, register_type
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar, TQDMProgressBar
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_only

from mnist_lightning import compat
from mnist_lightning.callbacks.dashboard import Dashboard
from mnist_lightning.callbacks.last_checkpoint import LastCheckpoint
from mnist_lightning.callbacks.predictions import PredictionWriter
from mnist_lightning.callbacks.stop import StopOnSignal
from mnist_lightning.callbacks.threads import ThreadsFollowLoad
from mnist_lightning.compat import CLIInternals
from mnist_lightning.data.module import MNISTDataModule
from mnist_lightning.datasets import DEFAULT_DATASET
from mnist_lightning.defaults import NullProfiler, silence_third_party_noise, stop_probing_for_nvml_without_gpus
from mnist_lightning.errors import DEBUG_VARIABLE, ArgumentError
from mnist_lightning.flag_errors import YamlFile, parse_error
from mnist_lightning.flags import (
    lightnings_refusal,
    missing_package,
    reconcile_flags_with_defaults,
    refuse_unworkable_flags,
)
from mnist_lightning.model import MONITORED, MNISTClassifier
from mnist_lightning.runs import slurm
from mnist_lightning.runs.checkpoint_io import use_atomic_checkpoints
from mnist_lightning.runs.checkpoints import (
    LAST,
    dataset_to_use,
    model_settings,
    read_checkpoint,
    requeued_resume_point,
    resolve_checkpoint,
)
from mnist_lightning.runs.folders import (
    CONFIG_FILE,
    RunFolder,
    choose_run_folder,
    folder_logger,
    point_at,
    remove_if_unused,
    restore,
    runs_root,
)
from mnist_lightning.runs.summary import fit_summary

# Values of --ckpt_path that Lightning resolves itself rather than naming a file (`last` and `best` have become
# files by then: runs.checkpoints.resolve_checkpoint).
SPECIAL_CHECKPOINTS = ("hpc", "registry")

# jsonargparse cannot write a torch.device into config.yaml (StochasticWeightAveraging's `device` argument) unless
# told how.
if get_registered_type(torch.device) is None:
    register_type(torch.device, serializer=str, deserializer=torch.device)

DEFAULTS = {
    "checkpoint.monitor": MONITORED,
    "checkpoint.mode": "max",
    # The metric name has a slash, which must not become a folder: spell the label out (epoch17-val_acc0.9762).
    "checkpoint.filename": f"epoch{{epoch:02d}}-{MONITORED.replace('/', '_')}{{{MONITORED}:.4f}}",
    "checkpoint.auto_insert_metric_name": False,
    # Since Lightning 2.6, `save_last=True` rewrites last.ckpt only in epochs that improve the monitored metric;
    # resuming needs the latest state, so a second callback without a monitor saves each epoch.
    "last_checkpoint.filename": LAST,
    "last_checkpoint.monitor": None,
    "last_checkpoint.enable_version_counter": False,
    "last_checkpoint.save_on_exception": True,  # Ctrl-C, SIGTERM: keep the state of that moment
    # Redrawing the bar after every step costs more than a training step of this small network.
    "progress_bar.refresh_rate": 50,
    "trainer.max_epochs": 20,
    "trainer.profiler": {"class_path": f"{NullProfiler.__module__}.{NullProfiler.__qualname__}"},
    "trainer.logger": {
        "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
        "init_args": {"save_dir": ".", "default_hp_metric": False},
    },
    "trainer.callbacks": [
        {"class_path": "lightning.pytorch.callbacks.LearningRateMonitor", "init_args": {"logging_interval": "epoch"}}
    ],
}


class MNISTLightningCLI(CLIInternals, LightningCLI):
    """LightningCLI with this project's defaults, its run folders, checkpoints that know their dataset, and a test of
    the best checkpoint after `fit`.

    Args (beside LightningCLI's):
        run_folder: the run's folder, chosen by the caller (a sweep trial); by default one of its own.
        parse_only: parse and check the arguments, then stop (the sweep checks its trials' arguments so).
    """

    def __init__(self, *args: Any, run_folder: Path | None = None, parse_only: bool = False, **kwargs: Any) -> None:
        self.fixed_run_folder = run_folder
        self.parse_only = parse_only
        self.checkpoint: dict | None = None  # the --ckpt_path checkpoint, read once and checked
        self.run: RunFolder | None = None
        self.pointed: dict | None = None  # what point_at changed in the configuration, until restored
        self.job_step = slurm.current_step()
        self.summary = ""  # what `fit` ends with (cli_main prints it)
        self.only = named_subcommand(kwargs.get("args"))
        try:
            super().__init__(*args, **kwargs)
        except BaseException:
            if self.run is not None and not self.run.resumed:
                remove_if_unused(self.run.path)  # a run that failed before it had anything to keep leaves no folder
            raise

    def subcommands(self) -> dict[str, set[str]]:  # type: ignore[override]
        """LightningCLI's subcommands; only the one being run when the arguments start with its name. Lightning builds a
        parser for each (jsonargparse reads every Trainer argument's signature): building and parsing `fit` took 0.23 s
        of CPU alone against 0.45 s beside the three others (`python benchmarks/startup.py`, 2-core AMD EPYC)."""
        every = LightningCLI.subcommands()
        return {self.only: every[self.only]} if self.only in every else every

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--test_after_fit",
            type=bool,
            default=True,
            help="After fit, test the best checkpoint on the official test set (used by fit only).",
        )
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.add_lightning_class_args(LastCheckpoint, "last_checkpoint")
        parser.add_lightning_class_args(PredictionWriter, "predictions")
        parser.add_lightning_class_args(TQDMProgressBar, "progress_bar")
        parser.add_lightning_class_args(Dashboard, "dashboard")
        parser.set_defaults(DEFAULTS)
        parser.link_arguments("data.input_size", "model.input_size", apply_on="instantiate")
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.link_arguments("data.mean", "model.mean", apply_on="instantiate")
        parser.link_arguments("data.std", "model.std", apply_on="instantiate")

    def parse_arguments(self, parser: LightningArgumentParser, args: ArgsType) -> None:
        try:
            super().parse_arguments(parser, args)
        except UnicodeDecodeError:
            raise YamlFile("a --config file", example=" of a run or a preset").error("not text") from None
        except argparse.ArgumentError as e:  # build_cli asks jsonargparse to raise rather than print its usage
            given = args if isinstance(args, list) else sys.argv[1:] if args is None else []
            subcommand = self.only or next((arg for arg in given if arg in self.subcommands()), "fit")
            defaults = self.subcommand_parser(subcommand).get_defaults()
            flags = {f"--{key}": defaults[key] for key in defaults.keys()}  # noqa: SIM118 (a Namespace's values iterate)
            command = f"python -m mnist_lightning {subcommand}"
            raise parse_error(e, command, flags, given, settings_of=subcommand) from None
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        config = self.config[subcommand]
        root = runs_root(config.trainer)
        path, content = resolve_checkpoint(subcommand, config.get("ckpt_path"), root, last_file(config))
        if subcommand == "fit" and self.job_step and not self.fixed_run_folder:  # continue the job's earlier runs
            path, content = requeued_resume_point(path, content, root, self.job_step)
        config.ckpt_path = path
        if path is None or path in SPECIAL_CHECKPOINTS:
            # An image folder is its own dataset (data.folders): --data.dataset stays unset beside it.
            config.data.dataset = config.data.dataset or (None if config.data.get("image_folder") else DEFAULT_DATASET)
            return
        # Read once, and checked before Lightning restores from it (runs.checkpoint_io hands it this copy): missing,
        # truncated, unsafe to unpickle, of another dataset.
        self.checkpoint = content if content is not None else read_checkpoint(Path(path))
        config.data.dataset = dataset_to_use(self.checkpoint, path, asked=config.data.dataset)
        self._settle_model_settings(subcommand, config)

    def _settle_model_settings(self, subcommand: str, config: Namespace) -> None:
        """The model's settings from the checkpoint, but for what a resumed fit applies
        (runs.checkpoints.model_settings); each value given and not used is named in a note. (Lightning's own
        `_parse_ckpt_path` would read the checkpoint again and take every setting from it: compat.CLIInternals turns
        it off.)"""
        defaults = {name: p.default for name, p in inspect.signature(self.model_class).parameters.items()}
        given = config.model.as_dict()
        settings, notes = model_settings(self.checkpoint, given, defaults, resuming=subcommand == "fit")
        for name, value in settings.items():
            if name in given:
                config.model[name] = value
        if notes and rank_zero_only.rank == 0:
            print(f"note: {config.ckpt_path}: {'; '.join(notes)}", file=sys.stderr)

    def before_instantiate_classes(self) -> None:
        if self.parse_only:
            self.subcommand = None  # LightningCLI runs nothing without one
            return
        stop_probing_for_nvml_without_gpus()
        config = self.config[self.subcommand]
        refuse_unworkable_flags(self.subcommand, config)
        reconcile_flags_with_defaults(config)
        self._point_at_run_folder(config)

    def _point_at_run_folder(self, config: Any) -> None:
        """Choose the run's folder and point the Trainer at it (until after the instantiation)."""
        if config.trainer.fast_dev_run:  # Lightning swaps the logger for one that writes nothing
            return
        checkpoint = Path(config.ckpt_path) if self.checkpoint is not None else None
        resumed = checkpoint if self.subcommand == "fit" else None
        evaluation = (self.subcommand, checkpoint) if self.subcommand != "fit" and checkpoint else None
        # Only global rank 0 claims a fresh folder; the others follow the folder Lightning broadcasts from it.
        claim = rank_zero_only.rank == 0
        run = choose_run_folder(
            config.trainer,
            resume_from=resumed,
            fixed=self.fixed_run_folder,
            job_step=self.job_step,
            claim=claim,
            evaluation=evaluation,
        )
        if run is None:
            return
        if run.evaluation:
            self.save_config_kwargs["overwrite"] = True  # the same evaluation again: its config of this time
        if run.resumed:
            self.save_config_kwargs["overwrite"] = True  # the same run's config, now with its ckpt_path
            warnings.filterwarnings("ignore", message=compat.RESUMED_FOLDER_NOT_EMPTY)
            if resumed is not None and rank_zero_only.rank == 0:
                print(f"Resuming {run.path} from {config.ckpt_path}")
        elif (run.path / CONFIG_FILE).exists() and not self.save_config_kwargs.get("overwrite"):
            raise ArgumentError(
                f"run folder {run.path} holds another run: pass another --trainer.logger.init_args.version, or "
                f"resume that run with --ckpt_path {run.path / 'checkpoints' / last_file(config)}"
            )
        if "spawn" in str(config.trainer.strategy):
            # The test after fit spawns new processes with the callback's unsaved state: they write the config again.
            self.save_config_kwargs["overwrite"] = True
        self.run = run
        step = self.checkpoint["global_step"] if resumed is not None and folder_logger(config.trainer.logger) else None
        self.pointed = point_at(config.trainer, run, resumed_step=step)

    def instantiate_classes(self) -> None:
        if not self.parse_only:
            super().instantiate_classes()

    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        """The Trainer with this subcommand's callbacks: the prediction writer for predict only (Lightning calls
        every callback at every hook, ~6 per training step); the checkpoint callbacks for fit only, and only while
        checkpointing is on (Lightning refuses them with `--trainer.enable_checkpointing false`)."""
        # LightningCLI has no public way to leave out a callback configured by `add_lightning_class_args`: what its own
        # `instantiate_trainer` does, through compat.CLIInternals.
        config = {**self.configured("trainer", default={}), **kwargs}
        callbacks = [self.configured(key) for key in self.subcommand_parser(self.subcommand).callback_keys]
        callbacks = callbacks_for(self.subcommand, config, callbacks)
        return self.trainer_with(config, [*callbacks, StopOnSignal(), ThreadsFollowLoad()])

    def after_instantiate_classes(self) -> None:
        if self.parse_only:
            return
        super().after_instantiate_classes()
        if self.pointed is not None:  # config.yaml is written later, without the run folder: --config on it starts anew
            restore(self.config[self.subcommand].trainer, self.pointed)
            self.pointed = None
        # Checkpoints that survive kill -9 and a full disk; the one read already is not read again.
        read = None if self.checkpoint is None else (self.config[self.subcommand].ckpt_path, self.checkpoint)
        use_atomic_checkpoints(self.trainer.strategy, read)

    def after_predict(self) -> None:
        failures = self.datamodule.predict_failures
        for file, problem in failures:
            print(f"skipped {file}: {problem}", file=sys.stderr)
        if failures:
            raise SystemExit(1)  # the rest were predicted; the exit code says that some were not

    def after_fit(self) -> None:
        checkpoint = self.trainer.checkpoint_callback  # None with --trainer.enable_checkpointing false
        best_path = checkpoint.best_model_path if checkpoint else ""
        tested = bool(self.config.fit.test_after_fit)
        test_acc = None
        if tested and self.trainer.limit_test_batches != 0:
            # Without a best checkpoint (no validation ran, or no checkpoints are kept), the final weights are tested.
            results = self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=best_path or None)
            test_acc = results[0]["test/acc"]
        best_score = checkpoint.best_model_score if checkpoint else None
        best_val_acc = None if best_score is None else float(best_score)
        self.summary = fit_summary(self.trainer, best_path, best_val_acc, test_acc, tested=tested)


def last_file(config: Namespace) -> str:
    """The file name of the last checkpoint a subcommand's configuration `config` writes (last.ckpt by default)."""
    return f"{config.last_checkpoint.filename}{ModelCheckpoint.FILE_EXTENSION}"


def named_subcommand(args: ArgsType) -> str | None:
    """The subcommand `args` (or the command line) start with, or that a dict of them names; None when they start with
    a flag (`--config X fit`)."""
    if isinstance(args, (dict, Namespace)):
        return args.get("subcommand")
    given = sys.argv[1:] if args is None else list(args)
    return given[0] if given and not str(given[0]).startswith("-") else None


def callbacks_for(subcommand: str, trainer_config: dict[str, Any], callbacks: list[L.Callback]) -> list[L.Callback]:
    """Of the project's own `callbacks`, those that `subcommand` uses with the Trainer's `trainer_config` (which this
    sets to checkpoint nothing outside fit)."""
    if subcommand != "predict":
        callbacks = [cb for cb in callbacks if not isinstance(cb, PredictionWriter)]
    if subcommand != "fit":
        trainer_config["enable_checkpointing"] = False  # nor Lightning's default one: evaluating saves nothing
        # The checkpoint callbacks' saved states matter to a resumed fit only; evaluating needs none of them.
        warnings.filterwarnings("ignore", message=compat.EVALUATION_WITH_OTHER_CALLBACKS)
    if trainer_config.get("enable_checkpointing") is False:
        callbacks = [cb for cb in callbacks if not isinstance(cb, ModelCheckpoint)]
    if any(isinstance(cb, ProgressBar) for cb in trainer_config.get("callbacks") or []):  # the user's own (Rich...)
        callbacks = [cb for cb in callbacks if not isinstance(cb, TQDMProgressBar)]
    return callbacks


def build_cli(
    args: ArgsType = None, model_class: type[MNISTClassifier] = MNISTClassifier, **kwargs: Any
) -> MNISTLightningCLI:
    """The project's LightningCLI on `args` (default `sys.argv[1:]`; a list of strings or a dict), run.

    Errors the user can fix, Lightning's refusals of a flag among them, raise `UserError`; `kwargs` go to
    `MNISTLightningCLI` (`run_folder`, `parse_only`, and LightningCLI's own, e.g. `trainer_defaults`). `model_class`:
    a subclass of MNISTClassifier instead (the benchmarks time epochs so).
    """
    silence_third_party_noise()
    # Errors as one line, never 120 lines of usage first; the usage names the command a user types. An abbreviated
    # flag (--trainer.max_epoch) is refused with the flag it may mean, as a misspelt one is.
    parser_kwargs = {"exit_on_error": False, "allow_abbrev": False, "prog": "python -m mnist_lightning"}
    parser_kwargs |= kwargs.pop("parser_kwargs", {})
    try:
        return MNISTLightningCLI(
            model_class,
            MNISTDataModule,
            seed_everything_default=42,
            args=args,
            parser_kwargs=parser_kwargs,
            **kwargs,
        )
    except (MisconfigurationException, ValueError, TypeError, ImportError) as e:
        refusal = missing_package(e) or lightnings_refusal(e)
        if refusal is None or os.environ.get(DEBUG_VARIABLE):
            raise
        raise refusal from None


def cli_main(args: ArgsType = None) -> MNISTLightningCLI:
    """`python -m mnist_lightning {fit,validate,test,predict}`: `build_cli`, then the summary `fit` ends with.
    commands.main runs it inside the one-line errors and the signal handling, entered once per command."""
    cli = build_cli(args)
    if cli.summary and cli.trainer.is_global_zero:
        print(cli.summary)
    return cli
