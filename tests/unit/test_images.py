"""Your own digit images: MNIST-style preparation, bad files, huge files refused before decoding."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw, ImageFile

from mnist_lightning.data.images import UnusableImage, load_image, mnist_style, prepare_digit, read_digit_images
from mnist_lightning.errors import DataError
from tests.helpers import drawn_seven, huge_png


def test_a_photo_of_a_digit_becomes_an_mnist_digit() -> None:
    digit = mnist_style(drawn_seven())
    assert digit.shape == (1, 28, 28) and digit.dtype == torch.uint8
    assert digit[0, 0].max() == 0 and digit[0, :, 0].max() == 0, "white ink on a black field"
    rows, columns = torch.nonzero(digit[0] > 64, as_tuple=True)
    assert 19 <= max(rows.max() - rows.min(), columns.max() - columns.min()) + 1 <= 22, "fitted into 20 pixels"
    mass = digit[0].float()
    centre = [(mass.sum(dim=axis) * torch.arange(28)).sum() / mass.sum() for axis in (1, 0)]
    assert all(abs(float(c) - 13.5) <= 1 for c in centre), "centred by centre of mass"


def test_light_on_dark_colour_and_size_and_position_do_not_matter() -> None:
    reference = mnist_style(drawn_seven()).float()
    inverted = Image.eval(drawn_seven(), lambda value: 255 - value)
    torch.testing.assert_close(mnist_style(inverted).float(), reference, atol=2, rtol=0)
    for variant in (drawn_seven(mode="RGB"), drawn_seven(size=(1600, 1200), offset=(100, 700))):
        agreement = torch.nn.functional.cosine_similarity(
            mnist_style(variant).float().flatten(), reference.flatten(), 0
        )
        assert agreement > 0.9


def test_transparent_drawings_are_flattened_onto_white(tmp_path: Path) -> None:
    image = Image.new("RGBA", (300, 300), (0, 0, 0, 0))
    ImageDraw.Draw(image).line([(150, 40), (150, 260)], fill=(0, 0, 0, 255), width=24)
    image.save(tmp_path / "one.png")
    digit = mnist_style(load_image(tmp_path / "one.png"))
    assert digit[0, 14, 13:15].min() > 128 and digit[0, 0].max() == 0


@pytest.mark.parametrize(
    ("write", "reason"),
    [
        (lambda path: path.write_bytes(b""), "empty file"),
        (lambda path: path.write_text("a shopping list"), "not an image"),
        (lambda path: Image.new("L", (400, 300), 230).save(path, format="PNG"), "blank image"),
        (lambda path: Image.new("L", (8000, 6500), 255).save(path, format="PNG"), "50-megapixel"),
    ],
)
def test_unusable_files_say_why(tmp_path: Path, write, reason: str) -> None:
    path = tmp_path / "input.png"
    write(path)
    with pytest.raises(UnusableImage, match=reason):
        mnist_style(load_image(path))


def test_a_folder_mixing_good_and_bad_files_keeps_the_good_ones(tmp_path: Path) -> None:
    drawn_seven().save(tmp_path / "seven.jpg")
    drawn_seven(mode="RGB").save(tmp_path / "seven.bmp")
    drawn_seven().save(tmp_path / "seven.tiff")
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "zero-bytes.png").write_bytes(b"")
    files, images, failures = read_digit_images(tmp_path)
    assert [file.name for file in files] == ["seven.bmp", "seven.jpg", "seven.tiff"]
    assert images.shape == (3, 1, 28, 28)
    assert sorted(file.name for file, _ in failures) == ["notes.txt", "zero-bytes.png"]
    with pytest.raises(DataError, match="no such file or folder"):
        read_digit_images(tmp_path / "missing")


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # Pillow warns above 89 megapixels
def test_a_huge_image_is_refused_before_it_is_decoded(monkeypatch: pytest.MonkeyPatch) -> None:
    def decode(self):
        raise AssertionError(f"decoded a {self.size} image")

    monkeypatch.setattr(ImageFile.ImageFile, "load", decode)
    with pytest.raises(UnusableImage, match="12000×12000 pixels is over the 50-megapixel limit"):
        prepare_digit(huge_png())  # what serve does with an upload
