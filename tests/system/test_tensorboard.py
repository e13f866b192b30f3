"""The dashboard's panels served by a real TensorBoard server."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from mnist_lightning.cli import cli_main
from tests.helpers import TINY_RUN, free_port


def test_a_real_tensorboard_server_serves_the_run(synthetic_mnist: Path, workdir: Path) -> None:
    cli_main(["fit", f"--data.data_dir={synthetic_mnist}", *TINY_RUN])
    run = workdir / "lightning_logs" / "version_0"
    port = free_port()
    tensorboard = Path(sys.executable).parent / "tensorboard"
    server = subprocess.Popen(
        [str(tensorboard), "--logdir", str(run.parent), "--host", "127.0.0.1", f"--port={port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def get(path: str) -> object:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return json.load(response)

    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                runs = get("/data/runs")
                if runs:
                    break
            except OSError:
                pass
            assert server.poll() is None, "tensorboard exited"
            assert time.monotonic() < deadline, "tensorboard did not answer in 90 s"
            time.sleep(0.5)
        assert runs == ["version_0"]
        scalars = get("/data/plugin/scalars/tags")["version_0"]
        assert {"train/loss", "val/acc", "val/acc_best", "test/acc", "lr-Adam"} <= set(scalars)
        images = get("/data/plugin/images/tags")["version_0"]
        assert {"samples/train", "confusion_matrix/val", "misclassified/test", "weights/first_layer"} <= set(images)
    finally:
        server.terminate()
        server.wait(timeout=30)
