"""The command line: `python -m mnist_lightning {fit,validate,test,predict}`, a LightningCLI.

Every constructor argument of `MNISTClassifier`, `MNISTDataModule` and `Trainer` is a flag
(`--model.hidden_sizes`, `--data.batch_size`, `--trainer.max_epochs`), and `--config FILE.yaml` takes them from YAML.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import traceback
import warnings
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import lightning as L
import torch
from jsonargparse.typing import get_registered_type, register_type
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.profilers import PassThroughProfiler
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException

from mnist_lightning.checkpoint_io import use_atomic_checkpoints
from mnist_lightning.data import MNISTDataModule
from mnist_lightning.errors import DEBUG_VARIABLE, ArgumentError, one_line_errors
from mnist_lightning.flags import refuse_unworkable_flags
from mnist_lightning.model import MNISTClassifier
from mnist_lightning.predictions import PredictionWriter
from mnist_lightning.runs import (
    LastCheckpoint,
    architecture_differences,
    claim_next_version,
    fit_summary,
    log_root,
    read_checkpoint,
    resolve_checkpoint,
    run_version_of,
)
from mnist_lightning.visuals import Dashboard

# Values of --ckpt_path that Lightning resolves itself rather than naming a file (`last` and `best` have become
# files by then: runs.resolve_checkpoint).
SPECIAL_CHECKPOINTS = ("hpc", "registry")
LIGHTNING_SOURCE = Path(L.__file__).parent

# jsonargparse cannot write a torch.device into config.yaml (StochasticWeightAveraging's `device` argument) unless
# told how.
if get_registered_type(torch.device) is None:
    register_type(torch.device, serializer=str, deserializer=torch.device)


class MNISTLightningCLI(LightningCLI):
    """LightningCLI with the defaults this project's users expect, and a test of the best checkpoint after `fit`."""

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
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/acc",
                "checkpoint.mode": "max",
                # The metric name has a slash, which must not become a folder: spell the label out.
                "checkpoint.filename": "epoch{epoch:02d}-val_acc{val/acc:.4f}",
                "checkpoint.auto_insert_metric_name": False,
                # Since Lightning 2.6, `save_last=True` rewrites last.ckpt only in epochs that improve the monitored
                # metric; resuming needs the latest state, so a second callback without a monitor saves each epoch.
                "last_checkpoint.filename": "last",
                "last_checkpoint.monitor": None,
                "last_checkpoint.enable_version_counter": False,
                "last_checkpoint.save_on_exception": True,  # Ctrl-C, SIGTERM: keep the state of that moment
                # Redrawing the bar after every step costs more than a training step of this small network.
                "progress_bar.refresh_rate": 50,
                "trainer.max_epochs": 20,
                "trainer.profiler": {"class_path": "mnist_lightning.cli.NullProfiler"},
                "trainer.logger": {
                    "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                    "init_args": {"save_dir": ".", "default_hp_metric": False},
                },
                "trainer.callbacks": [
                    {
                        "class_path": "lightning.pytorch.callbacks.LearningRateMonitor",
                        "init_args": {"logging_interval": "epoch"},
                    }
                ],
            }
        )

    def before_instantiate_classes(self) -> None:
        stop_probing_for_nvml_without_gpus()
        config = self.config[self.subcommand]
        refuse_unworkable_flags(self.subcommand, config)
        # Lightning refuses a progress bar callback with enable_progress_bar=False; keep that flag working by
        # silencing the bar instead (refresh rate 0 disables it).
        if config.trainer.enable_progress_bar is False:
            config.trainer.enable_progress_bar = True
            config.progress_bar.refresh_rate = 0
        if not config.trainer.logger:  # the learning-rate monitor has nowhere to log to
            config.trainer.callbacks = [
                callback
                for callback in config.trainer.callbacks or []
                if not getattr(callback, "class_path", "").endswith("LearningRateMonitor")
            ]
        self._choose_run_folder(config)

    def _choose_run_folder(self, config) -> None:
        """Claim a fresh `version_N`, or continue the run a resumed checkpoint belongs to (its curves too).

        The choice is applied to the logger after instantiation, so that the saved config.yaml stays free of it and
        `--config <run>/config.yaml` starts a new run.
        """
        self.run_version = self.purge_step = None
        if config.trainer.fast_dev_run:  # Lightning swaps the logger for one that writes nothing
            return
        logger = config.trainer.logger
        if not (hasattr(logger, "class_path") and logger.class_path.endswith(("TensorBoardLogger", "CSVLogger"))):
            return
        if logger.init_args.version is not None:
            return
        root = Path(logger.init_args.save_dir) / logger.init_args.name
        ckpt_path = config.get("ckpt_path")
        resumed = run_version_of(Path(ckpt_path), root) if self.subcommand == "fit" and ckpt_path else None
        if resumed is not None:  # every process agrees on this from the command line alone
            self.run_version = resumed
            if logger.class_path.endswith("TensorBoardLogger"):
                # Events the run logged after this checkpoint are dropped from the curves, which then continue.
                self.purge_step = self.checkpoint["global_step"]
            self.save_config_kwargs["overwrite"] = True  # the same run's config, now with its ckpt_path
            warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
            if rank_zero_only.rank == 0:
                print(f"Resuming {root / f'version_{resumed}'} from {ckpt_path}")
            return
        if "spawn" in str(config.trainer.strategy):
            # The test after fit spawns new processes with the callback's unsaved state: they write the config again.
            self.save_config_kwargs["overwrite"] = True
        # A fresh folder is claimed by the global rank-0 process only; the others follow the folder Lightning
        # broadcasts from it.
        if rank_zero_only.rank != 0 or os.environ.get("NODE_RANK", "0") != "0":
            return
        try:
            self.run_version = claim_next_version(root)
        except OSError as e:
            raise ArgumentError(
                f"log folder {root} is not writable ({e.strerror}): run from a writable folder or pass "
                "--trainer.logger.init_args.save_dir DIR"
            ) from None

    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        """The Trainer with this subcommand's callbacks: the prediction writer for predict only (Lightning calls
        every callback at every hook, ~6 per training step); the checkpoint callbacks for fit only, and only while
        checkpointing is on (Lightning refuses them with `--trainer.enable_checkpointing false`)."""
        config = {**self._get(self.config_init, "trainer", default={}), **kwargs}
        callbacks = [self._get(self.config_init, key) for key in self._parser(self.subcommand).callback_keys]
        if self.subcommand != "predict":
            callbacks = [cb for cb in callbacks if not isinstance(cb, PredictionWriter)]
        if self.subcommand != "fit":
            config["enable_checkpointing"] = False  # nor Lightning's default one: evaluating saves nothing
            # The checkpoint callbacks' saved states matter to a resumed fit only; evaluating needs none of them.
            warnings.filterwarnings("ignore", message="Be aware that when using `ckpt_path`, callbacks used to create")
        if config.get("enable_checkpointing") is False:
            callbacks = [cb for cb in callbacks if not isinstance(cb, ModelCheckpoint)]
        return self._instantiate_trainer(config, callbacks)

    def after_instantiate_classes(self) -> None:
        super().after_instantiate_classes()
        use_atomic_checkpoints(self.trainer.strategy)  # checkpoints that survive kill -9 and a full disk
        # (With --trainer.fast_dev_run, Lightning has swapped the configured logger for a dummy that logs nothing.)
        if self.run_version is None or not isinstance(self.trainer.logger, (TensorBoardLogger, CSVLogger)):
            return
        init_args = self.config[self.subcommand].trainer.logger.init_args.as_dict()
        init_args["version"] = self.run_version
        if self.purge_step is not None:
            init_args["purge_step"] = self.purge_step
        self.trainer.logger = type(self.trainer.logger)(**init_args)

    def parse_arguments(self, parser: LightningArgumentParser, args: ArgsType) -> None:
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        if subcommand:
            config = self.config[subcommand]
            config.ckpt_path = resolve_checkpoint(subcommand, config.get("ckpt_path"), log_root(config.trainer))
        self._check_checkpoint()

    def _check_checkpoint(self) -> None:
        """Refuse a checkpoint that is missing, truncated or unsafe to unpickle, before Lightning reads it.

        Lightning builds the model from the checkpoint's own hyperparameters, whatever the config says; when
        they differ, say so rather than silently train or test another network than the one asked for.
        """
        self.checkpoint: dict | None = None  # kept for _choose_run_folder, which needs its step when resuming
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if ckpt_path is None or ckpt_path in SPECIAL_CHECKPOINTS:
            return
        self.checkpoint = read_checkpoint(Path(ckpt_path))
        differences = architecture_differences(self.checkpoint, self.config[subcommand].model.as_dict())
        if differences and rank_zero_only.rank == 0:
            print(f"note: the network comes from {ckpt_path}: {'; '.join(differences)}", file=sys.stderr)

    def after_predict(self) -> None:
        failures = self.datamodule.predict_failures
        for file, problem in failures:
            print(f"skipped {file}: {problem}", file=sys.stderr)
        if failures:
            raise SystemExit(1)  # the rest were predicted; the exit code says that some were not

    def after_fit(self) -> None:
        if not self._get(self.config, "test_after_fit"):
            return
        checkpoint = self.trainer.checkpoint_callback  # None with --trainer.enable_checkpointing false
        best_path = checkpoint.best_model_path if checkpoint else ""
        test_acc = None
        if self.trainer.limit_test_batches != 0:
            # Without a best checkpoint (no validation ran, or no checkpoints are kept), the final weights are tested.
            results = self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=best_path or None)
            test_acc = results[0]["test/acc"]
        best_score = checkpoint.best_model_score if checkpoint else None
        if self.trainer.is_global_zero:
            print(fit_summary(self.trainer, best_path, None if best_score is None else float(best_score), test_acc))


