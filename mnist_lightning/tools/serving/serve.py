"""`python -m mnist_lightning serve --ckpt_path X | --model model.onnx`: a web page to draw digits on, and an HTTP
API (`POST /predict`, `GET /health`; see mnist_lightning.tools.serving.app), for one model.

Every flag is checked before the model is loaded: where to listen (the port's range, the host's address, a port
another program holds), then the model. Ctrl-C and SIGTERM end it like any command (`mnist_lightning.interrupts`):
uvicorn finishes the requests in flight, then the command ends with one line and exit status 130 or 143.
"""

from __future__ import annotations

import contextlib
import errno
import json
import socket
import urllib.request
from pathlib import Path
from typing import Any, Literal

import torch
from jsonargparse import ArgumentParser

from mnist_lightning.errors import ArgumentError
from mnist_lightning.flag_errors import flag_parser, parse
from mnist_lightning.tools.serving.predictors import (
    OnnxPredictor,
    Predictor,
    TorchPredictor,
    load_probability_model,
)

ANY_PORT = "pass another --port (0: any free port)"


def check_model_flags(ckpt_path: Path | None, model: Path | None, runtime: str) -> None:
    """Exactly one of `--ckpt_path` and `--model`, and a runtime that can run it."""
    if (ckpt_path is None) == (model is None):
        raise ArgumentError("pass either --ckpt_path CHECKPOINT or --model MODEL.onnx (one of them)")
    if model is not None and runtime == "torch":
        raise ArgumentError("--runtime torch needs --ckpt_path: an ONNX --model runs on onnxruntime")


def load_predictor(ckpt_path: Path | None, model: Path | None, runtime: str) -> Predictor:
    """The predictor for `--ckpt_path` or `--model` (exactly one of them) on `runtime`."""
    check_model_flags(ckpt_path, model, runtime)
    if model is not None:
        return OnnxPredictor(model, threads=1)  # a missing or broken file is refused there (read_model_file)
    probability_model, info = load_probability_model(ckpt_path)  # a broken checkpoint is refused before anything
    if runtime == "torch":
        return TorchPredictor(probability_model, info)
    from mnist_lightning.tools.serving.export import export_checked

    print(f"Exporting {ckpt_path} to ONNX in memory (export it once with `export` and serve --model to skip this)")
    return OnnxPredictor(export_checked(probability_model, info, ckpt_path), threads=1)


def reserve(host: str, port: int) -> list[socket.socket]:
    """Sockets bound to every address of `host` at `port`, as uvicorn (asyncio's create_server) binds them, held
    while the model loads: a host that does not resolve, an address not on this machine or a port in use is a
    one-line `ArgumentError` before anything slow starts."""
    if not 0 <= port <= 65535:
        raise ArgumentError(f"--port {port} is not a port: give one from 1 to 65535 (0: any free port)")
    try:
        addresses = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as e:
        reason = e.strerror if isinstance(e, socket.gaierror) else str(e)
        raise ArgumentError(
            f"--host {host} does not resolve to an address ({reason}): give an address of this machine, e.g. "
            "127.0.0.1 (this machine only) or 0.0.0.0 (every network it is on)"
        ) from None
    sockets: list[socket.socket] = []
    try:
        for family, kind, protocol, _, address in dict.fromkeys(addresses):
            sock = socket.socket(family, kind, protocol)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as e:
                raise cannot_listen(host, port, e) from None
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def cannot_listen(host: str, port: int, error: OSError) -> ArgumentError:
    where = f"{host}:{port}"
    if error.errno == errno.EADDRINUSE:
        other = serve_at(host, port)
        if other:
            return ArgumentError(
                f"--port {port}: another `python -m mnist_lightning serve` already listens on {where} ({other}): "
                f"use it, stop it, or {ANY_PORT}"
            )
        return ArgumentError(f"--port {port}: another program already listens on {where}: stop it, or {ANY_PORT}")
    if error.errno == errno.EADDRNOTAVAIL:
        return ArgumentError(
            f"--host {host} is not an address of this machine: give one of its own, e.g. 127.0.0.1 (this machine "
            "only) or 0.0.0.0 (every network it is on)"
        )
    if error.errno in (errno.EACCES, errno.EPERM):
        return ArgumentError(
            f"--port {port} needs root privileges here (ports below 1024 do): give one from 1024 to 65535 (0: any "
            "free port)"
        )
    return ArgumentError(f"cannot listen on {where} ({error.strerror}): {ANY_PORT}, or another --host")


def serve_at(host: str, port: int) -> str | None:
    """What the `serve` that answers at host:port serves (e.g. `a mnist model on onnxruntime`), or None if no
    `serve` answers there."""
    target = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    url = f"http://{f'[{target}]' if ':' in target else target}:{port}/health"
    with contextlib.suppress(Exception):  # whatever answers there, or does not: it is not a serve
        with urllib.request.urlopen(url, timeout=2) as response:
            health: dict[str, Any] = json.loads(response.read(100_000))
        if health.get("status") == "ok" and "runtime" in health:
            return f"a {health.get('dataset')} model on {health['runtime']}"
    return None


def parser() -> ArgumentParser:
    parser = flag_parser(
        "python -m mnist_lightning serve",
        "A web page to draw digits on, and an HTTP API (POST /predict, GET /health), for one model.",
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

    config = parse(parser(), args)
    check_model_flags(config.ckpt_path, config.model, config.runtime)
    held = reserve(config.host, config.port)
    try:
        # Requests run side by side, one thread each; torch splitting one small image's preparation over several
        # threads makes them wait for each other: 7 ms per 280×280 drawing on one thread, 210 ms on two when the
        # other core is busy (2 cores, measured while the machine was shared).
        torch.set_num_threads(1)
        predictor = load_predictor(config.ckpt_path, config.model, config.runtime)
        app = create_app(predictor)
    finally:
        for sock in held:  # uvicorn binds its own, at once (no listening socket was opened: nothing was accepted)
            sock.close()
    # uvicorn.Server rather than uvicorn.run, which swallows the KeyboardInterrupt (interrupts.Stopped) that the
    # signal uvicorn re-raises after its graceful shutdown becomes: the command then ends as every command does.
    server = uvicorn.Server(uvicorn.Config(app, host=config.host, port=config.port, log_level="info"))
    try:
        server.run()
    except SystemExit:
        if server.started:
            raise
        # Another program took the port in the moment between the check and uvicorn's bind; uvicorn said why.
        raise ArgumentError(f"cannot listen on {config.host}:{config.port} (see above): {ANY_PORT}") from None
