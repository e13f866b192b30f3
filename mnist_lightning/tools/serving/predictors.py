"""A trained classifier outside Lightning: the network with its normalization and a softmax as one module, and the two
ways to run it on images in [0, 1] — onnxruntime on an exported model, or torch on a checkpoint.

Both predictors take float32 N×C×H×W arrays of their dataset's image shape (1×28×28 for MNIST: white digit on
black, as MNIST stores it) and return N×K class probabilities; `export` checks one against the other, and `serve`
runs either. What a model was trained on (dataset, classes, image shape) comes from its checkpoint, or from the
exported model's metadata, with how your own images become its input (`preparation`: MNIST's digit preparation, or an
image folder's conversion and resize; see mnist_lightning.data.images).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from mnist_lightning.datasets import DIGIT, RESIZE, DatasetSpec
from mnist_lightning.errors import CheckpointError, first_line
from mnist_lightning.tools.serving.native import signals_held

INPUT_NAME = "images"
OUTPUT_NAME = "probabilities"


@dataclass(frozen=True)
class ModelInfo:
    """What a model was trained for, stored in the ONNX model's metadata_props."""

    dataset: str
    classes: tuple[str, ...]
    image_shape: tuple[int, int, int]
    val_accuracy: float | None
    preparation: str = DIGIT  # how an image of the user's becomes its input (data.images.PREPARATIONS)

    @classmethod
    def of(cls, spec: DatasetSpec, val_accuracy: float | None) -> ModelInfo:
        return cls(spec.name, spec.classes, spec.image_shape, val_accuracy, spec.preparation)

    def metadata(self) -> dict[str, str]:
        metadata = {
            "dataset": self.dataset,
            "classes": json.dumps(list(self.classes)),
            "image_shape": json.dumps(list(self.image_shape)),
        }
        if self.val_accuracy is not None:
            metadata["val_accuracy"] = f"{self.val_accuracy:.6f}"
        if self.preparation != DIGIT:  # recorded where it is not MNIST's, as before there were others
            metadata["preparation"] = self.preparation
        return metadata

    @classmethod
    def from_metadata(cls, metadata: dict[str, str]) -> ModelInfo:
        """The info an exported model's metadata records."""
        accuracy = metadata.get("val_accuracy")
        shape = tuple(int(size) for size in json.loads(metadata["image_shape"]))
        classes = json.loads(metadata["classes"])
        preparation = metadata.get("preparation", DIGIT)
        if not isinstance(classes, list) or not classes or len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"classes {metadata['classes']}, image shape {list(shape)}")
        if preparation not in (DIGIT, RESIZE):
            raise ValueError(f"preparation {preparation!r}")
        return cls(
            str(metadata["dataset"]),
            tuple(str(name) for name in classes),
            shape,
            None if accuracy is None else float(accuracy),
            preparation,
        )


class ProbabilityModel(nn.Module):
    """A classifier's network, with the normalization it was trained with, in front of a softmax: images in [0, 1] in,
    class probabilities out. This is the graph `export` writes."""

    def __init__(self, normalize: nn.Module, net: nn.Module) -> None:
        super().__init__()
        self.normalize = normalize
        self.net = net

    def forward(self, images: Tensor) -> Tensor:
        return self.net(self.normalize(images)).softmax(dim=-1)


