"""`python -m mnist_lightning serve`: the API of a real server process, every kind of bad upload, many clients at
once."""

from __future__ import annotations

import struct
import zlib
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from PIL import Image

from mnist_lightning.data.images import prepare_digit
from mnist_lightning.tools.serving.app import MAX_BYTES
from mnist_lightning.tools.serving.predictors import OnnxPredictor
from mnist_lightning.tools.serving.serve import parser
from tests.helpers import Exported, drawing, encoded, huge_png


@pytest.fixture(scope="module")
def client(server: str) -> httpx.Client:
    with httpx.Client(base_url=server, timeout=60) as client:
        yield client


def test_it_listens_on_loopback_by_default(server: str) -> None:
    assert server.startswith("http://127.0.0.1:")
    assert parser().parse_args(["--model", "m.onnx"]).host == "127.0.0.1"


def test_health_describes_the_model(client: httpx.Client) -> None:
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["runtime"] == "onnxruntime"
    assert health["dataset"] == "mnist" and health["classes"] == [str(digit) for digit in range(10)]
    assert health["image_shape"] == [1, 28, 28]
    assert 0 <= health["val_accuracy"] <= 1


def test_predict_prepares_the_image_as_predict_does_raw_or_multipart(client: httpx.Client, exported: Exported) -> None:
    image = encoded(drawing(0))
    raw = client.post("/predict", content=image, headers={"Content-Type": "image/png"})
    form = client.post("/predict", files={"file": ("seven.png", image, "image/png")})
    assert raw.status_code == form.status_code == 200, raw.text
    assert raw.json() == form.json()
    answer = raw.json()
    digit = prepare_digit(image)  # what `predict --data.predict_path` does to a file
    assert np.array_equal(np.array(answer["image"]), digit[0].numpy())
    expected = OnnxPredictor(exported.model)(digit[None].numpy().astype(np.float32) / 255)[0]
    np.testing.assert_allclose(answer["probabilities"], expected, atol=1e-6)
    assert answer["digit"] == int(np.argmax(answer["probabilities"])) and answer["label"] == str(answer["digit"])
    jpeg = client.post("/predict", content=encoded(drawing(0).convert("RGB"), "JPEG"))
    assert jpeg.status_code == 200 and jpeg.json()["digit"] == answer["digit"]


def chunks(data: bytes, size: int = 64 * 1024):
    for start in range(0, len(data), size):
        yield data[start : start + size]


def png_header_claiming(width: int, height: int) -> bytes:
    """The start of a PNG whose header claims `width`×`height` pixels: all that Image.open reads."""
    header = b"IHDR" + struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunks = [header, b"IDAT"]  # Image.open stops at the first image data
    return b"\x89PNG\r\n\x1a\n" + b"".join(
        struct.pack(">I", len(chunk) - 4) + chunk + struct.pack(">I", zlib.crc32(chunk)) for chunk in chunks
    )


OVERSIZED = bytes(MAX_BYTES + 1)


@pytest.mark.parametrize(
    ("method", "body", "headers", "status", "message"),
    [
        pytest.param("POST", lambda: b"", {"Content-Type": "image/png"}, 400, "the request has no image", id="empty"),
        pytest.param(
            "POST", lambda: b"a shopping list", {"Content-Type": "image/png"}, 422, "not an image file", id="text"
        ),
        pytest.param(
            "POST",
            lambda: encoded(drawing(1))[:400],
            {"Content-Type": "image/png"},
            422,
            "unreadable image",
            id="truncated",
        ),
        pytest.param("POST", lambda: encoded(Image.new("L", (400, 300), 230)), {}, 422, "blank image", id="blank"),
        pytest.param(
            "POST",
            huge_png,
            {"Content-Type": "image/png"},
            422,
            "12000×12000 pixels is over the 50-megapixel",
            id="12000x12000",
        ),
        pytest.param(
            "POST", lambda: png_header_claiming(40_000, 40_000), {}, 422, "over the 50-megapixel", id="40000x40000"
        ),
        pytest.param(
            "POST", lambda: OVERSIZED, {"Content-Type": "image/png"}, 413, "over the 10 MiB limit", id="10MiB"
        ),
        pytest.param(
            "POST",
            lambda: chunks(OVERSIZED),
            {"Content-Type": "image/png"},
            413,
            "over the 10 MiB limit",
            id="10MiB-chunked",
        ),
        pytest.param(
            "POST",
            lambda: b"--x--\r\n",
            {"Content-Type": "multipart/form-data; boundary=x"},
            400,
            "no file field",
            id="no-file",
        ),
        pytest.param(
            "POST",
            lambda: b"--x--",
            {"Content-Type": "multipart/form-data"},
            400,
            "Missing boundary in multipart",
            id="no-boundary",
        ),
        pytest.param("GET", lambda: None, {}, 405, "GET /predict is not allowed: use POST", id="get"),
        pytest.param("DELETE", lambda: None, {}, 405, "not allowed", id="delete"),
    ],
)
def test_bad_input_gets_a_4xx_json_error_that_says_what_is_wrong(
    client: httpx.Client, method: str, body, headers: dict, status: int, message: str
) -> None:
    response = client.request(method, "/predict", content=body(), headers=headers)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert message in response.json()["error"]
    assert client.get("/health").status_code == 200


def test_the_page_and_its_files_come_from_the_package(client: httpx.Client) -> None:
    page = client.get("/")
    assert page.status_code == 200 and '<canvas id="pad"' in page.text
    for asset in ("/static/app.js", "/static/style.css", "/static/favicon.svg"):
        assert client.get(asset).status_code == 200
    assert '<link rel="icon" href="/static/favicon.svg"' in page.text
    icon = client.get("/favicon.ico")  # what a browser asks for on a page that names no icon (/health, say)
    assert icon.status_code == 200 and icon.headers["content-type"] == "image/svg+xml"
    assert "http" not in page.text.replace("http-equiv", ""), "no outside scripts, styles or fonts"
    missing = client.get("/nothing-here")
    assert missing.status_code == 404 and "POST /predict" in missing.json()["error"]
    assert client.get("/docs").status_code == 404, "FastAPI's docs page would load scripts from a CDN"


def test_concurrent_clients_each_get_the_answer_for_their_own_image(client: httpx.Client, server: str) -> None:
    images = [encoded(drawing(seed)) for seed in range(8)]
    expected = [client.post("/predict", content=image).json() for image in images]

    def ask(index: int) -> tuple[int, dict]:
        response = httpx.post(f"{server}/predict", content=images[index % 8], timeout=120)
        return index, response.json() if response.status_code == 200 else {"status": response.status_code}

    with ThreadPoolExecutor(max_workers=32) as pool:
        answers = list(pool.map(ask, range(32)))
    for index, answer in answers:
        assert answer == expected[index % 8]