class NullProfiler(PassThroughProfiler):
    """Lightning's default profiler, which records nothing, without the cost of entering it.

    Lightning wraps every hook call in `profiler.profile(...)`, about 60 times per training step; the inherited
    context manager is a generator that costs 1.7 µs each time. `--trainer.profiler simple` (or `advanced`) shows
    where a run's time goes.
    """

    def profile(self, action_name: str) -> AbstractContextManager:
        return nullcontext(action_name)


def stop_probing_for_nvml_without_gpus() -> None:
    """Let torch answer "is CUDA available?" from its cached runtime count when no NVIDIA GPU is visible.

    Importing Lightning sets PYTORCH_NVML_BASED_CUDA_CHECK=1, so that the question never initializes CUDA (which would
    break forked worker processes). torch's Adam asks it on every step, and without an NVIDIA driver each answer
    then tries to load NVML and fails: 0.12 ms per step on this CPU, about 10 % of an epoch of the seed configuration
    (`python benchmarks/alternating.py --toggle nvml-probe`). With no GPU there is no CUDA state to protect.
    """
    if os.environ.get("PYTORCH_NVML_BASED_CUDA_CHECK") == "1" and torch.cuda.device_count() == 0:
        del os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"]


def silence_third_party_noise() -> None:
    """Drop messages a user of this program can do nothing about: a deprecation inside Lightning (printed twice per
    fit with torch 2.14) and Lightning's advert for its cloud logger."""
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(is_not_an_advert)  # added once, however often


