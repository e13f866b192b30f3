"""`python -m mnist_lightning serve --ckpt_path X | --model model.onnx`: a web page to draw digits on, and an HTTP
API (`POST /predict`, `GET /health`; see mnist_lightning.tools.serving.app), for one model."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from jsonargparse import ArgumentParser

from mnist_lightning.errors import ArgumentError
from mnist_lightning.tools.serving.predictors import OnnxPredictor, Predictor, TorchPredictor


def load_predictor(ckpt_path: Path | None, model: Path | None, runtime: str) -> Predictor:
    """The predictor for `--ckpt_path` or `--model` (exactly one of them) on `runtime`."""
    if (ckpt_path is None) == (model is None):
        raise ArgumentError("pass either --ckpt_path CHECKPOINT or --model MODEL.onnx (one of them)")
    if model is not None:
        if runtime == "torch":
            raise ArgumentError("--runtime torch needs --ckpt_path: an ONNX --model runs on onnxruntime")
        if not model.is_file():
            raise ArgumentError(f"--model {model}: no such file; write one with `python -m mnist_lightning export`")
        return OnnxPredictor(model, threads=1)
    if runtime == "torch":
        return TorchPredictor.from_checkpoint(ckpt_path)
    from mnist_lightning.tools.serving.export import export_checked

    print(f"Exporting {ckpt_path} to ONNX in memory (export it once with `export` and serve --model to skip this)")
    return OnnxPredictor(export_checked(ckpt_path), threads=1)


def parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="python -m mnist_lightning serve",
        description="A web page to draw digits on, and an HTTP API (POST /predict, GET /health), for one model.",
    )
    parser.add_argument("--ckpt_path", type=Path | None, default=None, help="A checkpoint written by `fit`.")
    parser.add_argument("--model", type=Path | None, default=None, help="An ONNX model written by `export`.")
    parser.add_argument(
        "--runtime",
        type=Literal["onnxruntime", "torch"],
        default="onnxruntime",
        help="What runs the model; torch needs --ckpt_path.",
    )
    parser.add_argument(
        "--host",
        type=str,
        default="127.0.0.1",
        help="The address to listen on; 127.0.0.1 answers this machine only, 0.0.0.0 every network it is on.",
    )
    parser.add_argument("--port", type=int, default=8000, help="The port to listen on (0: any free port).")
    return parser


def main(args: list[str]) -> None:
    import uvicorn

    from mnist_lightning.tools.serving.app import create_app

    config = parser().parse_args(args)
    # Requests run side by side, one thread each; torch splitting one small image's preparation over several
    # threads makes them wait for each other: 7 ms per 280×280 drawing on one thread, 210 ms on two when the
    # other core is busy (2 cores, measured while the machine was shared).
    torch.set_num_threads(1)
    predictor = load_predictor(config.ckpt_path, config.model, config.runtime)
    uvicorn.run(create_app(predictor), host=config.host, port=config.port, log_level="info")
