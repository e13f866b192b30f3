"""Each entry of mnist_lightning/compat.py, exercised: the library is made to do what the entry relies on (a private
name called or set, a message given), never read as source text, so that an upgrade that changes the behaviour fails
here by name, and one that only reformats the library's code does not.

Most tests drive a bare Lightning Trainer on `Tiny` (16 random samples, 8 batches per loop), a few the project's CLI on
the synthetic MNIST, and the flag messages a jsonargparse parser built as LightningCLI builds its own.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import inspect
import io
import logging
import os
import pickle
import pickletools
import re
import signal
import sys
import typing
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch
import yaml
from jsonargparse import ActionConfigFile, ArgumentParser
from jsonargparse import typing as restricted_types
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch.utils.data import DataLoader, TensorDataset

from mnist_lightning import compat
from mnist_lightning.callbacks.dashboard import Dashboard
from mnist_lightning.callbacks.last_checkpoint import LastCheckpoint
from mnist_lightning.callbacks.predictions import PredictionWriter
from mnist_lightning.callbacks.stop import StopOnSignal
from mnist_lightning.cli import build_cli, cli_main
from mnist_lightning.data.sources import NumpyArrayUnpickler
from mnist_lightning.flag_errors import RESTRICTED, SAFE_LOADER, flag_parser
from mnist_lightning.runs.checkpoints import read_checkpoint
from tests.helpers import cli_context

# --- A bare Lightning run -----------------------------------------------------------------------------------------


class Tiny(L.LightningModule):
    """A linear classifier of `width` inputs, on 16 random samples in batches of 2: 8 batches in each loop."""

    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.layer = torch.nn.Linear(width, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)

    def loss(self, batch: Any) -> torch.Tensor:
        x, y = batch
        return torch.nn.functional.cross_entropy(self(x), y)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self.loss(batch)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log("val_loss", self.loss(batch))

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self.log("test_loss", self.loss(batch))

    def predict_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self(batch[0])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self) -> DataLoader:
        generator = torch.Generator().manual_seed(0)
        x, y = torch.randn(16, self.hparams.width, generator=generator), torch.randint(0, 2, (16,), generator=generator)
        return DataLoader(TensorDataset(x, y), batch_size=2)

    val_dataloader = test_dataloader = predict_dataloader = train_dataloader


def trainer(**options: Any) -> L.Trainer:
    """A Trainer of 2 training steps and 1 validation batch on the CPU that writes and prints nothing of its own."""
    defaults = {
        "accelerator": "cpu",
        "devices": 1,
        "max_steps": 2,
        "limit_val_batches": 1,
        "num_sanity_val_steps": 0,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    }
    return L.Trainer(**(defaults | options))


class AtBatchEnd(L.Callback):
    """Calls `action(trainer)` at the end of batch `batch` of every loop, and counts the batches each loop ran."""

    def __init__(self, batch: int, action: Callable[[L.Trainer], None]) -> None:
        self.batch, self.action = batch, action
        self.batches: dict[str, int] = {}

    def _end(self, trainer: L.Trainer, loop: str, batch_idx: int) -> None:
        self.batches[loop] = self.batches.get(loop, 0) + 1
        if batch_idx == self.batch:
            self.action(trainer)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._end(trainer, "fit", batch_idx)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._end(trainer, "validate", batch_idx)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._end(trainer, "test", batch_idx)

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._end(trainer, "predict", batch_idx)


@contextlib.contextmanager
def warned() -> Iterator[list[str]]:
    """The texts of the warnings the block gives (the list is filled when it ends), whatever filters this process
    has put in place (the CLI silences these very warnings)."""
    messages: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield messages
    messages.extend(str(warning.message) for warning in caught)


def silenced(pattern: str, messages: list[str]) -> list[str]:
    """The messages that `warnings.filterwarnings("ignore", message=pattern)` silences (it matches the start, and
    ignores case)."""
    return [message for message in messages if re.compile(pattern, re.IGNORECASE).match(message)]


@contextlib.contextmanager
def noisy_records() -> Iterator[list[logging.LogRecord]]:
    """The records, INFO and above, that the loggers of compat.NOISY_LOGGERS write while the block runs, before any
    filter of the project's (defaults.silence_third_party_noise adds one to each) drops them."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = records.append  # type: ignore[method-assign]
    loggers = [logging.getLogger(name) for name in compat.NOISY_LOGGERS]
    saved = [(logger.level, logger.filters) for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.INFO)
        logger.filters = []
        logger.addHandler(handler)
    try:
        yield records
    finally:
        for logger, (level, filters) in zip(loggers, saved, strict=True):
            logger.removeHandler(handler)
            logger.filters = filters
            logger.setLevel(level)