def is_not_an_advert(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("💡 Tip")


def cli_main(args: ArgsType = None) -> MNISTLightningCLI | None:
    """Run the LightningCLI subcommands; `args` replaces `sys.argv[1:]` (a list of strings or a dict).

    Errors the user can fix, Lightning's refusals of a flag among them, are printed as one line (set
    MNIST_LIGHTNING_DEBUG=1 for the traceback).
    """
    silence_third_party_noise()
    with one_line_errors():
        try:
            return MNISTLightningCLI(
                MNISTClassifier,
                MNISTDataModule,
                seed_everything_default=42,
                args=args,
            )
        except SIGTERMException:
            raise SystemExit(128 + 15) from None  # LastCheckpoint has said how to resume
        except (MisconfigurationException, ValueError, TypeError) as e:
            if not is_lightnings_refusal(e) or os.environ.get(DEBUG_VARIABLE):
                raise
            message = " ".join(str(e).split())
            raise ArgumentError(f"{message} ({hint_for(message)})") from None


def is_lightnings_refusal(error: Exception) -> bool:
    """A MisconfigurationException, or a ValueError or TypeError raised by Lightning's own checks of its flags."""
    if isinstance(error, MisconfigurationException):
        return True
    frames = traceback.extract_tb(error.__traceback__)
    return bool(frames) and Path(frames[-1].filename).is_relative_to(LIGHTNING_SOURCE)


def hint_for(message: str) -> str:
    if re.search(r"\bgpu\b|cuda|mps", message, re.IGNORECASE) and not torch.cuda.is_available():
        return "this machine has no GPU: use --trainer.accelerator cpu, or auto"
    return "a Trainer flag Lightning refused: `python -m mnist_lightning fit --help` lists each with its values"
