"""The private names of libraries that the project relies on (docs/architecture.md), each checked here so that an
upgrade that changes one fails by name rather than somewhere in a fit: LightningCLI's `_get`, `_parser` and
`_instantiate_trainer` (cli.py: the only way to leave out a callback configured by `add_lightning_class_args`, and to
list a subcommand's flags), the `_current_fx_name` attribute Lightning sets on a module (model.py), the flag behind
`trainer.received_sigterm` (callbacks/stop.py), and numpy's `_reconstruct`, the name by which pickled arrays call it
(data/sources.py). Also a behaviour of Lightning's that interrupts.py relies on: an existing SIGUSR1 handler is kept."""

from __future__ import annotations

import ast
import inspect
import pickle
import pickletools
import textwrap

import numpy as np
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.trainer import call

from mnist_lightning.cli import build_cli
from mnist_lightning.data.sources import NumpyArrayUnpickler


def calls_in(function) -> set[str]:
    """The names of the methods `function` calls on anything (`self._get(...)` → `_get`)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    return {
        node.func.attr for node in ast.walk(tree) if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
    }


def test_lightningclis_instantiate_trainer_is_made_of_the_methods_the_cli_calls_instead() -> None:
    assert {"_get", "_parser", "_instantiate_trainer"} <= calls_in(LightningCLI.instantiate_trainer)
    assert "callback_keys" in inspect.getsource(LightningCLI.instantiate_trainer)
    assert list(inspect.signature(LightningCLI._instantiate_trainer).parameters) == ["self", "config", "callbacks"]
    assert list(inspect.signature(LightningCLI._get).parameters) == ["self", "config", "key", "default"]


def test_a_subcommands_parser_lists_its_callbacks_and_its_flags() -> None:
    cli = build_cli(["fit"], parse_only=True)
    parser = cli._parser("fit")
    assert parser.callback_keys == ["checkpoint", "last_checkpoint", "predictions", "progress_bar", "dashboard"]
    defaults = parser.get_defaults()
    assert defaults["trainer.max_epochs"] == 20 and defaults["checkpoint.monitor"] == "val/acc"
    assert cli._get(cli.config["fit"], "trainer")["max_epochs"] == 20


def test_lightning_records_the_running_hook_in_current_fx_name() -> None:
    source = inspect.getsource(call._call_lightning_module_hook)
    assert "pl_module._current_fx_name = hook_name" in source


def test_a_pickled_array_names_only_globals_the_safe_unpickler_allows() -> None:
    names = {
        tuple(argument.split(" "))
        for opcode, argument, _ in pickletools.genops(pickle.dumps(np.arange(6, dtype=np.float32), protocol=2))
        if opcode.name == "GLOBAL"
    }
    assert ("numpy._core.multiarray", "_reconstruct") in names or ("numpy.core.multiarray", "_reconstruct") in names
    assert names <= NumpyArrayUnpickler.ALLOWED.keys()


def test_lightnings_sigterm_flag_is_what_its_loops_read() -> None:
    """callbacks/stop.py sets `trainer._signal_connector.received_sigterm` at a batch end that every process agreed
    on; the loops must read it through `trainer.received_sigterm` and stop at that batch's end."""
    import lightning as L
    from lightning.pytorch.loops import evaluation_loop, training_epoch_loop

    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    assert trainer.received_sigterm is False
    trainer._signal_connector.received_sigterm = True
    assert trainer.received_sigterm is True
    assert "self.trainer.received_sigterm" in inspect.getsource(training_epoch_loop._TrainingEpochLoop.on_advance_end)
    assert "trainer.received_sigterm" in inspect.getsource(evaluation_loop._EvaluationLoop._evaluation_step)


def test_lightning_keeps_a_requeue_signal_handler_that_is_already_in_place() -> None:
    """interrupts.py handles SLURM's SIGUSR1 itself, before any Trainer runs: Lightning must then not install its own
    (which saves an hpc checkpoint from inside the handler, mid-step)."""
    from lightning.pytorch.trainer.connectors.signal_connector import _SignalConnector

    source = inspect.getsource(_SignalConnector.register_signal_handlers)
    assert "not self._has_already_handler(sigusr)" in source