def load_probability_model(ckpt_path: Path) -> tuple[ProbabilityModel, ModelInfo]:
    """The checkpoint's trained model as a `ProbabilityModel`, in eval mode, and its info."""
    # Lightning is imported for checkpoints only: serving an ONNX model starts without it.
    from mnist_lightning.runs.checkpoints import dataset_of, model_from_checkpoint, read_checkpoint, val_accuracy_of

    try:
        checkpoint = read_checkpoint(ckpt_path)
    except CheckpointError:
        if is_onnx_model(ckpt_path):
            raise CheckpointError(
                f"--ckpt_path {ckpt_path} is an ONNX model, not a checkpoint: it is exported already; serve it with "
                f"`python -m mnist_lightning serve --model {ckpt_path}`"
            ) from None
        raise
    source = f"--ckpt_path {ckpt_path}"
    spec = dataset_of(checkpoint, source)
    classifier = model_from_checkpoint(checkpoint, source)
    if classifier.hparams.input_size != spec.input_size or classifier.hparams.num_classes != len(spec.classes):
        raise CheckpointError(
            f"{source} records {spec.name} ({'×'.join(map(str, spec.image_shape))} images, {len(spec.classes)} "
            f"classes) but its network takes {classifier.hparams.input_size} pixels to "
            f"{classifier.hparams.num_classes} classes: use a checkpoint written by this project's `fit`"
        )
    model = ProbabilityModel(classifier.normalize, classifier.net).eval()
    return model, ModelInfo.of(spec, val_accuracy_of(checkpoint))


def is_onnx_model(path: Path) -> bool:
    """Whether `path` holds an ONNX model (a graph with nodes), for saying so when it is given as a checkpoint."""
    try:
        with open(path, "rb") as file, signals_held():  # onnx's extension: see native.py
            import onnx

            proto = onnx.load_model_from_string(file.read(MAX_MODEL_BYTES))
    except Exception:  # not a file, unreadable, onnx not installed, not a protobuf: not an ONNX model we can tell
        return False
    return proto.ir_version > 0 and len(proto.graph.node) > 0


class Predictor(Protocol):
    """Class probabilities (N×K) for float32 images (N×C×H×W of `info.image_shape`, values in [0, 1])."""

    info: ModelInfo
    runtime: str

    def __call__(self, images: np.ndarray) -> np.ndarray: ...


