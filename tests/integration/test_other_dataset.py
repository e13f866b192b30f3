"""A dataset of another image size and class count, registered with one `register_dataset` call (docs/architecture.md):
5 classes of 20×20 images, through every command: the network is sized from it, checkpoints record it, and
validate, test, predict (the test set and your own images), export and serve use what the checkpoint recorded."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from contextlib import redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import anyio
import httpx
import pytest
import torch

from mnist_lightning.cli import cli_main
from mnist_lightning.datasets import DATASETS, IDX_FILES, DatasetSpec, register_dataset
from mnist_lightning.tools.serving import export
from mnist_lightning.tools.serving.app import create_app
from mnist_lightning.tools.serving.predictors import ModelInfo
from mnist_lightning.tools.serving.serve import load_predictor
from tests.helpers import cli_context, drawing, drawn_seven, encoded, write_synthetic_mnist

SHAPES = DatasetSpec(
    name="shapes",
    folder="Shapes",
    image_shape=(1, 20, 20),
    classes=("circle", "square", "triangle", "cross", "star"),
    mean=0.35,
    std=0.3,
    sha256=dict.fromkeys(IDX_FILES, "0" * 64),  # the synthetic files' own, once written (cli_context trusts them)
)
RUN = ["--data.val_size=100", "--data.batch_size=50", "--model.hidden_sizes=[16]", "--trainer.max_epochs=2"]
RUN += ["--trainer.enable_progress_bar=false"]


@dataclass(frozen=True)
class Fitted:
    data_dir: Path
    workdir: Path
    best: Path
    hparams: dict


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fitted]:
    """The dataset registered, 600 training and 100 test images of it written and trusted, and one `fit` on it; the
    working folder is its folder while this module's tests run."""
    data_dir, workdir = tmp_path_factory.mktemp("shapes-data"), tmp_path_factory.mktemp("shapes-runs")
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(DATASETS, SHAPES.name, SHAPES)  # removed again after the module
        register_dataset(SHAPES, replace_existing=True)
        write_synthetic_mnist(data_dir, train=600, test=100, dataset=SHAPES.name)
        with cli_context(data_dir, workdir), redirect_stdout(io.StringIO()):
            cli = cli_main(["fit", f"--data.data_dir={data_dir}", f"--data.dataset={SHAPES.name}", *RUN])
        best = Path(workdir, cli.trainer.checkpoint_callback.best_model_path).resolve()
        with cli_context(data_dir, workdir):
            yield Fitted(data_dir, workdir, best, dict(cli.model.hparams))


def test_fit_sizes_the_network_from_the_dataset_and_its_checkpoints_record_it(fitted: Fitted) -> None:
    assert (fitted.hparams["input_size"], fitted.hparams["num_classes"]) == (400, 5)
    recorded = torch.load(fitted.best, weights_only=True)["MNISTDataModule"]["dataset"]
    assert recorded == SHAPES.facts()
    run = fitted.best.parent.parent
    assert (run / "confusion_matrix_test.png").is_file() and (run / "misclassified_test.png").is_file()


@pytest.mark.parametrize("subcommand", ["validate", "test", "predict"])
def test_evaluating_the_checkpoint_uses_its_dataset_without_being_told(fitted: Fitted, subcommand: str) -> None:
    args = [f"--data.data_dir={fitted.data_dir}", "--data.val_size=100", "--trainer.enable_progress_bar=false"]
    cli = cli_main([subcommand, *args])
    assert Path(cli.trainer.ckpt_path).resolve() == fitted.best
    assert cli.datamodule.spec.name == SHAPES.name and cli.datamodule.spec.image_shape == (1, 20, 20)
    if subcommand == "test":
        assert cli.trainer.callback_metrics["test/acc"] > 0.5, "the synthetic classes are easy"
    if subcommand == "predict":
        run = Path(cli.trainer.log_dir)
        rows = list(csv.DictReader((run / "predictions.csv").open()))
        assert len(rows) == 100 and {row["label"] for row in rows} == set(SHAPES.classes), "classes by name"
        assert {row["prediction"] for row in rows} <= set(SHAPES.classes)


def test_your_own_images_are_prepared_at_the_datasets_size(fitted: Fitted, tmp_path: Path) -> None:
    drawn_seven().save(tmp_path / "seven.png")
    drawing(3).save(tmp_path / "strokes.png")
    cli = cli_main(["predict", f"--data.data_dir={fitted.data_dir}", f"--data.predict_path={tmp_path}"])
    assert cli.datamodule.predict_set.images.shape == (2, 1, 20, 20)
    rows = list(csv.DictReader((Path(cli.trainer.log_dir) / "predictions.csv").open()))
    assert [Path(row["file"]).name for row in rows] == ["seven.png", "strokes.png"]
    assert all(row["prediction"] in SHAPES.classes for row in rows)


def test_export_and_serve_answer_with_the_datasets_shape_and_classes(fitted: Fitted) -> None:
    export.main(["--ckpt_path", str(fitted.best), "--data_dir", str(fitted.data_dir)])
    onnx = load_predictor(None, fitted.best.with_suffix(".onnx"), "onnxruntime")
    torch_runtime = load_predictor(fitted.best, None, "torch")
    assert onnx.info == torch_runtime.info
    assert (onnx.info.dataset, onnx.info.classes, onnx.info.image_shape) == ("shapes", SHAPES.classes, (1, 20, 20))
    assert isinstance(onnx.info, ModelInfo) and 0 <= onnx.info.val_accuracy <= 1

    async def ask() -> tuple[dict, dict]:  # the app in this process, without a server
        transport = httpx.ASGITransport(app=create_app(onnx))
        async with httpx.AsyncClient(transport=transport, base_url="http://serve") as client:
            health = await client.get("/health")
            answer = await client.post("/predict", content=encoded(drawing(0)))
            return health.json(), answer.json()

    health, answer = anyio.run(ask)
    assert health["image_shape"] == [1, 20, 20] and health["classes"] == list(SHAPES.classes)
    assert len(answer["image"]) == 20 and all(len(row) == 20 for row in answer["image"])
    assert len(answer["probabilities"]) == 5 and answer["label"] == SHAPES.classes[answer["digit"]]