# --- Private names and behaviours ---------------------------------------------------------------------------------


@pytest.mark.parametrize("subclass_mode", [False, True], ids=["a model class", "subclass mode"])
def test_cli_entries_are_all_that_lightningcli_adds_to_a_models_hyperparameters(
    subclass_mode: bool, workdir: Path
) -> None:
    """runs.checkpoints refuses a checkpoint whose hyperparameters are neither MNISTClassifier's arguments nor
    compat.CLI_ENTRIES, and leaves the entries out when it builds a model: an entry Lightning adds or renames would
    make every checkpoint of `fit` refused."""
    args = [f"--model={Tiny.__module__}.{Tiny.__qualname__}"] if subclass_mode else []
    cli = LightningCLI(
        Tiny, subclass_mode_model=subclass_mode, args=[*args, "--model.width=3"], run=False, seed_everything_default=0
    )
    added = set(cli.model.hparams) - set(inspect.signature(Tiny).parameters)
    assert cli.model.hparams["width"] == 3
    assert added == ({"_instantiator", "_class_path"} if subclass_mode else {"_instantiator"})
    assert added <= set(compat.CLI_ENTRIES)


def test_lightning_sets_current_hook_on_the_module_around_each_hook(workdir: Path) -> None:
    """model.py sets compat.CURRENT_HOOK without nn.Module's `__setattr__` (about 40 times per training step)."""

    class Recording(Tiny):
        def __init__(self) -> None:
            super().__init__()
            self.seen: dict[str, Any] = {}

        def __setattr__(self, name: str, value: Any) -> None:
            if name == compat.CURRENT_HOOK:  # (from LightningModule.__init__ on)
                self.__dict__.setdefault("hooks_set", []).append(value)
            super().__setattr__(name, value)

        def _note(self, hook: str) -> None:
            self.seen[hook] = getattr(self, compat.CURRENT_HOOK)

        def on_train_start(self) -> None:
            self._note("on_train_start")

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            self._note("training_step")
            return super().training_step(batch, batch_idx)

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            self._note("validation_step")
            super().validation_step(batch, batch_idx)

    model = Recording()
    trainer(max_steps=1, val_check_interval=1).fit(model)
    hooks = ("on_train_start", "training_step", "validation_step")
    assert model.seen == {hook: hook for hook in hooks}
    assert set(hooks) <= set(model.hooks_set), "set on the module itself, through its __setattr__"


@pytest.mark.parametrize("loop", ["fit", "validate", "test"])
def test_stop_at_batch_end_stops_a_loop_at_the_end_of_that_batch(loop: str, workdir: Path) -> None:
    """callbacks.stop stops every process of a run at the batch end they agreed on, as Lightning stops after SIGTERM
    (SIGTERMException, and callbacks' on_exception: LastCheckpoint saves that moment)."""
    stopper = AtBatchEnd(batch=2, action=compat.stop_at_batch_end)
    run = trainer(max_steps=8, limit_val_batches=8, limit_test_batches=8, callbacks=[stopper])
    with pytest.raises(SIGTERMException):
        getattr(run, loop)(Tiny())
    assert stopper.batches[loop] == 3
    if loop == "fit":
        assert run.global_step == 3


def test_the_prediction_loop_does_not_stop_at_batch_end_so_stop_on_signal_raises_itself(workdir: Path) -> None:
    """Lightning's prediction loop never reads `trainer.received_sigterm`: StopOnSignal raises interrupts.Stopped
    itself after compat.stop_at_batch_end. Should this fail, Lightning stops predict too, and that raise can go."""
    stopper = AtBatchEnd(batch=2, action=compat.stop_at_batch_end)
    predictions = trainer(callbacks=[stopper]).predict(Tiny())
    assert stopper.batches["predict"] == len(predictions) == 8