class TorchPredictor:
    """Runs a `ProbabilityModel` with torch, without gradients."""

    runtime = "torch"

    def __init__(self, model: ProbabilityModel, info: ModelInfo) -> None:
        self.model = model.eval()
        self.info = info

    @classmethod
    def from_checkpoint(cls, ckpt_path: Path) -> TorchPredictor:
        return cls(*load_probability_model(ckpt_path))

    def __call__(self, images: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self.model(torch.from_numpy(images)).numpy()


class OnnxPredictor:
    """Runs an exported model (a file, or its bytes) with onnxruntime on the CPU.

    A file that is not such a model (missing, empty, a folder, a checkpoint, truncated, another program's ONNX model
    without this project's metadata, a graph that does not match its metadata) is a `CheckpointError` of one line.

    Args:
        threads: onnxruntime's intra-op threads; 0 lets it choose (all cores). A server answering many small
            requests at once does better with 1 per request.
    """

    runtime = "onnxruntime"

    def __init__(self, model: Path | bytes, threads: int = 0) -> None:
        label = f"--model {model}" if isinstance(model, Path) else "the exported model"
        content = read_model_file(model) if isinstance(model, Path) else model
        with signals_held():  # onnxruntime's extension loading and building its session: see native.py
            import onnxruntime

            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = threads
            try:
                self.session = onnxruntime.InferenceSession(content, options, providers=["CPUExecutionProvider"])
            except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph/InvalidProtobuf types: unhelpful
                reason = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", first_line(e))[:200].rstrip(".")
                raise CheckpointError(
                    f"{label} is not a complete ONNX model (onnxruntime: {reason}): it was truncated, or not written "
                    f"by `python -m mnist_lightning export`; export the checkpoint again"
                ) from None
        self.info = model_info(self.session, label)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return self.session.run([OUTPUT_NAME], {INPUT_NAME: images})[0]


# Far above any network of this project (784-1024-1024-10 is 7 MB); onnxruntime refuses protobufs over 2 GB anyway.
MAX_MODEL_BYTES = 2**31
EXPORT_COMMAND = "`python -m mnist_lightning export --ckpt_path CHECKPOINT`"


def read_model_file(path: Path) -> bytes:
    """The bytes of `--model`, or a one-line `CheckpointError` that says what the file is instead of an ONNX model."""
    if path.is_dir():
        raise CheckpointError(f"--model {path} is a folder: pass the .onnx file in it that {EXPORT_COMMAND} wrote")
    try:
        with open(path, "rb") as file:
            content = file.read(MAX_MODEL_BYTES + 1)
    except FileNotFoundError:
        raise CheckpointError(f"--model {path}: no such file; write one with {EXPORT_COMMAND}") from None
    except PermissionError as e:
        raise CheckpointError(f"--model {path} cannot be read ({e.strerror}): make it readable") from None
    if not content:
        raise CheckpointError(
            f"--model {path} is an empty file (0 bytes): it was truncated or never written; export it again with "
            f"{EXPORT_COMMAND}"
        )
    if len(content) > MAX_MODEL_BYTES:
        raise CheckpointError(f"--model {path} is over 2 GB, too large for an ONNX model of this project's networks")
    # A checkpoint is a zip archive (torch.save) or, from torch before 1.6, a pickle; an ONNX model is a protobuf
    # whose first byte is a field tag, never either.
    if content.startswith(b"PK\x03\x04") or content.startswith(b"\x80"):
        raise CheckpointError(
            f"--model {path} is a PyTorch checkpoint, not an ONNX model: serve it with --ckpt_path {path}, or "
            f"export it once (`python -m mnist_lightning export --ckpt_path {path}`) and serve the .onnx file"
        )
    return content


def model_info(session: Any, label: str) -> ModelInfo:
    """What an exported model was trained for, from its metadata, checked against its graph's input and output."""
    metadata = session.get_modelmeta().custom_metadata_map
    if not {"classes", "dataset", "image_shape"} <= set(metadata):
        raise CheckpointError(
            f"{label} has no dataset, class names and image shape in its metadata, so what it takes and gives is "
            "unknown: it was "
            f"not written by this project's export; export the checkpoint with {EXPORT_COMMAND}"
        )
    inputs, outputs = session.get_inputs(), session.get_outputs()
    try:
        info = ModelInfo.from_metadata(metadata)
    except (ValueError, TypeError, KeyError) as e:  # json.JSONDecodeError is a ValueError
        raise CheckpointError(
            f"{label} records its classes or image shape unreadably ({first_line(e)}): export the checkpoint again "
            f"with {EXPORT_COMMAND}"
        ) from None
    expected_input = ["N", *info.image_shape]
    expected_output = ["N", len(info.classes)]
    probabilities = [output for output in outputs if output.name == OUTPUT_NAME]
    fits = (
        [i.name for i in inputs] == [INPUT_NAME]
        and inputs[0].type == "tensor(float)"
        and _same_dims(inputs[0].shape, expected_input)
        and len(probabilities) == 1
        and _same_dims(probabilities[0].shape, expected_output)
    )
    if not fits:
        takes = ", ".join(f"{i.name} {_dims(i.shape)}" for i in inputs)
        gives = ", ".join(f"{o.name} {_dims(o.shape)}" for o in outputs)
        raise CheckpointError(
            f"{label} takes {takes} and gives {gives}, but its metadata promises {INPUT_NAME} "
            f"{_dims(expected_input)} → {OUTPUT_NAME} {_dims(expected_output)}: it was not written by this "
            f"project's export; export the checkpoint with {EXPORT_COMMAND}"
        )
    return info


def _same_dims(actual: list[Any], expected: list[Any]) -> bool:
    """Whether a graph's dimensions (ints, or names/None for symbolic ones) can hold `expected`, whose first is the
    batch axis: symbolic, or 1 (serve sends one image at a time)."""
    if len(actual) != len(expected) or (isinstance(actual[0], int) and actual[0] != 1):
        return False
    return all(not isinstance(a, int) or a == e for a, e in zip(actual[1:], expected[1:], strict=True))


def _dims(shape: list[Any]) -> str:
    return "×".join(str(size) if isinstance(size, int) else "N" for size in shape) or "(no shape)"
