"""`python -m mnist_lightning serve`: the API of a real server process, every kind of bad upload, many clients at
once; and, in this process, what needs a look inside (when an image is decoded, the torch runtime, the flags)."""

from __future__ import annotations

import functools
import io
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFile

from mnist_lightning.errors import ArgumentError
from mnist_lightning.handwriting import UnusableImage, prepare_digit
from mnist_lightning.inference import OnnxPredictor
from mnist_lightning.serve import MAX_BYTES, load_predictor, parser
from tests.serving import Exported


def encoded(image: Image.Image, format: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format)
    return buffer.getvalue()


def drawing(seed: int, size: tuple[int, int] = (300, 260)) -> Image.Image:
    """A few random dark strokes on light paper: an image of 'a digit' that every test can tell apart."""
    rng = np.random.default_rng(seed)
    image = Image.new("L", size, 235)
    points = [tuple(int(v) for v in rng.integers(30, min(size) - 30, size=2)) for _ in range(4)]
    ImageDraw.Draw(image).line(points, fill=15, width=20)
    return image


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


@functools.cache
def huge_png() -> bytes:
    return encoded(Image.new("L", (12_000, 12_000), 0))  # 144 megapixels in about 140 kB


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
    for asset in ("/static/app.js", "/static/style.css"):
        assert client.get(asset).status_code == 200
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


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # Pillow warns above 89 megapixels
def test_a_huge_image_is_refused_before_it_is_decoded(monkeypatch: pytest.MonkeyPatch) -> None:
    def decode(self):
        raise AssertionError(f"decoded a {self.size} image")

    monkeypatch.setattr(ImageFile.ImageFile, "load", decode)
    with pytest.raises(UnusableImage, match="12000×12000 pixels is over the 50-megapixel limit"):
        prepare_digit(huge_png())  # what serve does with an upload


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
    with pytest.raises(ArgumentError, match="no such file"):
        load_predictor(None, tmp_path / "missing.onnx", "onnxruntime")