@pytest.mark.parametrize("written_by", ["numpy._core.multiarray", "numpy.core.multiarray"], ids=["NumPy 2", "NumPy 1"])
def test_a_pickled_array_round_trips_through_the_safe_unpickler(written_by: str) -> None:
    """data.sources unpickles MNIST's registry copy (written by NumPy 1, protocol 2) allowing numpy's `_reconstruct`
    (compat.numpy_reconstruct) and nothing else of numpy's."""
    array = np.arange(12, dtype=np.float32).reshape(3, 4) / 256
    pickled = pickle.dumps(((array, np.arange(3, dtype=np.int64)),), protocol=2)
    globals_named = [arg.split() for opcode, arg, _ in pickletools.genops(pickled) if opcode.name == "GLOBAL"]
    module = next(module for module, name in globals_named if name == "_reconstruct")
    pickled = pickled.replace(f"c{module}\n_reconstruct\n".encode(), f"c{written_by}\n_reconstruct\n".encode())
    assert f"c{written_by}\n_reconstruct\n".encode() in pickled
    ((images, labels),) = NumpyArrayUnpickler(io.BytesIO(pickled), encoding="latin1").load()
    assert images.dtype == np.float32 and np.array_equal(images, array)
    assert np.array_equal(labels, np.arange(3))


def test_the_hparams_summary_written_through_the_file_writer_is_read_back(tmp_path: Path) -> None:
    """callbacks.panels declares the HPARAMS tab's columns through compat.tensorboard_file_writer."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import hparams

    writer = SummaryWriter(tmp_path)
    for summary in hparams({"lr": 0.01, "hidden_sizes": "[32]"}, {"val/acc_best": 0.0}):
        compat.tensorboard_file_writer(writer).add_summary(summary)
    writer.close()
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    content = events.PluginTagToContent("hparams")
    session = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    assert session.session_start_info.hparams["lr"].number_value == 0.01
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert [metric.name.tag for metric in experiment.metric_infos] == ["val/acc_best"]


@pytest.mark.parametrize(
    "error",
    [
        lambda: trainer(strategy="no-such-strategy"),  # ValueError
        lambda: trainer(devices=-5),  # TypeError, from lightning.fabric
    ],
    ids=["an unknown strategy", "negative devices"],
)
def test_lightnings_refusals_of_a_flag_are_raised_by_its_own_code(error: Callable[[], Any]) -> None:
    """flags.lightnings_refusal shows Lightning's ValueError or TypeError as a one-line refusal only when
    compat.raised_by_lightning; any other such error keeps its traceback."""
    with pytest.raises((ValueError, TypeError)) as refused:
        error()
    assert compat.raised_by_lightning(refused.value)
    with pytest.raises(ValueError) as other:
        int("not a number")
    assert not compat.raised_by_lightning(other.value)


# --- The project's CLI, on LightningCLI's private methods ------------------------------------------------------------

# One epoch of 2 steps, 1 validation batch, nothing logged; a callback of --trainer.callbacks beside the project's
# (Lightning adds no EarlyStopping of its own).
CLI_RUN = ["--data.val_size=200", "--data.batch_size=50", "--model.hidden_sizes=[8]", "--trainer.max_epochs=1"]
CLI_RUN += ["--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1", "--trainer.enable_progress_bar=false"]
CLI_RUN += [
    "--trainer.logger=false",
    "--trainer.callbacks=[{class_path: EarlyStopping, init_args: {monitor: val/acc}}]",
]


@pytest.fixture(scope="module")
def fitted(synthetic_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[LightningCLI, Path]:
    """A `fit` of CLI_RUN in this process: the CLI, and its last checkpoint."""
    workdir = tmp_path_factory.mktemp("compat-fit")
    with cli_context(synthetic_dir, workdir), contextlib.redirect_stdout(io.StringIO()):
        cli = cli_main(["fit", f"--data.data_dir={synthetic_dir}", *CLI_RUN, "--test_after_fit=false"])
    return cli, workdir / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"


def test_the_cli_reads_a_subcommands_parser_and_configuration(fitted: tuple[LightningCLI, Path]) -> None:
    """compat.CLIInternals' `subcommand_parser` (LightningCLI's `_parser`) lists the callbacks that
    `add_lightning_class_args` configured, and the flags with their defaults ("did you mean"); `configured` (`_get`)
    is an instantiated setting."""
    cli, _ = fitted
    parser = cli.subcommand_parser("fit")
    assert parser.callback_keys == ["checkpoint", "last_checkpoint", "predictions", "progress_bar", "dashboard"]
    assert parser.get_defaults()["trainer.max_epochs"] == 20
    assert cli.configured("trainer")["limit_train_batches"] == 2
    assert isinstance(cli.configured("last_checkpoint"), LastCheckpoint)
    assert cli.configured("no_such_setting", default="absent") == "absent"


@pytest.mark.parametrize("subcommand", ["fit", "validate"])
def test_the_trainer_has_exactly_the_callbacks_the_cli_chose(
    subcommand: str, fitted: tuple[LightningCLI, Path], synthetic_mnist: Path, workdir: Path
) -> None:
    """compat.CLIInternals' `trainer_with` (LightningCLI's `_instantiate_trainer`) makes the Trainer with the callbacks
    cli.callbacks_for chose, beside those of --trainer.callbacks, and the Trainer settings of `configured`."""
    cli, checkpoint = fitted
    if subcommand == "validate":
        with contextlib.redirect_stdout(io.StringIO()):
            cli = cli_main(["validate", f"--data.data_dir={synthetic_mnist}", *CLI_RUN, f"--ckpt_path={checkpoint}"])
    callbacks = cli.trainer.callbacks
    kinds = {kind: [cb for cb in callbacks if isinstance(cb, kind)] for kind in (ModelCheckpoint, PredictionWriter)}
    assert [type(cb) for cb in kinds[ModelCheckpoint]] == (
        [ModelCheckpoint, LastCheckpoint] if subcommand == "fit" else []
    )
    assert cli.configured("predictions") not in callbacks and not kinds[PredictionWriter]
    for kind in (EarlyStopping, StopOnSignal, Dashboard, TQDMProgressBar):
        assert sum(isinstance(cb, kind) for cb in callbacks) == 1, kind
    assert cli.configured("dashboard") in callbacks
    assert cli.trainer.max_epochs == 1 and cli.trainer.limit_val_batches == 1


def test_the_cli_applies_a_checkpoints_model_settings_itself(
    fitted: tuple[LightningCLI, Path], synthetic_mnist: Path, workdir: Path
) -> None:
    """compat.CLIInternals turns LightningCLI's `_parse_ckpt_path` off: it would read the --ckpt_path checkpoint again
    and replace every model setting with the checkpoint's, the learning rate a resumed fit applies among them."""
    _, checkpoint = fitted
    trained_lr = read_checkpoint(checkpoint)["hyper_parameters"]["lr"]
    assert trained_lr != 0.0123
    args = ["fit", f"--data.data_dir={synthetic_mnist}", f"--ckpt_path={checkpoint}", "--model.lr=0.0123"]
    with contextlib.redirect_stderr(io.StringIO()):  # the note that lr=0.0123 is applied
        cli = build_cli(args, parse_only=True)
    assert cli.config.fit.model.lr == 0.0123
    assert cli.config.fit.model.hidden_sizes == [8], "the trained network's settings are the checkpoint's"


