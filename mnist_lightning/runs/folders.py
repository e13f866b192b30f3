"""Run folders: the one place that decides where a run writes (config.yaml, checkpoints/, event files, figures).

Every `fit`, and every sweep trial, gets a folder of its own, `<root>/version_N`, claimed with `mkdir` so that runs
started together never share one (in a SLURM job step, `<root>/slurm_<job>.<step>`, which the job's requeued runs
continue). A `validate`, `test` or `predict` of a checkpoint in a run's `checkpoints/` belongs to that run:
`<run>/<subcommand>-<checkpoint name>/` (`version_0/test-last/`), the same folder each time it is repeated; of a
checkpoint elsewhere, it gets a `version_N` of its own. `<root>` is the logger's `save_dir/name`
(relative paths taken from `--trainer.default_root_dir`), or `<default_root_dir>/lightning_logs` without a folder
logger (`--trainer.logger false`, or a logger of another kind). A resumed `fit` continues in its checkpoint's own
run folder; a logger with its own `version` names the folder itself.

The choice is applied to the configuration for instantiation only, and undone before config.yaml is written, so
that `--config <run>/config.yaml` starts a new run rather than writing into the old one.
"""

from __future__ import annotations

import importlib
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jsonargparse import Namespace
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from mnist_lightning.errors import ArgumentError
from mnist_lightning.files import write_failure
from mnist_lightning.runs.slurm import JobStep

DEFAULT_NAME = "lightning_logs"
CONFIG_FILE = "config.yaml"  # the run's resolved configuration (LightningCLI's SaveConfigCallback writes it)
VERSION = re.compile(r"version_(\d+)")
FOLDER_LOGGERS = (TensorBoardLogger, CSVLogger)


@dataclass(frozen=True)
class RunFolder:
    """Where one run writes; `resumed` when a `fit` continues the run of its checkpoint in this folder, `evaluation`
    for a `validate`, `test` or `predict` inside the run of its checkpoint (each repeat writes there again)."""

    path: Path
    resumed: bool = False
    evaluation: bool = False

    @property
    def version(self) -> int | str:
        match = VERSION.fullmatch(self.path.name)
        return int(match.group(1)) if match else self.path.name


def folder_logger(logger: Any) -> Namespace | None:
    """The configured logger (`--trainer.logger`, as parsed) when it writes into a run folder, i.e. is a
    TensorBoardLogger or CSVLogger (or a subclass of one); else None."""
    if isinstance(logger, list):
        logger = logger[0] if logger else None
    class_path = getattr(logger, "class_path", None)
    if not isinstance(class_path, str):
        return None
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return None
    return logger if isinstance(cls, type) and issubclass(cls, FOLDER_LOGGERS) else None


def runs_root(trainer: Namespace) -> Path:
    """The folder that holds a configuration's runs (`trainer` is its parsed `trainer` section)."""
    base = Path(trainer.default_root_dir or ".")
    logger = folder_logger(trainer.logger)
    if logger is None:
        return base / DEFAULT_NAME
    return base / (logger.init_args.save_dir or ".") / (logger.init_args.name or "")


def claim_next_version(root: Path) -> Path:
    """Create `root/version_N` for the lowest N above every existing one and return it.

    `mkdir` either creates the folder or fails, so two runs started at the same moment never share one.
    """
    root.mkdir(parents=True, exist_ok=True)
    while True:
        taken = [int(m.group(1)) for p in root.iterdir() if (m := VERSION.fullmatch(p.name))]
        folder = root / f"version_{max(taken, default=-1) + 1}"
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            continue


def remove_if_unused(folder: Path) -> None:
    """Remove a run folder that holds nothing but config.yaml, hparams.yaml and event files without events: what a
    run that failed before it logged anything leaves (a missing dataset, a flag Lightning refuses, a split that
    leaves no training images)."""
    files = [path for path in folder.rglob("*") if path.is_file()] if folder.is_dir() else []
    if all(
        path.parent == folder and (path.name in (CONFIG_FILE, "hparams.yaml") or _no_events(path)) for path in files
    ):
        shutil.rmtree(folder, ignore_errors=True)


def _no_events(path: Path) -> bool:
    """Whether `path` is a TensorBoard event file that holds its header record only (the file version): TFRecord
    framing, each record a little-endian uint64 length, a 4-byte CRC, the data and another 4-byte CRC."""
    if not path.name.startswith("events.out.tfevents."):
        return False
    content = path.read_bytes()
    return len(content) >= 8 and 16 + int.from_bytes(content[:8], "little") == len(content)


