"""`export` and the predictors `serve` runs, in this process on the session's tiny checkpoint: the self-check and its
refusal, the metadata, the dynamic batch axis, batch norm, and every way to load a model."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from mnist_lightning import commands
from mnist_lightning.data.images import prepare_digit
from mnist_lightning.datasets import DATASETS
from mnist_lightning.errors import ArgumentError, CheckpointError
from mnist_lightning.model import MNISTClassifier
from mnist_lightning.runs.checkpoints import DATAMODULE_STATE
from mnist_lightning.tools.serving import export
from mnist_lightning.tools.serving.predictors import OnnxPredictor, TorchPredictor
from mnist_lightning.tools.serving.serve import load_predictor
from tests.helpers import Exported, drawing, encoded, one_line_error, synthetic_arrays


def test_export_checks_itself_on_the_whole_test_set_and_says_so(exported: Exported) -> None:
    match = re.search(r"agrees with the checkpoint on (\d+) of (\d+) images.*difference ([0-9.e+-]+)", exported.printed)
    assert match, exported.printed
    assert match.group(1) == match.group(2) == "300", "all of the synthetic test set"
    assert float(match.group(3)) < export.TOLERANCE
    assert f"Wrote {exported.model}" in exported.printed
    assert sorted(p.name for p in exported.model.parent.iterdir() if p.name.startswith(".")) == []


def test_metadata_names_dataset_classes_and_the_checkpoints_validation_accuracy(exported: Exported) -> None:
    metadata = {p.key: p.value for p in onnx.load(exported.model).metadata_props}
    callbacks = torch.load(exported.checkpoint, weights_only=True)["callbacks"]
    (val_acc,) = [s["current_score"] for name, s in callbacks.items() if s.get("monitor") == "val/acc"]
    assert metadata["dataset"] == "mnist"
    assert json.loads(metadata["classes"]) == [str(digit) for digit in range(10)]
    assert float(metadata["val_accuracy"]) == pytest.approx(float(val_acc), abs=1e-6)


def test_any_batch_size_gives_each_image_the_checkpoints_probabilities(exported: Exported) -> None:
    graph_input = onnx.load(exported.model).graph.input[0]
    assert graph_input.type.tensor_type.shape.dim[0].dim_param, "the batch axis is symbolic"
    images, _ = synthetic_arrays(9, seed=5)
    pixels = (images[:, None] / 255).astype(np.float32)
    onnx_model, torch_model = OnnxPredictor(exported.model), TorchPredictor.from_checkpoint(exported.checkpoint)
    one_by_one = np.concatenate([onnx_model(pixels[i : i + 1]) for i in range(9)])
    np.testing.assert_allclose(onnx_model(pixels), one_by_one, atol=1e-6)
    np.testing.assert_allclose(onnx_model(pixels), torch_model(pixels), atol=1e-5)
    np.testing.assert_allclose(one_by_one.sum(axis=1), 1, atol=1e-5)


def tampered(model: bytes) -> bytes:
    """The model with its first weight matrix slightly changed: a graph that no longer matches the checkpoint."""
    proto = onnx.load_from_string(model)
    weights = max(proto.graph.initializer, key=lambda tensor: np.prod(tensor.dims))
    array = numpy_helper.to_array(weights).copy()
    array[: len(array) // 2] *= -1
    weights.CopyFrom(numpy_helper.from_array(array, weights.name))
    return proto.SerializeToString()


def test_a_model_that_disagrees_is_refused_in_one_line_and_nothing_is_written(
    exported: Exported, synthetic_mnist: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    good = exported.model.read_bytes()
    monkeypatch.setattr(export, "to_onnx", lambda model, info: tampered(good))
    output = tmp_path / "model.onnx"
    args = [
        "export",
        "--ckpt_path",
        str(exported.checkpoint),
        "--output",
        str(output),
        "--data_dir",
        str(synthetic_mnist),
    ]
    error = one_line_error(capsys, args, main=commands.main, alone=True)
    assert error.startswith("error: the exported model disagrees with"), error
    assert "nothing was written" in error
    assert list(tmp_path.iterdir()) == []


def test_an_existing_output_is_kept_unless_overwrite(exported: Exported, tmp_path: Path) -> None:
    output = tmp_path / "mine.onnx"
    output.write_text("someone's file")
    with pytest.raises(ArgumentError, match="already exists: pass --overwrite true"):
        export.main(["--ckpt_path", str(exported.checkpoint), "--output", str(output)])
    assert output.read_text() == "someone's file"
    with pytest.raises(CheckpointError, match="no such file"):
        export.main(["--ckpt_path", str(tmp_path / "missing.ckpt")])


def test_a_batch_norm_network_exports_in_eval_mode(synthetic_mnist: Path, tmp_path: Path, capsys) -> None:
    model = MNISTClassifier(hidden_sizes=[16, 16], batch_norm=True, dropout=0.2)
    generator = torch.Generator().manual_seed(0)
    for layer in model.net:
        if isinstance(layer, torch.nn.BatchNorm1d):  # running statistics far from a batch's own
            layer.running_mean.copy_(torch.randn(16, generator=generator))
            layer.running_var.copy_(torch.rand(16, generator=generator) * 4 + 0.5)
    checkpoint = tmp_path / "bn.ckpt"
    hparams = dict(model.hparams)
    torch.save(
        {
            "state_dict": model.state_dict(),
            "hyper_parameters": hparams,
            DATAMODULE_STATE: {"dataset": DATASETS["mnist"].facts()},
        },
        checkpoint,
    )
    export.main(["--ckpt_path", str(checkpoint), "--data_dir", str(synthetic_mnist)])
    assert "on 300 of 300 images (100.00%)" in capsys.readouterr().out
    assert "val_accuracy" not in {p.key for p in onnx.load(tmp_path / "bn.onnx").metadata_props}


def test_every_way_to_load_a_model_predicts_the_same(exported: Exported, capsys) -> None:
    digits = np.stack([prepare_digit(encoded(drawing(seed))).numpy() for seed in range(4)])
    pixels = digits.astype(np.float32) / 255
    from_file = load_predictor(None, exported.model, "onnxruntime")
    exported_in_memory = load_predictor(exported.checkpoint, None, "onnxruntime")  # serve --ckpt_path
    torch_runtime = load_predictor(exported.checkpoint, None, "torch")
    assert [p.runtime for p in (from_file, exported_in_memory, torch_runtime)] == ["onnxruntime"] * 2 + ["torch"]
    assert "Exporting" in capsys.readouterr().out
    for predictor in (exported_in_memory, torch_runtime):
        np.testing.assert_allclose(predictor(pixels), from_file(pixels), atol=1e-5)
        assert predictor.info == from_file.info


def test_flags_that_cannot_work_are_refused(exported: Exported, tmp_path: Path) -> None:
    with pytest.raises(ArgumentError, match="either --ckpt_path CHECKPOINT or --model"):
        load_predictor(None, None, "onnxruntime")
    with pytest.raises(ArgumentError, match="either --ckpt_path CHECKPOINT or --model"):
        load_predictor(exported.checkpoint, exported.model, "onnxruntime")
    with pytest.raises(ArgumentError, match="--runtime torch needs --ckpt_path"):
        load_predictor(None, exported.model, "torch")
    with pytest.raises(CheckpointError, match="no such file"):  # the file, not a flag: refused by read_model_file
        load_predictor(None, tmp_path / "missing.onnx", "onnxruntime")