# --- Lightning under SLURM, and its log records ------------------------------------------------------------------

SLURM_JOB = {"SLURM_JOB_ID": "4242", "SLURM_NTASKS": "1", "SLURM_JOB_NAME": "compat", "SLURM_NODELIST": "localhost"}
SLURM_JOB |= {"SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0"}


def projects_handler(signum: int, frame: Any) -> None:
    """Stands for interrupts.py's handler."""


@pytest.fixture(scope="module")
def slurm_fit(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, list[logging.LogRecord]]:
    """A fit inside a SLURM job (its environment variables), with a SIGUSR1 and a SIGTERM handler already in place,
    that sends itself SIGTERM at the end of its first batch: the SIGUSR1 handler during the fit, and Lightning's log
    records."""
    seen: dict[str, Any] = {}

    def signal_self(run: L.Trainer) -> None:
        seen["SIGUSR1"] = signal.getsignal(signal.SIGUSR1)
        os.kill(os.getpid(), signal.SIGTERM)  # Lightning's handler notes it; the projects_handler beside it ignores it

    with pytest.MonkeyPatch.context() as patch:
        for name in [name for name in os.environ if name.startswith("SLURM_")]:
            patch.delenv(name)
        for name, value in SLURM_JOB.items():
            patch.setenv(name, value)
        patch.chdir(tmp_path_factory.mktemp("slurm-fit"))
        before = {signum: signal.signal(signum, projects_handler) for signum in (signal.SIGUSR1, signal.SIGTERM)}
        try:
            with noisy_records() as records, pytest.raises(SIGTERMException):
                trainer(max_steps=4, callbacks=[AtBatchEnd(batch=0, action=signal_self)]).fit(Tiny())
        finally:
            for signum, handler in before.items():
                signal.signal(signum, handler)
    return seen["SIGUSR1"], records


