"""The TensorBoard panels, read back with TensorBoard's own reader and served by a real TensorBoard server."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mnist_lightning.cli import cli_main

EPOCHS = 2
SMALL_RUN = ["--data.val_size=200", "--data.batch_size=50", "--model.hidden_sizes=[32]"]
SMALL_RUN += [f"--trainer.max_epochs={EPOCHS}", "--trainer.enable_progress_bar=false"]


@pytest.fixture(autouse=True)
def no_pytest_argv(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["mnist-lightning"])


def fit(synthetic_mnist: Path, workdir: Path, monkeypatch: pytest.MonkeyPatch, *args: str) -> Path:
    monkeypatch.chdir(workdir)
    cli_main(["fit", f"--data.data_dir={synthetic_mnist}", *SMALL_RUN, *args])
    return workdir / "lightning_logs" / "version_0"


@pytest.fixture
def run(synthetic_mnist: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return fit(synthetic_mnist, tmp_path, monkeypatch)


def events(run: Path) -> EventAccumulator:
    accumulator = EventAccumulator(str(run), size_guidance={"images": 0, "histograms": 0, "scalars": 0})
    accumulator.Reload()
    return accumulator


def test_every_panel_is_logged_at_the_right_steps(run: Path) -> None:
    accumulator = events(run)
    per_epoch = ["train/loss", "train/acc", "val/loss", "val/acc", "val/acc_best", "train/samples_per_sec", "lr-Adam"]
    for tag in per_epoch:
        assert len(accumulator.Scalars(tag)) == EPOCHS, tag
    for tag in ["test/acc", "test/loss"]:
        assert len(accumulator.Scalars(tag)) == 1, tag
    assert [event.value for event in accumulator.Scalars("lr-Adam")] == pytest.approx([1e-3] * EPOCHS)
    assert all(event.value > 0 for event in accumulator.Scalars("train/samples_per_sec"))

    images = {tag: len(accumulator.Images(tag)) for tag in accumulator.Tags()["images"]}
    assert images == {
        "samples/train": 1,
        "confusion_matrix/val": EPOCHS,
        "confusion_matrix/test": 1,
        "misclassified/test": 1,
        "weights/first_layer": EPOCHS,
    }
    histograms = accumulator.Tags()["histograms"]
    assert set(histograms) == {f"parameters/net.{i}.{kind}" for i in (1, 3) for kind in ("weight", "bias")}
    assert all(len(accumulator.Histograms(tag)) == EPOCHS for tag in histograms)


def test_the_hparams_tab_lists_the_hyperparameters_and_the_two_metrics(run: Path) -> None:
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = events(run).PluginTagToContent("hparams")
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert {info.name.tag for info in experiment.metric_infos} == {"val/acc_best", "test/acc"}
    assert {"hidden_sizes", "lr", "batch_size", "dropout"} <= {info.name for info in experiment.hparam_infos}
    session = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    assert session.session_start_info.hparams["hidden_sizes"].string_value == "[32]"


def test_the_confusion_matrix_and_mistakes_are_saved_as_png(run: Path) -> None:
    for name in ("confusion_matrix_val.png", "confusion_matrix_test.png", "misclassified_test.png"):
        assert (run / name).read_bytes().startswith(b"\x89PNG"), name


def test_each_panel_can_be_switched_off(synthetic_mnist: Path, tmp_path: Path, monkeypatch) -> None:
    run = fit(
        synthetic_mnist,
        tmp_path,
        monkeypatch,
        "--dashboard.confusion_matrix=false",
        "--dashboard.histograms=false",
    )
    tags = events(run).Tags()
    assert not any(tag.startswith("confusion_matrix") for tag in tags["images"])
    assert "misclassified/test" in tags["images"] and not tags["histograms"]
    assert not (run / "confusion_matrix_test.png").exists()


def test_with_a_csv_logger_only_the_png_figures_are_drawn(synthetic_mnist: Path, tmp_path: Path, monkeypatch) -> None:
    fit(synthetic_mnist, tmp_path, monkeypatch, "--trainer.logger=lightning.pytorch.loggers.CSVLogger")
    run = tmp_path / "lightning_logs" / "version_0"
    assert (run / "metrics.csv").exists()
    assert {path.name for path in run.glob("*.png")} == {
        "confusion_matrix_val.png",
        "confusion_matrix_test.png",
        "misclassified_test.png",
    }
    assert not list(run.glob("events.out.tfevents.*"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_real_tensorboard_server_serves_the_run(run: Path) -> None:
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
