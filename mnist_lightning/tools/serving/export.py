"""`python -m mnist_lightning export --ckpt_path X [--output PATH]`: a checkpoint as an ONNX model that checks itself.

The model takes float32 N×C×H×W images of its dataset's shape in [0, 1] (1×28×28 for MNIST: white digit on black, as
MNIST stores them), normalizes them as training did, and returns N×K class probabilities; its metadata names the
dataset, the classes, the image shape and the checkpoint's validation accuracy. Before anything is written,
onnxruntime predicts the whole official test set and must agree with the checkpoint's own predictions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from jsonargparse import ArgumentParser

from mnist_lightning.errors import ArgumentError, UserError
from mnist_lightning.files import write_atomically
from mnist_lightning.tools.serving.predictors import (
    INPUT_NAME,
    OUTPUT_NAME,
    ModelInfo,
    OnnxPredictor,
    ProbabilityModel,
    load_probability_model,
)

# onnxruntime and torch compute in float32 with different kernels: probabilities differ by about 1e-7.
TOLERANCE = 1e-4


class ExportMismatch(UserError):
    """The exported model does not predict what the checkpoint predicts."""


@dataclass(frozen=True)
class Agreement:
    """How the exported model compares with the checkpoint on the same images."""

    images: int
    same_predictions: int
    max_difference: float

    @property
    def agrees(self) -> bool:
        return self.same_predictions == self.images and self.max_difference <= TOLERANCE

    def __str__(self) -> str:
        return (
            f"onnxruntime agrees with the checkpoint on {self.same_predictions:,} of {self.images:,} images "
            f"({self.same_predictions / self.images:.2%}); largest probability difference {self.max_difference:.1e}"
        )


def parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="python -m mnist_lightning export",
        description="Write a checkpoint as an ONNX model, checked against the checkpoint on the official test set.",
    )
    parser.add_argument("--ckpt_path", type=Path, required=True, help="The checkpoint to export.")
    parser.add_argument(
        "--output", type=Path | None, default=None, help="Where to write the model (default: <checkpoint>.onnx)."
    )
    parser.add_argument("--overwrite", type=bool, default=False, help="Replace an existing file at --output.")
    parser.add_argument(
        "--data_dir",
        type=Path | None,
        default=None,
        help="Where the test set for the self-check lives (default: as for fit).",
    )
    return parser


def main(args: list[str]) -> None:
    config = parser().parse_args(args)
    output = config.output or config.ckpt_path.with_suffix(".onnx")
    if output.exists() and not config.overwrite:
        raise ArgumentError(f"--output {output} already exists: pass --overwrite true, or another --output")
    model, info = load_probability_model(config.ckpt_path)
    onnx_model = to_onnx(model, info)
    agreement = compare_on_test_set(model, onnx_model, info.dataset, config.data_dir)
    print(f"Official test set: {agreement}")
    require(agreement, config.ckpt_path)
    write_atomically(output, onnx_model, elsewhere="or pass --output PATH")
    accuracy = "" if info.val_accuracy is None else f", validation accuracy {info.val_accuracy:.4f}"
    shape = "×".join(map(str, info.image_shape))
    print(
        f"Wrote {output} ({len(onnx_model) / 1e6:.1f} MB): float32 N×{shape} images in [0, 1] → "
        f"N×{len(info.classes)} probabilities, {info.dataset}{accuracy}"
    )


def export_checked(ckpt_path: Path, images: int = 256) -> bytes:
    """The checkpoint as ONNX, checked on `images` random images rather than the test set (for `serve`)."""
    model, info = load_probability_model(ckpt_path)
    onnx_model = to_onnx(model, info)
    pixels = np.random.default_rng(0).random((images, *info.image_shape), dtype=np.float32)
    with torch.inference_mode():
        expected = model(torch.from_numpy(pixels)).numpy()
    require(compare(expected, onnx_model, pixels), ckpt_path)
    return onnx_model


def require(agreement: Agreement, ckpt_path: Path) -> None:
    if not agreement.agrees:
        raise ExportMismatch(
            f"the exported model disagrees with {ckpt_path} ({agreement}); nothing was written. This is a bug "
            f"in the exporter or onnxruntime (torch {torch.__version__}): please report it with the checkpoint"
        )


def to_onnx(model: ProbabilityModel, info: ModelInfo) -> bytes:
    """The model as a serialized ONNX graph with a dynamic batch axis and `info` in its metadata_props.

    torch.onnx's default exporter (torch.export-based) is used: the older TorchScript exporter still works in
    torch 2.x but warns that it will be removed. Without `dynamic_shapes` it would fix the batch size.
    """
    example = torch.zeros(2, *info.image_shape)
    program = torch.onnx.export(
        model,
        (example,),
        dynamo=True,
        dynamic_shapes=({0: torch.export.Dim("batch")},),
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        verbose=False,
    )
    program.model.metadata_props.update(info.metadata())
    return program.model_proto.SerializeToString()


def compare_on_test_set(model: ProbabilityModel, onnx_model: bytes, dataset: str, data_dir: Path | None) -> Agreement:
    """Predict the official test set with the checkpoint's network in torch and with onnxruntime on the exported
    model, and compare."""
    from mnist_lightning.data.module import MNISTDataModule

    data = MNISTDataModule(data_dir=data_dir, dataset=dataset)
    data.prepare_data()
    data.setup("test")
    pixels = data.test_set.images.float() / 255
    with torch.inference_mode():
        expected = model(pixels).numpy()
    return compare(expected, onnx_model, pixels.numpy())


def compare(expected: np.ndarray, onnx_model: bytes, pixels: np.ndarray) -> Agreement:
    """How onnxruntime's probabilities for `pixels` (N×C×H×W in [0, 1]) compare with the `expected` ones."""
    onnx_predictor = OnnxPredictor(onnx_model)
    # Batches of different sizes exercise the dynamic batch axis.
    actual = np.concatenate([onnx_predictor(batch) for batch in np.array_split(pixels, 7)])
    return Agreement(
        images=len(pixels),
        same_predictions=int((expected.argmax(axis=1) == actual.argmax(axis=1)).sum()),
        max_difference=float(np.abs(expected - actual).max()),
    )
