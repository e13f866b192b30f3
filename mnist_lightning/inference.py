"""A trained classifier outside Lightning: the network with its normalization and softmax as one module, and the two
ways to run it on images in [0, 1] — onnxruntime on an exported model, or torch on a checkpoint.

Both predictors take float32 N×1×28×28 arrays (white digit on black, as MNIST stores it) and return N×C class
probabilities; `export` checks one against the other, and `serve` runs either.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from mnist_lightning.errors import CheckpointError
from mnist_lightning.sources import DATASETS

INPUT_NAME = "images"
OUTPUT_NAME = "probabilities"


@dataclass(frozen=True)
class ModelInfo:
    """What a model was trained for, stored in the ONNX model's metadata_props."""

    dataset: str
    classes: tuple[str, ...]
    val_accuracy: float | None

    def metadata(self) -> dict[str, str]:
        metadata = {"dataset": self.dataset, "classes": json.dumps(list(self.classes))}
        if self.val_accuracy is not None:
            metadata["val_accuracy"] = f"{self.val_accuracy:.6f}"
        return metadata

    @classmethod
    def from_metadata(cls, metadata: dict[str, str]) -> ModelInfo:
        accuracy = metadata.get("val_accuracy")
        return cls(
            metadata["dataset"], tuple(json.loads(metadata["classes"])), None if accuracy is None else float(accuracy)
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
    """The checkpoint's network in eval mode (dropout off, batch norm on its running statistics), and its info."""
    from mnist_lightning.model import MNISTClassifier  # imports Lightning: only for checkpoints, not ONNX models
    from mnist_lightning.runs import read_checkpoint

    checkpoint = read_checkpoint(ckpt_path)
    hparams = {k: v for k, v in checkpoint.get("hyper_parameters", {}).items() if not k.startswith("_")}
    dataset = checkpoint.get("datamodule_hyper_parameters", {}).get("dataset", "mnist")
    if dataset not in DATASETS:
        raise CheckpointError(f"--ckpt_path {ckpt_path} was trained on {dataset!r}, which this version does not know")
    try:
        classifier = MNISTClassifier(**hparams)
        classifier.load_state_dict(checkpoint["state_dict"])
    except (TypeError, RuntimeError) as e:
        raise CheckpointError(
            f"--ckpt_path {ckpt_path} does not fit MNISTClassifier ({str(e).splitlines()[0]}): "
            "export checkpoints written by this project's `fit`"
        ) from None
    spec = DATASETS[dataset]
    model = ProbabilityModel(classifier.net, spec.mean, spec.std).eval()
    return model, ModelInfo(dataset, spec.classes, checkpoint_val_accuracy(checkpoint))


def checkpoint_val_accuracy(checkpoint: dict[str, Any]) -> float | None:
    """The validation accuracy of the checkpoint's weights, as its `val/acc` ModelCheckpoint recorded it."""
    for name, state in checkpoint.get("callbacks", {}).items():
        if name.startswith("ModelCheckpoint") and state.get("monitor") == "val/acc":
            score = state.get("current_score")
            if score is not None:
                return float(score)
    return None


class Predictor(Protocol):
    """Class probabilities (N×C) for float32 images (N×1×28×28, values in [0, 1])."""

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