def test_lightning_keeps_a_sigusr1_handler_in_place_under_slurm(slurm_fit: tuple[Any, list]) -> None:
    """interrupts.py handles SLURM's SIGUSR1 itself, before any Trainer runs: Lightning must then not install its own
    requeue handler (which saves an hpc checkpoint from inside the handler, mid-step, and requeues the job)."""
    handler, _ = slurm_fit
    assert handler is projects_handler


@pytest.mark.parametrize("noise", compat.NOISE)
def test_each_noise_is_in_a_record_of_a_noisy_logger(noise: str, slurm_fit: tuple[Any, list]) -> None:
    """defaults.is_not_noise, a filter on each of compat.NOISY_LOGGERS, drops the records that hold one of
    compat.NOISE: a fit under SLURM that receives SIGTERM writes each of them, through one of those loggers."""
    _, records = slurm_fit
    assert [record for record in records if noise in record.getMessage()], [r.getMessage() for r in records]


def test_saved_on_exception_is_modelcheckpoints_record_of_its_save(tmp_path: Path, workdir: Path) -> None:
    """defaults.is_not_noise drops ModelCheckpoint's record of the checkpoint it saved when a run stopped
    (compat.SAVED_ON_EXCEPTION): callbacks.last_checkpoint says where and how to resume."""

    def fail(run: L.Trainer) -> None:
        raise RuntimeError("stopped here")

    callbacks = [ModelCheckpoint(dirpath=tmp_path, save_on_exception=True), AtBatchEnd(batch=0, action=fail)]
    with noisy_records() as records, pytest.raises(RuntimeError, match="stopped here"):
        trainer(enable_checkpointing=True, callbacks=callbacks).fit(Tiny())
    saved = [r.getMessage() for r in records if all(part in r.getMessage() for part in compat.SAVED_ON_EXCEPTION)]
    assert len(saved) == 1 and "RuntimeError" in saved[0] and str(tmp_path) in saved[0], saved


# --- Lightning's warnings ------------------------------------------------------------------------------------------


def test_resumed_folder_not_empty_is_modelcheckpoints_warning(tmp_path: Path, workdir: Path) -> None:
    (tmp_path / "last.ckpt").write_bytes(b"the run's own")
    with warned() as messages:
        trainer(max_steps=1, enable_checkpointing=True, callbacks=[ModelCheckpoint(dirpath=tmp_path)]).fit(Tiny())
    assert silenced(compat.RESUMED_FOLDER_NOT_EMPTY, messages), messages


def test_evaluation_with_other_callbacks_is_lightnings_warning_of_an_evaluated_checkpoint(
    tmp_path: Path, workdir: Path
) -> None:
    fitting = trainer(max_steps=1, enable_checkpointing=True, callbacks=[ModelCheckpoint(dirpath=tmp_path)])
    fitting.fit(Tiny())
    fitting.save_checkpoint(tmp_path / "fitted.ckpt")
    with warned() as messages:
        trainer(limit_test_batches=1).test(Tiny(), ckpt_path=tmp_path / "fitted.ckpt", verbose=False)
    assert silenced(compat.EVALUATION_WITH_OTHER_CALLBACKS, messages), messages


def test_cli_args_beside_argv_is_lightningclis_warning(monkeypatch: pytest.MonkeyPatch, workdir: Path) -> None:
    """A sweep trial runs LightningCLI with its own args while sys.argv holds the sweep's."""
    monkeypatch.setattr(sys, "argv", ["mnist-lightning", "sweep", "--config", "sweep.yaml"])
    with warned() as messages:
        LightningCLI(Tiny, args=["--model.width=3"], run=False, seed_everything_default=0)
    assert silenced(compat.CLI_ARGS_BESIDE_ARGV, messages), messages


def test_srun_not_used_is_lightnings_warning_where_srun_is_installed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    srun = tmp_path / "srun"
    srun.write_text("#!/bin/sh\n")
    srun.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("SLURM_NTASKS", raising=False)
    with warned() as messages:
        trainer()
    assert silenced(compat.SRUN_NOT_USED, messages), messages


