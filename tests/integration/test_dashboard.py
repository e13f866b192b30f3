"""The dashboard's TensorBoard panels and PNG figures, read back with TensorBoard's own reader."""

from __future__ import annotations

from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mnist_lightning.cli import cli_main
from tests.helpers import cli_context

EPOCHS = 2


SMALL_RUN = ["--data.val_size=200", "--data.batch_size=50", "--model.hidden_sizes=[32]"]
SMALL_RUN += [f"--trainer.max_epochs={EPOCHS}", "--trainer.enable_progress_bar=false"]


def fit(data_dir: Path, *args: str) -> Path:
    """`fit` of two epochs in the working folder, with `args`: its run folder."""
    cli_main(["fit", f"--data.data_dir={data_dir}", *SMALL_RUN, *args])
    return Path("lightning_logs", "version_0").resolve()


@pytest.fixture(scope="module")
def run(synthetic_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run folder of one fit with every panel on, which the tests only read."""
    with cli_context(synthetic_dir, tmp_path_factory.mktemp("dashboard")):
        return fit(synthetic_dir)


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


def test_each_panel_can_be_switched_off(synthetic_mnist: Path, workdir: Path) -> None:
    run = fit(synthetic_mnist, "--dashboard.confusion_matrix=false", "--dashboard.histograms=false")
    tags = events(run).Tags()
    assert not any(tag.startswith("confusion_matrix") for tag in tags["images"])
    assert "misclassified/test" in tags["images"] and not tags["histograms"]
    assert not (run / "confusion_matrix_test.png").exists()


def test_with_a_csv_logger_only_the_png_figures_are_drawn(synthetic_mnist: Path, workdir: Path) -> None:
    fit(synthetic_mnist, "--trainer.logger=lightning.pytorch.loggers.CSVLogger")
    run = workdir / "lightning_logs" / "version_0"
    assert (run / "metrics.csv").exists()
    assert {path.name for path in run.glob("*.png")} == {
        "confusion_matrix_val.png",
        "confusion_matrix_test.png",
        "misclassified_test.png",
    }
    assert not list(run.glob("events.out.tfevents.*"))
