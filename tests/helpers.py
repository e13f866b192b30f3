"""The tests' one copy of each helper: tiny synthetic datasets, running the CLI (in this process or a fresh one),
one-line errors, drawn digits, free ports, and a watch on a folder's file events.

Synthetic data: each class is a fixed random pattern plus per-image noise, so a small MLP learns it in a few steps
and every image is distinct. The real digests are replaced by the synthetic files' own, in this process
(`trust_synthetic_mnist`, `synthetic_as_mnist`) or in a subprocess started with `cli_command()` and
`subprocess_env()` (see tests/site/sitecustomize.py, which imports this module: keep its top-level imports light).
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import functools
import io
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from mnist_lightning.datasets import DATASETS, IDX_FILES

REPO_ROOT = Path(__file__).resolve().parent.parent
DIGESTS_FILE = "synthetic-digests.json"
# A real model for the serve and browser tests to serve instead of the synthetic one, e.g. for docs/serve-page.png
# (see docs/serving.md).
REAL_MODEL_VARIABLE = "MNIST_LIGHTNING_TEST_SERVE_MODEL"

# One epoch of 1,000 training images in batches of 50 (20 steps) of a 784-32-10 network: the tiny run most tests fit.
TINY_RUN = ["--data.val_size=200", "--data.batch_size=50", "--model.hidden_sizes=[32]", "--trainer.max_epochs=1"]
TINY_RUN += ["--trainer.enable_progress_bar=false"]
# 4 training steps of 50 images per epoch, 2 epochs; 2 batches each of validation and test: a few steps per flag.
QUICK_RUN = ["--data.val_size=200", "--data.batch_size=50", "--model.hidden_sizes=[16]", "--trainer.max_epochs=2"]
QUICK_RUN += ["--trainer.limit_train_batches=4", "--trainer.limit_val_batches=2", "--trainer.limit_test_batches=2"]
QUICK_RUN += ["--trainer.enable_progress_bar=false"]


# --- Synthetic datasets ------------------------------------------------------------------------------------------


def synthetic_arrays(
    count: int, seed: int, mislabelled: float = 0.0, classes: int = 10, size: int = 28
) -> tuple[np.ndarray, np.ndarray]:
    """`count` size×size images and their labels, of `classes` classes; a fraction `mislabelled` of the labels is
    wrong, so no model is perfect."""
    patterns = np.random.default_rng(0).random((classes, size, size)) > 0.7
    rng = np.random.default_rng(seed)
    labels = np.arange(count, dtype=np.uint8) % classes
    rng.shuffle(labels)
    noise = rng.integers(0, 90, size=(count, size, size))
    images = np.clip(noise + 160 * patterns[labels], 0, 255).astype(np.uint8)
    wrong = rng.random(count) < mislabelled
    labels[wrong] = (labels[wrong] + 1 + rng.integers(0, classes - 1, size=wrong.sum())) % classes
    return images, labels


def write_synthetic_mnist(data_dir: Path, train: int = 1200, test: int = 300, dataset: str = "mnist") -> Path:
    """Write the four IDX files of `dataset` under its raw folder in `data_dir`, with their digests beside them;
    return that folder."""
    from mnist_lightning.data.idx import write_idx
    from mnist_lightning.data.sources import sha256_of

    spec = DATASETS[dataset]
    raw = spec.raw_dir(data_dir)
    # Some test labels are wrong, so that test accuracy is below 1 and there are mistakes to show.
    for prefix, count, seed, mislabelled in (("train", train, 1, 0.0), ("t10k", test, 2, 0.05)):
        images, labels = synthetic_arrays(count, seed, mislabelled, spec.num_classes, spec.image_shape[-1])
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    digests = {name: sha256_of(raw / name) for name in IDX_FILES}
    (raw / DIGESTS_FILE).write_text(json.dumps(digests))
    return raw


def trust_synthetic_mnist(data_dir: Path | str) -> None:
    """Make this process accept the synthetic files in `data_dir` as the datasets they stand for (and never fetch
    anything)."""
    for name, spec in DATASETS.items():
        digests = spec.raw_dir(data_dir) / DIGESTS_FILE
        if digests.is_file():
            DATASETS[name] = dataclasses.replace(spec, sha256=json.loads(digests.read_text()), sources=())


def trust_for_one_test(monkeypatch: Any, data_dir: Path) -> None:
    """`trust_synthetic_mnist(data_dir)` until `monkeypatch` (pytest's) undoes it: every entry as it was afterwards."""
    for name, spec in DATASETS.items():
        monkeypatch.setitem(DATASETS, name, spec)
    trust_synthetic_mnist(data_dir)


@contextlib.contextmanager
def synthetic_as_mnist(data_dir: Path) -> Iterator[None]:
    """This process accepts the synthetic files in `data_dir` as MNIST and Fashion-MNIST until the block ends (for
    fixtures wider than one test, which cannot use the `synthetic_mnist` fixture)."""
    import pytest

    with pytest.MonkeyPatch.context() as patch:
        trust_for_one_test(patch, data_dir)
        yield


# --- The CLI, in this process --------------------------------------------------------------------------------------


@contextlib.contextmanager
def cli_context(data_dir: Path, workdir: Path) -> Iterator[None]:
    """For fixtures wider than one test that run `cli_main`: the synthetic data trusted, `workdir` the working folder
    and no pytest flags in sys.argv, until the block ends (a test has `synthetic_mnist` and `no_pytest_argv`)."""
    import pytest

    with synthetic_as_mnist(data_dir), pytest.MonkeyPatch.context() as patch:
        patch.chdir(workdir)
        patch.setattr(sys, "argv", ["mnist-lightning"])
        yield


def one_line_error(capture: Any, args: list[str], main: Any = None, alone: bool = False) -> str:
    """Run `main(args)` (default `commands.main`, which every command runs in) in this process and require exit
    status 2, no traceback and exactly one `error:` line on stderr (`alone`: and nothing else there); return that
    line. `capture` is pytest's capsys or capfd."""
    import pytest

    from mnist_lightning import commands

    with pytest.raises(SystemExit) as exit_info:
        (main or commands.main)(args)
    output = capture.readouterr()
    assert exit_info.value.code == 2, output.out[-2000:] + output.err[-2000:]
    assert "Traceback" not in output.out, output.out[-2000:]
    line = assert_one_line_error(output.err)
    if alone:
        assert len(output.err.strip().splitlines()) == 1, output.err[-2000:]
    return line


# An error line, as every command prints it: `error: ...`, after `[rank: N] ` in a process of a distributed run.
ERROR_LINE = re.compile(r"(?:\[rank: \d+\] )?(error: .*)")


def assert_one_line_error(output: str, *fragments: str) -> str:
    """The one error line of `output` (a process's stderr, or all it printed), from its `error: ` on: fails unless
    exactly one line starts with `error: ` (or `[rank: N] error: `), every one of `fragments` is in it, and no
    "Traceback" is anywhere in `output`."""
    assert "Traceback" not in output, output[-3000:]
    errors = [match.group(1) for line in output.splitlines() if (match := ERROR_LINE.fullmatch(line))]
    assert len(errors) == 1, f"{len(errors)} error lines, not one:\n{output[-3000:]}"
    missing = [fragment for fragment in fragments if fragment not in errors[0]]
    assert not missing, f"{missing} not in the error line {errors[0]!r}"
    return errors[0]


# --- Sweeps -------------------------------------------------------------------------------------------------------

GOOD_LR, HOPELESS_LR, DIVERGING_LR = 0.003, 1e-7, 1e30
# A sweep of 4 trials. What its sampler draws is Optuna's business: a test that needs particular trials queues them
# (`enqueue_trials`), e.g. `DEFAULT_TRIALS`, and the seed only makes the other tests' draws the same in every run.
SWEEP = {
    "fit": {
        "seed_everything": 42,
        "model": {"hidden_sizes": [32]},
        "data": {"batch_size": 50, "val_size": 200},
        "trainer": {"max_epochs": 2, "enable_progress_bar": False},
    },
    "metric": "val/loss",  # unlike accuracy, it differs from trial to trial on data this easy
    "direction": "minimize",
    "n_trials": 4,
    "sampler": {"seed": 0, "n_startup_trials": 10},
    "pruner": {"n_startup_trials": 1, "n_warmup_steps": 0},
    "search_space": {
        "model.lr": {"choices": [GOOD_LR, HOPELESS_LR]},
        "model.hidden_sizes": {"choices": [[16], [32]]},
    },
}


# Every parameter set of SWEEP's search space, in the order that a test queues them: two trials that learn, then two
# that cannot and are pruned after their first epoch.
DEFAULT_TRIALS = [
    {"model.lr": lr, "model.hidden_sizes": widths} for lr in (GOOD_LR, HOPELESS_LR) for widths in ([16], [32])
]


def write_sweep(folder: Path, **changes: Any) -> Path:
    """`SWEEP`, with `changes` to its sections, as folder/sweep.yaml."""
    import yaml

    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump({**SWEEP, **changes}, sort_keys=False))  # keys in order: the sampler draws in order
    return path


