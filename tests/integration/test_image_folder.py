"""`--data.image_folder ROOT` through every command, in this process, on a tiny folder of colour images of three
classes (one of them with a name beyond ASCII): fit sizes the network from the folder and records its facts; test,
predict (its test set and your own images, prepared by the folder's rule), export and serve use what the checkpoint
recorded; a folder of other classes is refused."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from contextlib import redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import anyio
import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from mnist_lightning import commands
from mnist_lightning.cli import cli_main
from mnist_lightning.datasets import IMAGE_FOLDER, RESIZE
from mnist_lightning.tools.serving.app import create_app
from mnist_lightning.tools.serving.serve import load_predictor
from tests.helpers import cli_context, encoded, one_line_error

CLASSES = ("blue", "green", "rötlich")
COLOURS = ((30, 60, 220), (40, 200, 60), (220, 50, 40))
RUN = ["--data.batch_size=20", "--model.hidden_sizes=[16]", "--trainer.max_epochs=2"]
RUN += ["--trainer.enable_progress_bar=false"]


def picture(colour: tuple[int, int, int], seed: int, size: tuple[int, int] = (18, 14)) -> Image.Image:
    """A noisy picture of one colour, `size` (height, width)."""
    noise = np.random.default_rng(seed).integers(-40, 40, (*size, 3))
    return Image.fromarray(np.clip(np.array(colour) + noise, 0, 255).astype(np.uint8))


def write_folder(root: Path, classes: tuple[str, ...] = CLASSES, per_class: int = 40) -> Path:
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            image = picture(COLOURS[c % 3], seed=100 * c + i, size=(18, 14) if i % 4 else (36, 28))
            image.save(root / name / f"{i}.{'png' if i % 2 else 'jpg'}")
    return root


@dataclass(frozen=True)
class Fitted:
    root: Path
    data_dir: Path
    best: Path
    hparams: dict


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fitted]:
    root = write_folder(tmp_path_factory.mktemp("folder") / "pictures")
    data_dir, workdir = tmp_path_factory.mktemp("folder-data"), tmp_path_factory.mktemp("folder-runs")
    with cli_context(data_dir, workdir):
        with redirect_stdout(io.StringIO()):
            cli = cli_main(["fit", f"--data.image_folder={root}", f"--data.data_dir={data_dir}", *RUN])
        best = Path(workdir, cli.trainer.checkpoint_callback.best_model_path).resolve()
        yield Fitted(root, data_dir, best, dict(cli.model.hparams))


def test_fit_sizes_the_network_from_the_folder_and_records_its_facts(fitted: Fitted) -> None:
    assert (fitted.hparams["input_size"], fitted.hparams["num_classes"]) == (3 * 18 * 14, 3)
    checkpoint = torch.load(fitted.best, weights_only=True)
    facts = checkpoint["MNISTDataModule"]["dataset"]
    assert facts == {"name": IMAGE_FOLDER, "image_shape": [3, 18, 14], "classes": list(CLASSES), "preparation": RESIZE}
    assert checkpoint["state_dict"]["normalize.mean"] == pytest.approx(fitted.hparams["mean"])
    assert len(list((fitted.data_dir / "image_folders").glob("pictures-*/all.pt"))) == 1


def test_test_and_predict_use_the_checkpoints_folder_dataset(fitted: Fitted) -> None:
    cli = cli_main(["test", f"--data.image_folder={fitted.root}", f"--data.data_dir={fitted.data_dir}"])
    assert cli.trainer.callback_metrics["test/acc"] > 0.5, "three colours are easy"
    cli = cli_main(["predict", f"--data.image_folder={fitted.root}", f"--data.data_dir={fitted.data_dir}"])
    rows = list(csv.DictReader((Path(cli.trainer.log_dir) / "predictions.csv").open(encoding="utf-8")))
    assert len(rows) == 12 and {row["prediction"] for row in rows} <= set(CLASSES)
    assert all(row["file"].split("/")[0] == row["label"] for row in rows), "each test image's file and label"


def test_your_own_images_are_prepared_by_the_folders_rule(
    fitted: Fitted, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    picture(COLOURS[2], seed=7, size=(90, 70)).save(tmp_path / "red.webp")
    picture(COLOURS[0], seed=8, size=(18, 14)).convert("RGBA").save(tmp_path / "blue.png")
    cli = cli_main(["predict", f"--ckpt_path={fitted.best}", f"--data.predict_path={tmp_path}"])
    assert cli.datamodule.predict_set.images.shape == (2, 3, 18, 14)
    printed = capsys.readouterr().out
    assert "rötlich" in printed and "blue" in printed, "class names printed"
    written = Path(cli.trainer.log_dir) / "predictions.csv"
    rows = {Path(row["file"]).name: row for row in csv.DictReader(written.open(encoding="utf-8"))}
    assert rows["red.webp"]["prediction"] == "rötlich" and rows["blue.png"]["prediction"] == "blue"


def test_a_folder_of_other_classes_is_refused(fitted: Fitted, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    other = write_folder(tmp_path / "other", classes=("cat", "dog", "rötlich"), per_class=6)
    args = ["test", f"--ckpt_path={fitted.best}", f"--data.image_folder={other}", f"--data.data_dir={tmp_path}"]
    line = one_line_error(capsys, args)
    assert "classes ['blue', 'green', 'rötlich']" in line and "['cat', 'dog', 'rötlich']" in line
    line = one_line_error(capsys, [*args[:2], f"--data.image_folder={fitted.root}", "--data.image_size=10"])
    assert "leave --data.image_size" in line


def test_export_and_serve_prepare_uploads_by_the_folders_rule(fitted: Fitted, tmp_path: Path) -> None:
    model = tmp_path / "pictures.onnx"
    with redirect_stdout(io.StringIO()):
        commands.main(["export", "--ckpt_path", str(fitted.best), "--output", str(model)])
    onnx = load_predictor(None, model, "onnxruntime")
    assert onnx.info == load_predictor(fitted.best, None, "torch").info
    assert (onnx.info.dataset, onnx.info.classes, onnx.info.image_shape) == (IMAGE_FOLDER, CLASSES, (3, 18, 14))
    assert onnx.info.preparation == RESIZE

    async def ask() -> tuple[dict, dict]:
        transport = httpx.ASGITransport(app=create_app(onnx))
        async with httpx.AsyncClient(transport=transport, base_url="http://serve") as client:
            health = await client.get("/health")
            answer = await client.post("/predict", content=encoded(picture(COLOURS[1], seed=9, size=(180, 140))))
            return health.json(), answer.json()

    health, answer = anyio.run(ask)
    assert health["classes"] == list(CLASSES) and health["preparation"] == RESIZE
    assert len(answer["image"]) == 18 and all(len(row) == 14 for row in answer["image"])
    assert answer["label"] == "green"
