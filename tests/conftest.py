"""The tiers and the fixtures every tier shares.

Each test is marked by its folder: `unit` (no training at all), `integration` (fits in this process, on tiny synthetic
data) or `system` (other processes: the CLI as users start it, kill -9, DDP, PostgreSQL, a browser, real MNIST, the
benchmarks, `serve`). `pytest -m "not system"` is the edit loop. System-only fixtures are in tests/system/conftest.py.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from mnist_lightning.datasets import DATASETS
from tests.helpers import (
    TINY_RUN,
    Exported,
    cli_context,
    synthetic_as_mnist,
    trust_for_one_test,
    write_synthetic_mnist,
)

TIERS = ("unit", "integration", "system")
# By their summed --durations in a full system tier, longest first (2026-12-02).
LONGEST = ("slurm", "sweep_interruptions", "cli_processes", "bench", "ddp", "serving_processes", "sweep")
LONGEST_FILES = tuple(f"system/test_{name}.py" for name in LONGEST)
# The in-process tiers' longest files, by their summed --durations (2026-12-08: 46, 27, 13 and 12 s of 155 s), first
# in `pytest -m "not system"` for the same reason.
LONGEST_FILES += tuple(
    f"integration/test_{name}.py" for name in ("flags", "sweep_studies", "ckpt_path", "wrong_inputs")
)


def pytest_configure(config: pytest.Config) -> None:
    """One torch thread in every test process and every process a test starts (they inherit OMP_NUM_THREADS).

    `make test` runs two pytest workers on a 2-core machine, each fitting tiny networks in its own process or in one it
    starts; with torch's default of a thread per core, four threads share the two cores and spin waiting for each
    other. One thread each took 11 % less CPU and time for the same system tier, 6 % for the in-process tiers (A/B runs
    of `make test`'s two pytest lines, 2-core AMD EPYC, 2026-12-02; README's Development section).

    torch reads the variable when it loads, which in the pytest processes is later, at collection (the controller of
    `-n 2` never loads it).
    """
    threads = os.environ.setdefault("OMP_NUM_THREADS", "1")  # unless set on purpose
    if "torch" in sys.modules:  # loaded already, by a plugin
        sys.modules["torch"].set_num_threads(int(threads))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    tests = Path(__file__).parent
    for item in items:
        tier = item.path.relative_to(tests).parts[0]
        if tier not in TIERS:
            raise pytest.UsageError(f"{item.nodeid}: every test lives in one of tests/{{{','.join(TIERS)}}}/")
        item.add_marker(tier)
    # Longest first, so that `make test`'s two workers (pytest-xdist, --dist loadfile) end together instead of one
    # finishing a long file alone: the files that take minutes (--durations), then the rest of the system tier. The
    # Makefile passes --no-loadscope-reorder: by default xdist sends the files with the most tests first instead.
    items.sort(key=lambda item: schedule_rank(item.path.relative_to(tests)))


def schedule_rank(path: Path) -> tuple[int, int]:
    """Where a test file goes in the run: the longest system files, then the system, integration and unit tiers."""
    name = path.as_posix()
    return (LONGEST_FILES.index(name) if name in LONGEST_FILES else len(LONGEST_FILES), -TIERS.index(path.parts[0]))


@pytest.fixture(autouse=True)
def no_pytest_argv(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process runs take their arguments from `cli_main(args)`, never from pytest's own command line."""
    monkeypatch.setattr(sys, "argv", ["mnist-lightning"])


@pytest.fixture(autouse=True)
def lightning_log_levels_restored() -> Iterator[None]:
    """In-process sweeps quiet Lightning's loggers; every other test gets them back as they were."""
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    levels = [logger.level for logger in loggers]
    yield
    for logger, level in zip(loggers, levels, strict=True):
        logger.setLevel(level)


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data_dir holding synthetic MNIST-format files, for MNIST and Fashion-MNIST alike: 1,200 training and 300
    test images each."""
    data_dir = tmp_path_factory.mktemp("synthetic-data")
    for dataset in DATASETS:
        write_synthetic_mnist(data_dir, dataset=dataset)
    return data_dir


@pytest.fixture
def synthetic_mnist(synthetic_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """`synthetic_dir`, with this process trusting it as MNIST and Fashion-MNIST for the length of one test."""
    trust_for_one_test(monkeypatch, synthetic_dir)
    return synthetic_dir


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """`tmp_path`, made the working folder for the length of one test (where runs write `lightning_logs/`)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="session")
def tiny_checkpoint(synthetic_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The best checkpoint of a 784-32-10 network fitted for one epoch on the synthetic MNIST by `fit` (in this
    process: a `fit` subprocess would spend most of its time starting up), in its run folder
    `lightning_logs/version_0` with its config.yaml and last.ckpt. Tests copy it before changing anything."""
    from mnist_lightning.cli import cli_main

    workdir = tmp_path_factory.mktemp("tiny-fit")
    args = ["fit", f"--data.data_dir={synthetic_dir}", *TINY_RUN, "--trainer.logger=false", "--test_after_fit=false"]
    with cli_context(synthetic_dir, workdir), contextlib.redirect_stdout(io.StringIO()):
        cli = cli_main(args)
        return Path(cli.trainer.checkpoint_callback.best_model_path).resolve()


@pytest.fixture(scope="session")
def exported(tiny_checkpoint: Path, synthetic_dir: Path) -> Exported:
    """`export --ckpt_path <tiny checkpoint>` run in this process (the synthetic data trusted as MNIST meanwhile)."""
    from mnist_lightning.tools.serving import export  # needs the `serve` extra, which the rest of the tests do not

    printed = io.StringIO()
    with synthetic_as_mnist(synthetic_dir), contextlib.redirect_stdout(printed):
        export.main(["--ckpt_path", str(tiny_checkpoint), "--data_dir", str(synthetic_dir)])
    return Exported(tiny_checkpoint, tiny_checkpoint.with_suffix(".onnx"), printed.getvalue())