def sweep_error(capture: Any, *args: str) -> str:
    """Run `sweep ARGS` in this process; require exit status 2 and one line on stderr, and return it."""
    from mnist_lightning.commands import main

    return one_line_error(capture, ["sweep", *args], main=main, alone=True)


def enqueue_trials(storage: Path | str, *trials: dict[str, Any], study: str = "sweep") -> None:
    """Queue trials with these parameters in the study `study` (made first, minimizing as SWEEP does, where it is not
    there yet), so that a sweep run on it runs them first, in this order, instead of what its sampler would draw.

    `storage` is a database URL, or the working folder of a sweep on its default journal,
    `lightning_logs/<study>/optuna-journal.log`. Values as in the sweep file: a list of widths is stored as its JSON
    text, as the sweep's choices are."""
    import optuna

    from mnist_lightning.tools.sweep.study import JOURNAL_FILE, database_url, make_storage

    url = str(storage)
    url = database_url(url) if "://" in url else str(Path(url).resolve() / "lightning_logs" / study / JOURNAL_FILE)
    created = optuna.create_study(
        storage=make_storage(url), study_name=study, direction=SWEEP["direction"], load_if_exists=True
    )
    for params in trials:
        created.enqueue_trial(
            {key: value if isinstance(value, str | int | float) else json.dumps(value) for key, value in params.items()}
        )


