"""Tiny MNIST-format datasets that the tests write themselves, and a way to run the CLI on them.

Each class is a fixed random pattern plus per-image noise, so a small MLP learns it in a few steps and every image
is distinct. The real MNIST digests are replaced by the synthetic files' own, in this process or in a subprocess
started with `cli_command()` (see tests/site/sitecustomize.py).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from mnist_lightning.idx import write_idx
from mnist_lightning.sources import DATASETS, IDX_FILES, sha256_of

REPO_ROOT = Path(__file__).resolve().parent.parent
DIGESTS_FILE = "synthetic-digests.json"


def synthetic_arrays(count: int, seed: int, mislabelled: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """`count` images and labels; a fraction `mislabelled` of the labels is wrong, so no model is perfect."""
    patterns = np.random.default_rng(0).random((10, 28, 28)) > 0.7
    rng = np.random.default_rng(seed)
    labels = np.arange(count, dtype=np.uint8) % 10
    rng.shuffle(labels)
    noise = rng.integers(0, 90, size=(count, 28, 28))
    images = np.clip(noise + 160 * patterns[labels], 0, 255).astype(np.uint8)
    wrong = rng.random(count) < mislabelled
    labels[wrong] = (labels[wrong] + 1 + rng.integers(0, 9, size=wrong.sum())) % 10
    return images, labels


def write_synthetic_mnist(data_dir: Path, train: int = 1200, test: int = 300, dataset: str = "mnist") -> Path:
    """Write the four IDX files of `dataset` under its raw folder in `data_dir`, with their digests beside them;
    return that folder."""
    raw = DATASETS[dataset].raw_dir(data_dir)
    # Some test labels are wrong, so that test accuracy is below 1 and there are mistakes to show.
    for prefix, count, seed, mislabelled in (("train", train, 1, 0.0), ("t10k", test, 2, 0.05)):
        images, labels = synthetic_arrays(count, seed, mislabelled)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    digests = {name: sha256_of(raw / name) for name in IDX_FILES}
    (raw / DIGESTS_FILE).write_text(json.dumps(digests))
    return raw


def trust_synthetic_mnist(data_dir: Path) -> None:
    """Make this process accept the synthetic files in `data_dir` as the datasets they stand for (and never fetch
    anything)."""
    for name, spec in DATASETS.items():
        digests = Path(spec.raw_dir(data_dir)) / DIGESTS_FILE
        if digests.is_file():
            DATASETS[name] = dataclasses.replace(spec, sha256=json.loads(digests.read_text()), sources=())


def cli_command(data_dir: Path, *args: str) -> list[str]:
    """`python -m mnist_lightning ARGS` in a fresh process that accepts the synthetic data in `data_dir` as MNIST.

    Run it with `env=subprocess_env()`, which puts tests/site/sitecustomize.py on the path.
    """
    variable = f"MNIST_LIGHTNING_TEST_SYNTHETIC={data_dir}"
    return ["env", variable, sys.executable, "-m", "mnist_lightning", *args, f"--data.data_dir={data_dir}"]


def subprocess_env() -> dict[str, str]:
    path = os.pathsep.join([str(REPO_ROOT / "tests" / "site"), str(REPO_ROOT)])
    return {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1"}


def run_cli(data_dir: Path, cwd: Path, *args: str) -> str:
    """Run `cli_command(data_dir, *args)` in `cwd`, require success, and return everything it printed."""
    result = subprocess.run(
        cli_command(data_dir, *args), cwd=cwd, env=subprocess_env(), capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-4000:]
    return result.stdout + result.stderr


def printed_test_accuracy(output: str) -> str:
    """The last test/acc in Lightning's printed results table, as printed."""
    return re.findall(r"test/acc\s+([0-9.]+)", output)[-1]


def one_line_error(capture: Any, args: list[str]) -> str:
    """Run `cli_main(args)` in this process and require exit status 2, no traceback and exactly one `error:` line on
    stderr; return that line. `capture` is pytest's capsys or capfd."""
    import pytest

    from mnist_lightning.cli import cli_main

    with pytest.raises(SystemExit) as exit_info:
        cli_main(args)
    output = capture.readouterr()
    assert exit_info.value.code == 2, output.out[-2000:] + output.err[-2000:]
    assert "Traceback" not in output.err + output.out
    errors = [line for line in output.err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, output.err[-2000:]
    return errors[0]
