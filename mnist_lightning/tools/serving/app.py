"""The web app of `serve`: the page, `POST /predict`, `GET /health`.

- `GET /`: the page (served from the package: it works offline); `/static/...` its files, `/favicon.ico` its icon.
- `POST /predict`: an image as the raw request body (`Content-Type: image/png`, `image/jpeg`, ...) or as the multipart
  field `file`; answers `{"digit", "label", "probabilities", "image"}`, where `image` is the digit the model saw
  (rows of 0-255 grey levels, of the model's image shape; a colour model's image as its grey levels), prepared exactly
  as `predict --data.predict_path` prepares your own images (by the model's recorded preparation: MNIST's digit
  preparation, or an image folder's conversion and resize).
- `GET /health`: the model being served (its dataset, classes, image shape, preparation, validation accuracy).

Every problem with an upload is a 4xx JSON answer `{"error": "..."}` that says what is wrong.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import numpy as np
import torch
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.types import Message
from torch import Tensor

from mnist_lightning import threads
from mnist_lightning.data.images import MAX_PIXELS, PREPARATIONS, UnusableImage
from mnist_lightning.datasets import DIGIT
from mnist_lightning.errors import UserError
from mnist_lightning.tools.serving.predictors import Predictor

STATIC = Path(__file__).parent / "static"
MAX_BYTES = 10 * 2**20


def create_app(predictor: Predictor, max_bytes: int = MAX_BYTES, max_pixels: int = MAX_PIXELS) -> FastAPI:
    """The web app around `predictor`; uploads over `max_bytes` bytes or `max_pixels` pixels are refused."""
    # FastAPI's /docs and /redoc pages load their scripts from a CDN; this app serves nothing from outside.
    missing = [name for name in ("index.html", "app.js", "style.css", "favicon.svg") if not (STATIC / name).is_file()]
    if missing:  # a wheel built without the package data
        raise UserError(
            f"the page's files {', '.join(missing)} are missing from {STATIC}: this installation lacks them; "
            "reinstall with `pip install -e '.[serve]'` from the repository"
        )
    app = FastAPI(title="mnist_lightning", docs_url=None, redoc_url=None)
    # Preparing a large photo takes a few hundred MB for a moment: at most one per core at a time.
    workers = anyio.CapacityLimiter(threads.usable_cpus())  # a request per CPU it may use, one thread each
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    shape = predictor.info.image_shape
    prepare = PREPARATIONS[predictor.info.preparation]

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        message = error.detail
        where = f"{request.method} {request.url.path}"
        if error.status_code == 404:
            message = f"nothing at {request.url.path}: the page is GET /, the API POST /predict and GET /health"
        elif error.status_code == 405:
            message = f"{where} is not allowed: use {(error.headers or {}).get('Allow', 'another method')}"
        return JSONResponse({"error": message}, status_code=error.status_code, headers=error.headers)

    @app.exception_handler(Exception)
    async def bug(request: Request, error: Exception) -> JSONResponse:  # JSON, so the page can show it
        message = f"internal error ({type(error).__name__}), a bug in mnist_lightning: please report it"
        return JSONResponse({"error": message}, status_code=500)

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    # The page names its icon; a browser shown /health or an error asks for /favicon.ico all the same.
    @app.get("/favicon.ico", include_in_schema=False)
    async def icon() -> FileResponse:
        return FileResponse(STATIC / "favicon.svg", media_type="image/svg+xml")

    @app.get("/health")
    async def health() -> dict[str, Any]:
        info = predictor.info
        return {
            "status": "ok",
            "runtime": predictor.runtime,
            "dataset": info.dataset,
            "classes": list(info.classes),
            "image_shape": list(info.image_shape),
            "preparation": info.preparation,
            "val_accuracy": info.val_accuracy,
        }

    @app.post("/predict")
    async def predict(request: Request) -> dict[str, Any]:
        image = await uploaded_image(request, max_bytes)
        try:
            digit = await anyio.to_thread.run_sync(prepare, image, shape, max_pixels, limiter=workers)
        except UnusableImage as e:
            what = "one digit" if predictor.info.preparation == DIGIT else f"one of {', '.join(predictor.info.classes)}"
            fix = f"send a photo or drawing of {what}, at most {max_pixels / 1e6:g} megapixels"
            raise HTTPException(422, f"{e}: {fix}") from None
        pixels = digit[None].numpy().astype(np.float32) / 255
        probabilities = (await anyio.to_thread.run_sync(predictor, pixels, limiter=workers))[0]
        index = int(probabilities.argmax())
        return {
            "digit": index,
            "label": predictor.info.classes[index],
            "probabilities": [round(float(p), 6) for p in probabilities],
            "image": grey_levels(digit).tolist(),
        }

    return app


def grey_levels(image: Tensor) -> Tensor:
    """A uint8 C×H×W image as H×W grey levels: its one channel, or an RGB image's luma (ITU-R 601-2, as Pillow's)."""
    if image.shape[0] == 1:
        return image[0]
    weights = torch.tensor([0.299, 0.587, 0.114])[: image.shape[0]]
    return (image.float() * weights[:, None, None]).sum(dim=0).round().clamp(0, 255).to(torch.uint8)


async def uploaded_image(request: Request, max_bytes: int) -> bytes:
    """The image in the request body (raw, or the multipart field `file`), read no further than `max_bytes`."""
    too_large = HTTPException(413, f"the upload is over the {max_bytes / 2**20:g} MiB limit; send a smaller image")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise too_large  # refused before a byte of the body is read
    body = bytearray()
    async for chunk in request.stream():  # a body without Content-Length (chunked) is counted as it arrives
        body += chunk
        if len(body) > max_bytes:
            raise too_large
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        body = await multipart_file(request, bytes(body), max_bytes)
    if not body:
        raise HTTPException(
            400, "the request has no image: send the image file as the body or the multipart field `file`"
        )
    return bytes(body)


async def multipart_file(request: Request, body: bytes, max_bytes: int) -> bytes:
    """The field `file` of a multipart body that was already read (and size-checked)."""

    async def replay() -> Message:
        return {"type": "http.request", "body": body, "more_body": False}

    async with Request(request.scope, replay).form(max_files=1, max_fields=10, max_part_size=max_bytes) as form:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise HTTPException(400, "the multipart form has no file field `file`: send the image as `file`")
        return await upload.read()