def run_of_checkpoint(checkpoint: Path) -> Path | None:
    """The run folder a checkpoint belongs to (`<run>/checkpoints/x.ckpt`), or None for a checkpoint elsewhere.

    Relative paths stay relative: the run's checkpoint folder keeps the name it was saved under, which Lightning
    compares when it restores which checkpoints are the best."""
    folder = checkpoint.parent if checkpoint.parent.name else checkpoint.resolve().parent
    return folder.parent if folder.name == "checkpoints" else None


def choose_run_folder(
    trainer: Namespace,
    resume_from: Path | None = None,
    fixed: Path | None = None,
    job_step: JobStep | None = None,
    claim: bool = True,
    evaluation: tuple[str, Path] | None = None,
) -> RunFolder | None:
    """The folder of a run configured by `trainer` (the parsed `trainer` section).

    `resume_from`: the checkpoint a `fit` resumes, whose run continues. `fixed`: a folder chosen by the caller (a
    sweep trial's). `job_step`: the SLURM job step this process runs in, whose folder every run of the job (each
    requeue) continues. `evaluation`: the subcommand (`test`, ...) and the checkpoint it evaluates, whose run the
    evaluation's folder goes in. `claim=False` (every process of a distributed run but global rank 0) claims no new
    folder and gets None: such a process follows the folder that Lightning broadcasts from rank 0.
    """
    if fixed is not None:
        return RunFolder(fixed)
    if resume_from is not None and (run := run_of_checkpoint(resume_from)) is not None:
        return RunFolder(run, resumed=True)
    if evaluation is not None and (run := run_of_checkpoint(evaluation[1])) is not None:
        return RunFolder(run / f"{evaluation[0]}-{evaluation[1].stem}", evaluation=True)
    root = runs_root(trainer)
    logger = folder_logger(trainer.logger)
    try:
        if job_step is not None:
            folder = root / job_step.folder_name
            folder.mkdir(parents=True, exist_ok=True)  # by every process of the step: all of them know its name
            return RunFolder(folder, resumed=job_step.restarts > 0)
        version = None if logger is None else logger.init_args.version
        if version is not None:
            return RunFolder(root / (f"version_{version}" if isinstance(version, int) else str(version)))
        return RunFolder(claim_next_version(root)) if claim else None
    except OSError as e:
        flag = "logger.init_args.save_dir" if logger is not None and logger.init_args.save_dir else "default_root_dir"
        elsewhere = f"or pass --trainer.{flag} DIR for runs elsewhere"
        raise write_failure(f"the log folder {root}", e.errno, elsewhere, error=ArgumentError) from None


def command_on(subcommand: str, run: Path, checkpoint: Path | str) -> str:
    """The command that runs `subcommand` again on a checkpoint of the run in folder `run`, with the run's config."""
    return f"python -m mnist_lightning {subcommand} --config {run / CONFIG_FILE} --ckpt_path {checkpoint}"


def point_at(trainer: Namespace, run: RunFolder, resumed_step: int | None = None) -> dict[str, Any]:
    """Set the parsed `trainer` section so that the Trainer and its logger write into `run`; return what it held,
    for `restore` (once the classes are instantiated, before config.yaml is saved).

    `resumed_step`: the step a resumed run continues from; a TensorBoard logger drops the events the run logged after
    it, so that the curves continue rather than fold back.
    """
    logger = folder_logger(trainer.logger)
    previous: dict[str, Any] = {"default_root_dir": trainer.default_root_dir, "logger": {}}
    trainer.default_root_dir = str(run.path)  # checkpoints without a logger, config.yaml, hpc checkpoints
    if logger is not None:
        changes = {"save_dir": str(run.path.parent.parent), "name": run.path.parent.name, "version": run.version}
        if resumed_step is not None and "purge_step" in logger.init_args:
            changes["purge_step"] = resumed_step
        previous["logger"] = {key: getattr(logger.init_args, key) for key in changes}
        for key, value in changes.items():
            setattr(logger.init_args, key, value)
    return previous


def restore(trainer: Namespace, previous: dict[str, Any]) -> None:
    """Undo `point_at`, whose return value `previous` is."""
    trainer.default_root_dir = previous["default_root_dir"]
    logger = folder_logger(trainer.logger)
    for key, value in previous["logger"].items():
        setattr(logger.init_args, key, value)


def run_folder(trainer: Any) -> Path:
    """A Trainer's run folder, as `trainer.log_dir` gives it but without its broadcast: safe to call on rank 0 alone.

    (`trainer.log_dir` is a collective call; made by one process of several, it waits for the others forever.)
    """
    for logger in trainer.loggers[:1]:
        if isinstance(logger, FOLDER_LOGGERS):
            return Path(logger.log_dir)
        if logger.save_dir:
            return Path(logger.save_dir)
    return Path(trainer.default_root_dir)