# --- The CLI, in a fresh process ----------------------------------------------------------------------------------


def cli_command(data_dir: Path, *args: str) -> list[str]:
    """`python -m mnist_lightning ARGS` in a fresh process that accepts the synthetic data in `data_dir` as MNIST.

    Run it with `env=subprocess_env()`, which puts tests/site/sitecustomize.py on the path.
    """
    variable = f"MNIST_LIGHTNING_TEST_SYNTHETIC={data_dir}"
    return ["env", variable, sys.executable, "-m", "mnist_lightning", *args, f"--data.data_dir={data_dir}"]


def start_sweep(data_dir: Path, workdir: Path, *args: str, **popen: Any) -> subprocess.Popen:
    """`python -m mnist_lightning sweep ARGS` in `workdir` on the synthetic data in `data_dir`, in a process group of
    its own (so that a test can stop it with its workers), its output in `.stdout`."""
    return subprocess.Popen(
        cli_command(data_dir, "sweep", *args),
        cwd=workdir,
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        **popen,
    )


def subprocess_env(**variables: str) -> dict[str, str]:
    """This process's environment with tests/site and the checkout first on PYTHONPATH (and `variables` set)."""
    path = os.pathsep.join([str(REPO_ROOT / "tests" / "site"), str(REPO_ROOT)])
    return {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1", **variables}


def run_cli(data_dir: Path, cwd: Path, *args: str, returncode: int = 0, **run: Any) -> str:
    """Run `cli_command(data_dir, *args)` in `cwd`, require `returncode`, and return everything it printed."""
    result = subprocess.run(
        cli_command(data_dir, *args),
        cwd=cwd,
        env=run.pop("env", subprocess_env()),
        capture_output=True,
        text=True,
        timeout=300,
        **run,
    )
    assert result.returncode == returncode, result.stdout[-3000:] + result.stderr[-4000:]
    return result.stdout + result.stderr


def start_cli(data_dir: Path, cwd: Path, *args: str, **popen: Any) -> subprocess.Popen:
    """Start `cli_command(data_dir, *args)` in `cwd`; its stdout and stderr together in `.stdout`, as text."""
    return subprocess.Popen(
        cli_command(data_dir, *args),
        cwd=cwd,
        env=popen.pop("env", subprocess_env()),
        stdout=popen.pop("stdout", subprocess.PIPE),
        stderr=subprocess.STDOUT,
        text=True,
        **popen,
    )


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 120) -> None:
    """Wait until `path` exists; fail if `process` ends first or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, process.stdout.read()[-3000:] if process.stdout else process.returncode
        assert time.monotonic() < deadline, f"{path} did not appear in {timeout} s"
        time.sleep(0.05)


def wait_until_handling_signals(process: subprocess.Popen, timeout: float = 60) -> None:
    """Wait until the command in `process` handles stop signals: `commands.main` puts its handlers in place first,
    before the imports of several seconds, which a signal then interrupts. (The Python process is `env`'s: `env`
    execs it, same pid.)"""
    deadline = time.monotonic() + timeout
    while not catches(process.pid, signal.SIGTERM):
        assert process.poll() is None, f"the process ended ({process.returncode}) before it handled signals"
        assert time.monotonic() < deadline, f"the process handled no signal in {timeout} s"
        time.sleep(0.005)


def printed_test_accuracy(output: str) -> str:
    """The last test/acc in Lightning's printed results table, as printed."""
    return re.findall(r"test/acc\W+([0-9.]+)", output)[-1]  # plain or rich table


