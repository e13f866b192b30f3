"""A trained classifier outside Lightning: the network with its normalization and softmax as one module, and the two
ways to run it on images in [0, 1] — onnxruntime on an exported model, or torch on a checkpoint.

Both predictors take float32 N×C×H×W arrays of their dataset's image shape (1×28×28 for MNIST: white digit on
black, as MNIST stores it) and return N×K class probabilities; `export` checks one against the other, and `serve`
runs either. What a model was trained on (dataset, classes, image shape) comes from its checkpoint, or from the
exported model's metadata.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import Tensor, nn

from mnist_lightning.datasets import DatasetSpec
from mnist_lightning.errors import CheckpointError, first_line

INPUT_NAME = "images"
OUTPUT_NAME = "probabilities"


@dataclass(frozen=True)
class ModelInfo:
    """What a model was trained for, stored in the ONNX model's metadata_props."""

    dataset: str
    classes: tuple[str, ...]
    image_shape: tuple[int, int, int]
    val_accuracy: float | None

    @classmethod
    def of(cls, spec: DatasetSpec, val_accuracy: float | None) -> ModelInfo:
        return cls(spec.name, spec.classes, spec.image_shape, val_accuracy)

    def metadata(self) -> dict[str, str]:
        metadata = {
            "dataset": self.dataset,
            "classes": json.dumps(list(self.classes)),
            "image_shape": json.dumps(list(self.image_shape)),
        }
        if self.val_accuracy is not None:
            metadata["val_accuracy"] = f"{self.val_accuracy:.6f}"
        return metadata

    @classmethod
    def from_metadata(cls, metadata: dict[str, str]) -> ModelInfo:
        accuracy = metadata.get("val_accuracy")
        # Models exported before the image shape was recorded are MNIST-shaped.
        shape = tuple(json.loads(metadata.get("image_shape", "[1, 28, 28]")))
        return cls(
            metadata["dataset"],
            tuple(json.loads(metadata["classes"])),
            shape,
            None if accuracy is None else float(accuracy),
        )


class ProbabilityModel(nn.Module):
    """A classifier's network behind its dataset's normalization and in front of a softmax: images in [0, 1] in,
    class probabilities out. This is the graph `export` writes."""

    def __init__(self, net: nn.Module, mean: float, std: float) -> None:
        super().__init__()
        self.net = net
        self.mean = mean
        self.std = std

    def forward(self, images: Tensor) -> Tensor:
        return self.net((images - self.mean) / self.std).softmax(dim=-1)


def load_probability_model(ckpt_path: Path) -> tuple[ProbabilityModel, ModelInfo]:
    """The checkpoint's network in eval mode (dropout off, batch norm on its running statistics), normalized with the
    checkpoint's dataset's statistics, and its info."""
    # Lightning is imported for checkpoints only: serving an ONNX model starts without it.
    from mnist_lightning.model import MNISTClassifier
    from mnist_lightning.runs.checkpoints import dataset_of, read_checkpoint, val_accuracy_of

    checkpoint = read_checkpoint(ckpt_path)
    spec = dataset_of(checkpoint, f"--ckpt_path {ckpt_path}")
    hparams = {k: v for k, v in checkpoint.get("hyper_parameters", {}).items() if not k.startswith("_")}
    try:
        classifier = MNISTClassifier(**hparams)
        classifier.load_state_dict(checkpoint["state_dict"])
    except (TypeError, RuntimeError) as e:
        raise CheckpointError(
            f"--ckpt_path {ckpt_path} does not fit MNISTClassifier ({first_line(e)}): "
            "use a checkpoint written by this project's `fit`"
        ) from None
    model = ProbabilityModel(classifier.net, spec.mean, spec.std).eval()
    return model, ModelInfo.of(spec, val_accuracy_of(checkpoint))


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

    Args:
        threads: onnxruntime's intra-op threads; 0 lets it choose (all cores). A server answering many small
            requests at once does better with 1 per request.
    """

    runtime = "onnxruntime"

    def __init__(self, model: Path | bytes, threads: int = 0) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        source = str(model) if isinstance(model, Path) else model
        label = f"--model {model}" if isinstance(model, Path) else "the exported model"
        try:
            self.session = onnxruntime.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph/NoSuchFile types, all unhelpful alone
            raise CheckpointError(
                f"{label} is not an ONNX model onnxruntime can "
                f"load ({str(e).splitlines()[0][:200]}): write one with `python -m mnist_lightning export`"
            ) from None
        metadata = self.session.get_modelmeta().custom_metadata_map
        if "classes" not in metadata or "dataset" not in metadata:
            raise CheckpointError(
                f"{label} has no dataset and class names in its metadata: write it with "
                "`python -m mnist_lightning export`"
            )
        self.info = ModelInfo.from_metadata(metadata)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return self.session.run([OUTPUT_NAME], {INPUT_NAME: images})[0]
