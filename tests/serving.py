"""Session fixtures shared by the export, serve and browser tests: one tiny checkpoint trained on synthetic data, its
ONNX export, and one `serve` process on a free loopback port. (Registered in tests/conftest.py.)"""

from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from mnist_lightning.sources import DATASETS
from tests.synthetic import subprocess_env, trust_synthetic_mnist

# A real model to serve instead of the synthetic one, e.g. for docs/serve-page.png (see docs/serving.md).
REAL_MODEL_VARIABLE = "MNIST_LIGHTNING_TEST_SERVE_MODEL"


@dataclass(frozen=True)
class Exported:
    checkpoint: Path
    model: Path
    printed: str


@contextlib.contextmanager
def synthetic_as_mnist(data_dir: Path) -> Iterator[None]:
    """This process accepts the synthetic files in `data_dir` as MNIST, until the block ends."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(DATASETS, "mnist", DATASETS["mnist"])
        trust_synthetic_mnist(data_dir)
        yield


@pytest.fixture(scope="session")
def tiny_checkpoint(synthetic_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The best checkpoint of a 784-32-10 network fitted for one epoch on the synthetic data, as `fit` saves it
    (fitted in this process: a `fit` subprocess would spend most of its time starting up)."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    from mnist_lightning import MNISTClassifier, MNISTDataModule

    checkpoints = ModelCheckpoint(tmp_path_factory.mktemp("serving-fit"), monitor="val/acc", mode="max")
    trainer = L.Trainer(
        max_epochs=1, logger=False, callbacks=[checkpoints], enable_progress_bar=False, enable_model_summary=False
    )
    with synthetic_as_mnist(synthetic_dir):
        data = MNISTDataModule(data_dir=synthetic_dir, val_size=200, batch_size=50)
        trainer.fit(MNISTClassifier(hidden_sizes=[32]), data)
    return Path(checkpoints.best_model_path)


@pytest.fixture(scope="session")
def exported(tiny_checkpoint: Path, synthetic_dir: Path) -> Exported:
    """`export --ckpt_path <tiny checkpoint>` run in this process (the synthetic data trusted as MNIST meanwhile)."""
    from mnist_lightning import export  # needs the `serve` extra, which the rest of the tests do not

    printed = io.StringIO()
    with synthetic_as_mnist(synthetic_dir), contextlib.redirect_stdout(printed):
        export.main(["--ckpt_path", str(tiny_checkpoint), "--data_dir", str(synthetic_dir)])
    return Exported(tiny_checkpoint, tiny_checkpoint.with_suffix(".onnx"), printed.getvalue())


@pytest.fixture(scope="session")
def server(exported: Exported) -> Iterator[str]:
    """The base URL of `python -m mnist_lightning serve --model <export> --port 0` (default host), running; it must
    never answer 500 or log a traceback."""
    model = os.environ.get(REAL_MODEL_VARIABLE) or str(exported.model)
    command = [sys.executable, "-m", "mnist_lightning", "serve", "--model", model, "--port", "0"]
    process = subprocess.Popen(
        command, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines: list[str] = []
    found = threading.Event()

    def read_log() -> None:  # keeps draining its output so that the server never blocks on a full pipe
        for line in process.stdout:
            lines.append(line)
            if "Uvicorn running on" in line:
                found.set()

    threading.Thread(target=read_log, daemon=True).start()
    try:
        assert found.wait(timeout=180), "serve did not start:\n" + "".join(lines)[-3000:]
        url = re.search(r"Uvicorn running on (http://\S+)", "".join(lines)).group(1)
        yield url
        assert process.poll() is None, "serve died during the tests:\n" + "".join(lines)[-3000:]
        server_errors = [line for line in lines if '" 500' in line or "Traceback" in line]
        assert not server_errors, "the server answered 500 or raised:\n" + "".join(lines)[-3000:]
    finally:
        process.terminate()
        process.wait(timeout=30)
