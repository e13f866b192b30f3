"""The page of `serve` in a real headless browser (Debian's Chromium driven by Playwright): draw a digit stroke by
stroke with the mouse, choose a photo, and read what the page shows."""

from __future__ import annotations

import base64
import io
import os
import shutil
from pathlib import Path

import httpx
import pytest
from PIL import Image, ImageDraw

from tests.helpers import REAL_MODEL_VARIABLE

CHROMIUM = Path("/usr/bin/chromium")
INSTALL = "apt-get install -y chromium chromium-driver"
# Where to copy the screenshot as well, e.g. docs/serve-page.png (see docs/serving.md).
SCREENSHOT_VARIABLE = "MNIST_LIGHTNING_TEST_SCREENSHOT"
# A 7 in three strokes, in fractions of the drawing pad: the top bar, the long diagonal, a short crossbar.
SEVEN = [[(0.28, 0.22), (0.72, 0.2)], [(0.72, 0.2), (0.6, 0.5), (0.46, 0.84)], [(0.48, 0.52), (0.74, 0.52)]]


@pytest.fixture(scope="module")
def page(server: str):
    if not CHROMIUM.exists():
        pytest.fail(f"the browser test needs Debian's Chromium at {CHROMIUM}: {INSTALL}")
    try:
        from playwright.sync_api import sync_playwright
    except ModuleNotFoundError:
        pytest.fail("the browser test needs Playwright's Python package: pip install -e '.[dev]'")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            args=[
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        page = browser.new_page(viewport={"width": 900, "height": 640})
        page.set_default_timeout(60_000)
        page.goto(server)
        page.wait_for_function("document.getElementById('model').textContent.includes('mnist')")
        yield page
        browser.close()


def shown(page) -> dict:
    """What the page shows: the digit, the probability of each bar and its length as drawn (a share of its track),
    and the 28×28 image as grey levels."""
    return page.evaluate(
        """() => ({
            digit: document.getElementById("digit").textContent,
            bars: [...document.querySelectorAll("#bars li")].map((row) => Number(row.dataset.probability)),
            drawn: [...document.querySelectorAll("#bars li")].map(
                (row) => row.querySelector(".fill").offsetWidth / row.querySelector(".track").offsetWidth
            ),
            best: document.querySelector("#bars li.best").dataset.class,
            seen: [...document.getElementById("seen").getContext("2d").getImageData(0, 0, 28, 28).data]
                .filter((_, i) => i % 4 === 0),
        })"""
    )


def api_answer(server: str, image: bytes) -> dict:
    response = httpx.post(f"{server}/predict", content=image, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def assert_page_shows(page, answer: dict) -> None:
    on_page = shown(page)
    assert on_page["digit"] == answer["label"] and on_page["best"] == str(answer["digit"])
    assert on_page["bars"] == pytest.approx(answer["probabilities"], abs=1e-9)
    assert on_page["drawn"] == pytest.approx(answer["probabilities"], abs=0.02)
    assert on_page["seen"] == [grey for row in answer["image"] for grey in row]
    assert max(on_page["seen"]) > 200, "the digit the model saw is shown, not a blank square"


def test_a_digit_drawn_stroke_by_stroke_is_read_and_shown(page, server: str, tmp_path: Path) -> None:
    page.click("#clear")
    box = page.locator("#pad").bounding_box()
    for number, stroke in enumerate(SEVEN, start=1):
        (x, y), *rest = [(box["x"] + fx * box["width"], box["y"] + fy * box["height"]) for fx, fy in stroke]
        page.mouse.move(x, y)
        page.mouse.down()
        for x, y in rest:
            page.mouse.move(x, y, steps=15)
        page.mouse.up()
        page.wait_for_selector(f'body[data-predicted-strokes="{number}"]')  # the answer for this drawing arrived
    drawing = base64.b64decode(page.evaluate("document.getElementById('pad').toDataURL('image/png')").split(",")[1])
    answer = api_answer(server, drawing)
    assert_page_shows(page, answer)
    if os.environ.get(REAL_MODEL_VARIABLE):  # a model trained on MNIST reads the 7
        assert answer["digit"] == 7, answer["probabilities"]
    screenshot = tmp_path / "serve-page.png"
    page.screenshot(path=screenshot)
    assert Image.open(screenshot).size == (900, 640)
    if os.environ.get(SCREENSHOT_VARIABLE):
        shutil.copy(screenshot, os.environ[SCREENSHOT_VARIABLE])


def test_a_chosen_photo_is_read_and_a_bad_file_explained(page, server: str) -> None:
    photo = Image.new("RGB", (400, 300), (225, 220, 210))
    ImageDraw.Draw(photo).line([(200, 40), (190, 260)], fill=(30, 30, 60), width=22)
    buffer = io.BytesIO()
    photo.save(buffer, format="JPEG")
    page.evaluate("delete document.body.dataset.predictedStrokes")
    page.set_input_files("#file", files=[{"name": "one.jpg", "mimeType": "image/jpeg", "buffer": buffer.getvalue()}])
    page.wait_for_selector('body[data-predicted-strokes="0"]')
    assert_page_shows(page, api_answer(server, buffer.getvalue()))
    page.set_input_files("#file", files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": b"hello"}])
    page.wait_for_function("document.getElementById('status').textContent.includes('not an image')")
    assert page.inner_text("#status").startswith("notes.txt: not an image file")