def test_treespec_deprecation_is_given_in_a_fit(workdir: Path) -> None:
    """Should this fail, Lightning (or torch) no longer gives the warning, and defaults can stop silencing it."""
    with warned() as messages:
        trainer(max_steps=1).fit(Tiny())
    assert silenced(compat.TREESPEC_DEPRECATION, messages), messages


# --- jsonargparse's and argparse's complaints (flag_errors), and a missing package's (flags) ---------------------


class Choices:
    """Stands for a model: its arguments become a group of flags (`--model.lr`)."""

    def __init__(self, lr: float = 0.1) -> None:
        self.lr = lr


def cli_parser() -> ArgumentParser:
    """A parser built as LightningCLI builds its own (build_cli's parser_kwargs): a subcommand with a --config of its
    own, a group of a class's arguments, and flags of the kinds of value the project's have."""
    fit = ArgumentParser(exit_on_error=False, allow_abbrev=False)
    fit.add_argument("-c", "--config", action=ActionConfigFile)
    fit.add_class_arguments(Choices, "model")
    fit.add_argument("--epochs", type=int, default=1)
    fit.add_argument("--limit", type=typing.Optional[int], default=None)  # noqa: UP045 (as Lightning's are typed)
    fit.add_argument("--optimizer", type=typing.Literal["adam", "adamw"], default="adam")
    fit.add_argument("--logger", type=type[logging.Handler], default=logging.StreamHandler)
    for name in RESTRICTED:
        fit.add_argument(f"--{name}", type=getattr(restricted_types, name), default=None)
    root = ArgumentParser(prog="python -m mnist_lightning", exit_on_error=False, allow_abbrev=False)
    root.add_subcommands().add_subcommand("fit", fit)
    return root


def sweep_parser() -> ArgumentParser:
    """A parser of the project's own commands (flag_errors.flag_parser), with a required flag as `sweep` has."""
    parser = flag_parser("python -m mnist_lightning sweep", "Runs a sweep.")
    parser.add_argument("--config", type=str, required=True)
    return parser


def complaint(args: list[str]) -> str:
    """What the parser of `args[0]` (fit or sweep) says about `args`."""
    with pytest.raises(argparse.ArgumentError) as error:
        if args[0] == "sweep":
            sweep_parser().parse_args(args[1:])
        else:
            cli_parser().parse_args(args)
    return str(error.value)


def group(match: re.Match | None, number: int = 1) -> str | None:
    return match.group(number) if match else None


def after(prefix: str, message: str) -> str | None:
    return message.removeprefix(prefix) if message.startswith(prefix) else None