def printed_path(label: str, output: str) -> Path:
    """The path that `fit`'s summary prints after `label` (e.g. "Best checkpoint", "Run folder")."""
    return Path(re.search(rf"{label}\s+(\S+)", output).group(1))


@dataclasses.dataclass(frozen=True)
class Exported:
    """What `export` wrote for a checkpoint (the `exported` fixture): the ONNX model beside it, and what it printed."""

    checkpoint: Path
    model: Path
    printed: str


# --- Phases of a run in another process, and kills inside a save ---------------------------------------------------

# While a file `hold-<phase>` is in a PhaseMarker's folder, a run that reaches that phase waits there (for at most
# HOLD_TIMEOUT seconds, then fails: a test that never lets it go does not hang).
HOLD, HOLD_TIMEOUT = "hold-", 120


def phase_marker(folder: Path, processes: int = 1, meet: str = "train-0") -> dict[str, Any]:
    """A `PhaseMarker` writing in `folder`, as a trainer callback in a config (`trainer: callbacks: [...]`)."""
    init_args = {"folder": str(folder), "processes": processes, "meet": meet}
    return {"class_path": f"{__name__}.PhaseMarker", "init_args": init_args}


def marker_flag(folder: Path) -> str:
    """The flag that adds a `PhaseMarker` writing in `folder` to a command's callbacks (the default ones kept)."""
    return f"--trainer.callbacks+={json.dumps(phase_marker(folder))}"


def with_phase_marker(fit: dict[str, Any], folder: Path, processes: int = 1, meet: str = "train-0") -> dict[str, Any]:
    """A sweep's `fit` section whose trials have a `PhaseMarker` writing in `folder` beside the default callbacks
    (a list of callbacks in a config replaces the default one)."""
    from mnist_lightning.cli import DEFAULTS

    callbacks = [*DEFAULTS["trainer.callbacks"], phase_marker(folder, processes, meet)]
    return {**fit, "trainer": {**fit.get("trainer", {}), "callbacks": callbacks}}


