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

from mnist_lightning.datasets import DATASETS
from mnist_lightning.errors import ArgumentError, UserError
from mnist_lightning.files import check_writable, write_atomically
from mnist_lightning.flag_errors import flag_parser, parse
from mnist_lightning.tools.serving.native import signals_held
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
    parser = flag_parser(
        "python -m mnist_lightning export",
        "Write a checkpoint as an ONNX model, checked against the checkpoint on the official test set.",
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
    config = parse(parser(), args)
    output = config.output or config.ckpt_path.with_suffix(".onnx")
    if config.output is None and config.ckpt_path.suffix == ".onnx":
        load_probability_model(config.ckpt_path)  # an exported model, or a broken file, is refused in its own words
        raise ArgumentError(
            f"--ckpt_path {config.ckpt_path} ends in .onnx, the name export would write the model to: pass --output "
            "PATH.onnx"
        )
    # Everything the user can get wrong is checked before the slow part (the export, 5-30 s): where the model goes,
    # the checkpoint, the test set.
    check_output(output, config.ckpt_path, config.overwrite)
    model, info = load_probability_model(config.ckpt_path)
    pixels = official_test_set(info, config.data_dir)
    onnx_model = to_onnx(model, info)
    if pixels is None:
        agreement = compare_with_torch(model, onnx_model, random_images(info))
        print(f"Random images ({info.dataset} is not a dataset known here: its test set cannot be read): {agreement}")
    else:
        agreement = compare_with_torch(model, onnx_model, pixels)
        print(f"Official test set: {agreement}")
    require(agreement, config.ckpt_path)
    write_atomically(output, onnx_model, elsewhere=ELSEWHERE)
    accuracy = "" if info.val_accuracy is None else f", validation accuracy {info.val_accuracy:.4f}"
    shape = "×".join(map(str, info.image_shape))
    print(
        f"Wrote {output} ({len(onnx_model) / 1e6:.1f} MB): float32 N×{shape} images in [0, 1] → "
        f"N×{len(info.classes)} probabilities, {info.dataset}{accuracy}"
    )


ELSEWHERE = "or pass --output PATH"


def check_output(output: Path, ckpt_path: Path, overwrite: bool) -> None:
    """Refuse, in one line and before anything is exported, an `--output` that cannot or must not be written: a
    folder, a name that is not a .onnx file's, an existing file (without --overwrite), a folder that cannot be
    written. (A full disk shows only when the model is written; `write_atomically` then says so, and keeps what was
    there.)"""
    if output.is_dir():
        raise ArgumentError(
            f"--output {output} is a folder: pass the model's file name, e.g. --output {output / ckpt_path.stem}.onnx"
        )
    if output.suffix != ".onnx":
        raise ArgumentError(
            f"--output {output} does not end in .onnx, as an ONNX model's name does (and a checkpoint's never): pass "
            f"--output {output.with_suffix('.onnx')}"
        )
    if output.exists() and output.resolve() == ckpt_path.resolve():
        raise ArgumentError(f"--output {output} is --ckpt_path itself: pass another --output, ending in .onnx")
    if output.exists() and not overwrite:
        raise ArgumentError(f"--output {output} already exists: pass --overwrite true, or another --output")
    check_writable(output, ELSEWHERE)


def official_test_set(info: ModelInfo, data_dir: Path | None) -> np.ndarray | None:
    """The official test set of the model's dataset as float32 N×C×H×W in [0, 1] (fetched like `fit` fetches it),
    or None when this installation does not know the dataset (a checkpoint of a dataset registered elsewhere)."""
    from mnist_lightning.data.sources import default_data_dir, read_split

    if info.dataset not in DATASETS or DATASETS[info.dataset].image_shape != info.image_shape:
        return None
    elsewhere = "or pass --data_dir DIR (or set MNIST_LIGHTNING_DATA) for another data folder"
    images, _ = read_split(DATASETS[info.dataset], data_dir or default_data_dir(), "t10k", elsewhere)
    return (images.float() / 255).numpy()


def random_images(info: ModelInfo, images: int = 256) -> np.ndarray:
    return np.random.default_rng(0).random((images, *info.image_shape), dtype=np.float32)


def export_checked(model: ProbabilityModel, info: ModelInfo, ckpt_path: Path, images: int = 256) -> bytes:
    """The checkpoint's model as ONNX, checked on `images` random images rather than the test set (for `serve`)."""
    onnx_model = to_onnx(model, info)
    require(compare_with_torch(model, onnx_model, random_images(info, images)), ckpt_path)
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
    with signals_held():  # a stop signal in the exporter can crash the process or be lost: see native.py
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


def compare_with_torch(model: ProbabilityModel, onnx_model: bytes, pixels: np.ndarray) -> Agreement:
    """Predict `pixels` with the checkpoint's network in torch and with onnxruntime on the exported model, and
    compare."""
    with torch.inference_mode():
        expected = model(torch.from_numpy(pixels)).numpy()
    return compare(expected, onnx_model, pixels)


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