# Each pattern as flag_errors and flags use it (re.match, re.search, str.startswith), on what jsonargparse or argparse
# says about `args` (`{tmp}`: a folder with config files): (args, what flag_errors takes from the complaint, expected).
COMPLAINTS: dict[str, tuple[list[str], Callable[[str], Any], Any]] = {
    "PARSER_KEY": (["fit", "--epochs=x"], lambda m: group(re.match(compat.PARSER_KEY, m)), "epochs"),
    "CONFIG_PATH, missing": (
        ["fit", "--config={tmp}/missing.yaml"],
        lambda m: re.search(compat.CONFIG_PATH, m).groups(),
        (compat.MISSING_FILE, "{tmp}/missing.yaml"),
    ),
    "CONFIG_PATH, a folder": (
        ["fit", "--config={tmp}"],
        lambda m: re.search(compat.CONFIG_PATH, m).groups(),
        (compat.NOT_A_FILE, "{tmp}"),
    ),
    "GIVEN_VALUE, a type's": (["fit", "--epochs=x"], lambda m: group(re.search(compat.GIVEN_VALUE, m)).strip(), "x"),
    "GIVEN_VALUE, a union's": (["fit", "--limit=x"], lambda m: group(re.search(compat.GIVEN_VALUE, m)).strip(), "x"),
    "KIND, a type": (["fit", "--epochs=x"], lambda m: re.findall(compat.KIND, m), [("<class 'int'>", "")]),
    "KIND, a union of types": (
        ["fit", "--limit=x"],
        lambda m: re.findall(compat.KIND, m),
        [("<class 'int'>", ""), ("<class 'NoneType'>", "")],
    ),
    "KIND, a choice": (
        ["fit", "--optimizer=sgd"],
        lambda m: [ast.literal_eval(a.removeprefix(compat.LITERAL)) for a, _ in re.findall(compat.KIND, m)],
        [["adam", "adamw"]],
    ),
    "KIND, a class": (
        ["fit", "--logger=NoSuchHandler"],
        lambda m: re.findall(compat.KIND, m),
        [(compat.CLASS_KIND, "")],
    ),
    **{
        f"KIND, {name}": (["fit", f"--{name}=-1"], lambda m: re.findall(compat.KIND, m), [("", name)])
        for name in RESTRICTED
    },
    "UNRECOGNIZED": (["fit", "--epoch=3"], lambda m: group(re.match(compat.UNRECOGNIZED, m)), "--epoch=3"),
    "NOT_ACCEPTED": (
        ["fit", "--config={tmp}/typo.yaml"],
        lambda m: group(re.search(compat.NOT_ACCEPTED, m)),
        "modle.lr",
    ),
    "REQUIRED": (["sweep"], lambda m: group(re.match(compat.REQUIRED, m)).strip().lstrip("-"), "config"),
    "NO_VALUE": (["fit", "--epochs"], lambda m: group(re.match(compat.NO_VALUE, m)), "--epochs"),
    "INVALID_CONFIG and YAML_MARK": (
        ["fit", "--config={tmp}/invalid.yaml"],
        lambda m: (
            len(re.split(compat.YAML_MARK, after(f"{compat.INVALID_CONFIG}: ", m))),
            re.findall(compat.YAML_LINE_COLUMN, m),
        ),
        (3, ["line 1, column 4", "line 2, column 1"]),
    ),
    "NOT_A_MAPPING": (
        ["fit", "--config={tmp}/text.yaml"],
        lambda m: after(compat.NOT_A_MAPPING, m).split(":", 1)[1].split(),
        ["hello", "world"],
    ),
}
CONFIGS = {"typo.yaml": "modle:\n  lr: 0.5\n", "invalid.yaml": "a: [1\n", "text.yaml": "hello world\n"}


@pytest.mark.parametrize(("args", "taken", "expected"), COMPLAINTS.values(), ids=COMPLAINTS.keys())
def test_each_complaint_pattern_matches_what_jsonargparse_says(
    args: list[str], taken: Callable[[str], Any], expected: Any, tmp_path: Path
) -> None:
    """flag_errors.parse_error makes one line of each complaint that a compat pattern fits (the rest are shown as
    they are, with no fix)."""
    for name, text in CONFIGS.items():
        (tmp_path / name).write_text(text)
    message = complaint([arg.format(tmp=tmp_path) for arg in args])
    if isinstance(expected, tuple) and all(isinstance(part, str) for part in expected):
        expected = tuple(part.format(tmp=tmp_path) for part in expected)
    assert taken(message) == expected, message


def test_pyyamls_own_complaint_has_the_marks_yaml_reason_reads() -> None:
    """The sweep file, and the fit config it names, are read with PyYAML itself (flag_errors.YamlFile.read)."""
    with pytest.raises(yaml.YAMLError) as error:
        yaml.load("a: [1\n", Loader=SAFE_LOADER)
    message = str(error.value)
    assert len(re.split(compat.YAML_MARK, message)) == 3
    assert re.findall(compat.YAML_LINE_COLUMN, message) == ["line 1, column 4", "line 2, column 1"]


def test_a_missing_packages_complaint_names_the_class_the_requirement_and_the_pip_install() -> None:
    """flags.missing_package: `--trainer.logger WandbLogger` without wandb installed is one line that names the
    class, the requirement and the `pip install` that brings it."""
    import importlib.util

    from lightning.pytorch.loggers import Logger

    if importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed here")
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--logger", type=typing.Optional[Logger])  # noqa: UP045 (as Lightning's are typed)
    with pytest.raises(ValueError) as error:
        parser.instantiate(parser.parse_args(["--logger=lightning.pytorch.loggers.WandbLogger"]))
    cause: BaseException | None = error.value
    while cause is not None and not isinstance(cause, ImportError):
        cause = cause.__cause__ or cause.__context__
    assert cause is not None, str(error.value)
    assert group(re.search(compat.CLASS_PATH, str(error.value))) == "lightning.pytorch.loggers.WandbLogger"
    assert group(re.search(compat.REQUIREMENT_NOT_MET, str(cause))).startswith("wandb")
    assert group(re.search(compat.PIP_INSTALL, str(cause))).startswith("pip install -U 'wandb")