def hold_at(folder: Path, phase: str) -> Path:
    """`folder`, made, with the file that makes the PhaseMarkers writing in it keep their runs at `phase` until the
    run gets a stop signal or is killed, or the test calls `release(folder)`."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{HOLD}{phase}").touch()
    return folder


def release(folder: Path) -> None:
    """Runs held by the PhaseMarkers of `folder` go on, and later runs no longer wait at a phase for the test."""
    for path in folder.glob(f"{HOLD}*"):
        path.unlink()


def marked(folder: Path, phase: str) -> list[int]:
    """The pids of the processes whose PhaseMarker has written that they reached `phase` in `folder`."""
    return sorted(int(path.suffix[1:]) for path in folder.glob(f"{phase}.*"))


def wait_for_phase(
    folder: Path, phase: str, process: subprocess.Popen, processes: int = 1, timeout: float = 240
) -> list[int]:
    """Wait until `processes` processes have reached `phase` (their PhaseMarkers' files in `folder`), and return
    their pids; fail, and kill `process` (its group when it leads one), if it ends first or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while len(pids := marked(folder, phase)) < processes:
        if process.poll() is not None:
            printed = process.communicate()[0] if process.stdout else ""
            raise AssertionError(f"the process ended ({process.returncode}) before {phase}:\n{printed[-3000:]}")
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                if os.getpgid(process.pid) == process.pid:
                    os.killpg(process.pid, signal.SIGKILL)
                process.kill()
            raise AssertionError(f"{processes} processes did not reach {phase} in {timeout} s (markers: {pids})")
        time.sleep(0.01)
    return pids


def _phase_marker_class() -> type:
    import lightning.pytorch as pl

    from mnist_lightning import interrupts

    class PhaseMarker(pl.Callback):
        """Writes an empty file `<phase>.<pid>` in `folder` when the run reaches a phase, so that a test waits for that
        file (`wait_for_phase`) instead of sleeping for a time it hopes is long enough: `train-E`, the first training
        batch of epoch E (from 0) done; `test`, the first test batch done.

        At the phase `meet`, the run waits until the markers of `processes` processes are in the folder (the workers
        of a sweep, or sweeps started together, all in a trial at once). At any phase, it waits while the folder
        holds a file `hold-<phase>` (`hold_at`: until the test has stopped or killed it). A stop signal ends the wait
        (it is only noted during a run: the run stops at this batch's end); after HOLD_TIMEOUT, the run fails."""

        def __init__(self, folder: str, processes: int = 1, meet: str = "train-0") -> None:
            self.folder = Path(folder)
            self.processes, self.meet = processes, meet
            self.reached: set[str] = set()

        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            if batch_idx == 0:
                self.reach(f"train-{trainer.current_epoch}")

        def on_test_batch_end(
            self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
        ) -> None:
            if batch_idx == 0:
                self.reach("test")

        def reach(self, phase: str) -> None:
            if phase in self.reached:
                return
            self.reached.add(phase)
            self.folder.mkdir(parents=True, exist_ok=True)
            (self.folder / f"{phase}.{os.getpid()}").touch()
            together = self.processes if phase == self.meet else 1
            deadline = time.monotonic() + HOLD_TIMEOUT
            while interrupts.received() is None:
                if len(marked(self.folder, phase)) >= together and not (self.folder / f"{HOLD}{phase}").exists():
                    return
                if time.monotonic() > deadline:  # the test's mistake: say so, rather than go on unnoticed
                    raise RuntimeError(f"PhaseMarker: still held at {phase} after {HOLD_TIMEOUT} s ({self.folder})")
                time.sleep(0.01)

    PhaseMarker.__module__, PhaseMarker.__qualname__ = __name__, "PhaseMarker"
    return PhaseMarker


def __getattr__(name: str) -> Any:
    """`PhaseMarker`, a Lightning callback, is made when first asked for (as jsonargparse does for a callback's
    class_path, `tests.helpers.PhaseMarker`): importing this module must not load Lightning
    (tests/site/sitecustomize.py imports it in `serve` and `export` processes too)."""
    if name == "PhaseMarker":
        globals()[name] = _phase_marker_class()
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def process_state(pid: int) -> str:
    """The state of process `pid` as /proc/PID/stat gives it (R, S, D, T for stopped, Z for ended...); "" when no
    such process is left."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


def kill_inside_a_save(
    pid: int,
    folder: Path,
    wanted: Callable[[str, list[str]], bool] = lambda temporary, names: True,
    pause: Callable[[], float] | None = None,
    timeout: float = 120,
) -> list[str]:
    """SIGKILL process `pid` at a moment when it is certainly writing a file into `folder` with `write_atomically`:
    once a temporary file of its is there (and `wanted(temporary, names in folder)`), and `pause()` seconds later, the
    process is stopped (SIGSTOP) and killed if the temporary is still there; otherwise it goes on (SIGCONT) to its
    next save. Returns the names in `folder` at the kill. Fails if the process ends or `timeout` passes first."""
    from mnist_lightning.files import TEMPORARY

    def temporaries(names: list[str]) -> list[str]:
        mine = [name for name in names if (match := TEMPORARY.fullmatch(name)) and match.group(1) == str(pid)]
        return [name for name in mine if wanted(name, names)]

    deadline = time.monotonic() + timeout
    while True:
        assert process_state(pid) not in ("", "Z"), f"process {pid} ended before it was caught inside a save"
        assert time.monotonic() < deadline, f"process {pid} was not caught inside a save in {folder} in {timeout} s"
        seen = temporaries(os.listdir(folder)) if folder.is_dir() else []
        if not seen:
            time.sleep(0.001)
            continue
        if pause is not None:
            time.sleep(pause())
        os.kill(pid, signal.SIGSTOP)
        while (state := process_state(pid)) not in ("T", "t"):  # stopped once its system call (a write) returns
            assert state not in ("", "Z"), f"process {pid} ended before it was caught inside a save"
            assert time.monotonic() < deadline, f"process {pid} did not stop in {timeout} s"
            time.sleep(0.0001)
        names = os.listdir(folder)
        if set(seen) & set(temporaries(names)):
            os.kill(pid, signal.SIGKILL)
            return names
        os.kill(pid, signal.SIGCONT)


# --- Images of digits ---------------------------------------------------------------------------------------------


def encoded(image: Any, format: str = "PNG") -> bytes:
    """A PIL image as the bytes of an image file."""
    buffer = io.BytesIO()
    image.save(buffer, format=format)
    return buffer.getvalue()


def drawing(seed: int, size: tuple[int, int] = (300, 260)) -> Any:
    """A few random dark strokes on light paper: an image of 'a digit' that every test can tell apart."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    image = Image.new("L", size, 235)
    points = [tuple(int(v) for v in rng.integers(30, min(size) - 30, size=2)) for _ in range(4)]
    ImageDraw.Draw(image).line(points, fill=15, width=20)
    return image


def drawn_seven(size=(640, 480), offset=(380, 60), ink=20, paper=235, mode="L") -> Any:
    """A thick, off-centre '7', dark ink on light paper."""
    from PIL import Image, ImageDraw

    image = Image.new(mode, size, paper if mode == "L" else (paper,) * 3)
    draw = ImageDraw.Draw(image)
    x, y = offset
    colour = ink if mode == "L" else (ink, ink // 2, ink)
    draw.line([(x, y), (x + 180, y), (x + 70, y + 320)], fill=colour, width=28)
    return image


def strong_distortion() -> Any:
    """The random distortion of configs/strong.yaml, the preset that distorts."""
    import yaml

    from mnist_lightning.data.augment import Distortion

    data = yaml.safe_load((REPO_ROOT / "configs" / "strong.yaml").read_text())["data"]
    return Distortion(**{name: value for name, value in data.items() if name in Distortion.__annotations__})


@functools.cache
def huge_png() -> bytes:
    """A black PNG of 12000×12000 pixels (144 megapixels) in about 140 kB."""
    from PIL import Image

    return encoded(Image.new("L", (12_000, 12_000), 0))


# --- Processes and files ------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def plain_checkpoint(step: int, size: int = 1000) -> dict:
    """The smallest dict that passes for a checkpoint: a state_dict and a global_step."""
    import torch

    return {"state_dict": {"weight": torch.full((size,), float(step))}, "global_step": step}


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class CodeOnUnpickling:
    """Unpickled, runs `touch path`: what a malicious checkpoint or pickle would do."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


class FolderEvents:
    """What happens to the files of one folder, as Linux's inotify reports it: which names were created or written
    in place, and which were renamed into place. It sees every process, whatever opens the files."""

    CREATE, MODIFY, CLOSE_WRITE, MOVED_TO, OVERFLOW = 0x100, 0x2, 0x8, 0x80, 0x4000

    def __init__(self, folder: Path) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self.fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        mask = self.CREATE | self.MODIFY | self.CLOSE_WRITE | self.MOVED_TO
        assert self.fd >= 0 and libc.inotify_add_watch(self.fd, os.fsencode(folder), mask) >= 0, os.strerror(
            ctypes.get_errno()
        )
        self.events: list[tuple[int, str]] = []

    def read(self) -> list[tuple[int, str]]:
        while True:
            try:
                data = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                break
            offset = 0
            while offset < len(data):
                _, mask, _, length = struct.unpack_from("iIII", data, offset)
                name = data[offset + 16 : offset + 16 + length].rstrip(b"\0").decode()
                self.events.append((mask, name))
                offset += 16 + length
        assert not any(mask & self.OVERFLOW for mask, _ in self.events), "inotify lost events"
        return self.events

    def written_in_place(self, suffix: str = ".ckpt") -> set[str]:
        written = self.CREATE | self.MODIFY | self.CLOSE_WRITE
        return {name for mask, name in self.read() if mask & written and name.endswith(suffix)}

    def renamed_into_place(self, suffix: str = ".ckpt") -> set[str]:
        return {name for mask, name in self.read() if mask & self.MOVED_TO and name.endswith(suffix)}

    def close(self) -> None:
        os.close(self.fd)


# --- Files a process cannot read, `serve` processes, signal handlers ------------------------------------------------

# linux/capability.h: what lets root read and write any file whatever its mode, and listen on ports below 1024.
CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_NET_BIND_SERVICE = 1, 2, 10


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def _capabilities(effective: int | None = None) -> int:
    """This thread's effective capabilities (the first 32), after setting them to `effective` if given."""
    libc = ctypes.CDLL(None, use_errno=True)
    header, data = _CapHeader(0x20080522, 0), (_CapData * 2)()  # _LINUX_CAPABILITY_VERSION_3; pid 0: this thread
    assert libc.capget(ctypes.byref(header), data) == 0, os.strerror(ctypes.get_errno())
    if effective is not None:
        data[0].effective = effective
        assert libc.capset(ctypes.byref(header), data) == 0, os.strerror(ctypes.get_errno())
    return data[0].effective


@contextlib.contextmanager
def as_a_user() -> Iterator[None]:
    """File modes and privileged ports bind this thread while the block runs, as they bind a user: when the tests run
    as root, the thread lacks the capabilities that let root read and write any file whatever its mode and listen on
    a port below 1024 (and gets them back afterwards)."""
    if os.geteuid() != 0:
        yield
        return
    before = _capabilities()
    _capabilities(before & ~(1 << CAP_DAC_OVERRIDE | 1 << CAP_DAC_READ_SEARCH | 1 << CAP_NET_BIND_SERVICE))
    try:
        yield
    finally:
        _capabilities(before)


@contextlib.contextmanager
def unreadable(path: Path) -> Iterator[None]:
    """`path` (a file) cannot be read by this thread while the block runs, as another user's private file cannot:
    mode 000, and `as_a_user`. Its mode comes back afterwards."""
    mode = path.stat().st_mode
    path.chmod(0)
    try:
        with as_a_user():
            try:
                path.open("rb").close()
            except PermissionError:
                pass
            else:
                raise AssertionError(f"{path} is still readable: this test cannot make a file unreadable here")
            yield
    finally:
        path.chmod(mode)


@contextlib.contextmanager
def read_only_folder(folder: Path) -> Iterator[None]:
    """`folder` cannot be written by this thread while the block runs: mode 555, and `as_a_user`."""
    mode = folder.stat().st_mode
    folder.chmod(0o555)
    try:
        with as_a_user():
            writable = os.access(folder, os.W_OK, effective_ids=True)
            assert not writable, f"{folder} is still writable: this test cannot prevent writes here"
            yield
    finally:
        folder.chmod(mode)


def catches(pid: int, signum: int) -> bool:
    """Whether process `pid` has a handler for `signum` (Linux's /proc/PID/status, SigCgt)."""
    status = Path(f"/proc/{pid}/status").read_text()
    caught = int(re.search(r"^SigCgt:\s*([0-9a-f]+)", status, re.MULTILINE).group(1), 16)
    return bool(caught >> (signum - 1) & 1)


class ServeProcess:
    """`python -m mnist_lightning serve ARGS` in a fresh process, its stdout and stderr collected line by line (so
    that it never blocks on a full pipe)."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        import threading

        command = [sys.executable, "-m", "mnist_lightning", "serve", *args]
        self.process = subprocess.Popen(
            command, env=env or subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line)

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def wait_for(self, text: str, timeout: float = 180) -> str:
        """Wait until a line holds `text`, and return that line; fail if the process ends first."""
        deadline = time.monotonic() + timeout
        while True:
            found = next((line for line in list(self.lines) if text in line), None)
            if found is not None:
                return found
            assert self.process.poll() is None, f"serve ended ({self.process.returncode}):\n{self.log[-3000:]}"
            assert time.monotonic() < deadline, f"no {text!r} from serve in {timeout} s:\n{self.log[-3000:]}"
            time.sleep(0.05)

    def url(self, timeout: float = 180) -> str:
        """The base URL, once uvicorn listens."""
        return re.search(r"Uvicorn running on (http://\S+)", self.wait_for("Uvicorn running on", timeout)).group(1)

    def stop(self, signum: int = 15, timeout: float = 60) -> int:
        """Send `signum` (default SIGTERM) and return the exit status; the whole log is complete afterwards."""
        if self.process.poll() is None:
            self.process.send_signal(signum)
        try:
            returncode = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise
        self._reader.join(timeout=10)
        return returncode
