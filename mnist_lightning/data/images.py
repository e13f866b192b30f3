"""Digits in your own images (photos, scans, drawings), prepared the way MNIST prepared its own.

MNIST's digits are white ink on black, fitted into 20×20 pixels and placed in a 28×28 field so that their centre of
mass is in the middle. `mnist_style` does the same to any image of one digit, for a field of any size (a dataset
of 20×20 images gets its digit fitted into 14×14); `read_digit_images` applies it to a file or a folder and reports,
rather than raises, each file it cannot use; `serve` applies `prepare_digit` to each uploaded image.
"""

from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torchvision.transforms.v2 import functional as F

from mnist_lightning.datasets import DATASETS
from mnist_lightning.errors import DataError

MAX_PIXELS = 50_000_000
MNIST_SHAPE = DATASETS["mnist"].image_shape
BOX_SHARE = 20 / 28  # MNIST fits each digit into 20×20 pixels of its 28×28 field
MIN_CONTRAST = 32  # grey levels between ink and paper below which an image counts as blank


class UnusableImage(Exception):
    """One file that cannot be predicted; the message says why."""


def load_image(source: Path | bytes, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open an image file, or an image file's bytes, of at most `max_pixels` pixels, as greyscale ("L"), flattened
    onto white if it has transparency."""
    if (source.stat().st_size if isinstance(source, Path) else len(source)) == 0:
        raise UnusableImage("empty file (0 bytes)")
    try:
        with Image.open(source if isinstance(source, Path) else io.BytesIO(source)) as image:
            if image.width * image.height > max_pixels:  # checked on the header, before decoding
                raise UnusableImage(
                    f"{image.width}×{image.height} pixels is over the {max_pixels / 1e6:g}-megapixel limit"
                )
            image.load()
            if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
                white = Image.new("RGBA", image.size, "white")
                return Image.alpha_composite(white, image.convert("RGBA")).convert("L")
            return image.convert("L")
    except UnidentifiedImageError:
        raise UnusableImage("not an image file (PNG, JPEG, BMP or TIFF)") from None
    except Image.DecompressionBombError as e:  # Pillow's own limit, checked when the header is read
        raise UnusableImage(f"over the {max_pixels / 1e6:g}-megapixel limit ({e})") from None
    # Malformed files make Pillow's decoders raise any of these; each means the same to the user.
    except (OSError, ValueError, SyntaxError, EOFError, IndexError, struct.error) as e:
        raise UnusableImage(f"unreadable image ({e})") from None


def prepare_digit(
    source: Path | bytes, shape: tuple[int, int, int] = MNIST_SHAPE, max_pixels: int = MAX_PIXELS
) -> Tensor:
    """An image file (or its bytes) of one digit as a uint8 C×H×W MNIST-style digit; `UnusableImage` says why not."""
    return mnist_style(load_image(source, max_pixels), shape)


def mnist_style(image: Image.Image, shape: tuple[int, int, int] = MNIST_SHAPE) -> Tensor:
    """One digit, dark on light or light on dark, any size: a uint8 C×H×W tensor (1×28×28 for MNIST) with the digit
    prepared as MNIST prepared its digits."""
    grey = torch.from_numpy(np.asarray(image.convert("L"), dtype=np.float32))
    border = torch.cat([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
    paper = border.median()
    ink = (paper - grey if paper > 127 else grey - paper).clamp(min=0)  # light paper: the ink is the dark part
    if ink.max() < MIN_CONTRAST:
        raise UnusableImage("blank image: no ink stands out from the background")
    ink = ink / ink.max()
    ink[ink < 0.2] = 0  # paper texture and sensor noise
    rows, columns = torch.nonzero(ink > 0.35, as_tuple=True)
    top, bottom, left, right = int(rows.min()), int(rows.max()) + 1, int(columns.min()), int(columns.max()) + 1
    box = max(bottom - top, right - left)
    margin = int(0.05 * box)
    top, left = max(0, top - margin), max(0, left - margin)
    bottom, right = min(ink.shape[0], bottom + margin), min(ink.shape[1], right + margin)
    digit = ink[top:bottom, left:right]
    scale = max(1, round(BOX_SHARE * min(shape[1:]))) / box
    size = [max(1, round(digit.shape[0] * scale)), max(1, round(digit.shape[1] * scale))]
    digit = F.resize(digit[None], size, antialias=True)[0].clamp(0, 1)
    channels, height, width = shape
    return place_by_centre_of_mass(digit, height, width).expand(channels, -1, -1).clone()


def place_by_centre_of_mass(digit: Tensor, height: int, width: int) -> Tensor:
    """Paste an image (values in [0, 1]) into a height×width field with its centre of mass in the middle; return it
    as uint8, 1×height×width."""
    digit = digit[:height, :width]
    mass = digit.sum()
    centre_y = (digit.sum(dim=1) * torch.arange(digit.shape[0])).sum() / mass
    centre_x = (digit.sum(dim=0) * torch.arange(digit.shape[1])).sum() / mass
    top = int(min(max(round(float((height - 1) / 2 - centre_y)), 0), height - digit.shape[0]))
    left = int(min(max(round(float((width - 1) / 2 - centre_x)), 0), width - digit.shape[1]))
    field = torch.zeros(height, width)
    field[top : top + digit.shape[0], left : left + digit.shape[1]] = digit
    return (field * 255).round().to(torch.uint8)[None]


def read_digit_images(
    path: Path, shape: tuple[int, int, int] = MNIST_SHAPE
) -> tuple[list[Path], Tensor, list[tuple[Path, str]]]:
    """Prepare one image file, or every file in a folder (not its subfolders, not hidden files), as `shape` images.

    Returns the files that worked, their N×C×H×W uint8 images, and (file, reason) for each that did not; `DataError`
    when none did.
    """
    if not path.exists():
        raise DataError(f"--data.predict_path {path}: no such file or folder")
    files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")) if path.is_dir() else [path]
    used, images, failures = [], [], []
    for file in files:
        try:
            images.append(prepare_digit(file, shape))
            used.append(file)
        except UnusableImage as e:
            failures.append((file, str(e)))
    if not used:
        found = f"{len(failures)} files, none usable" if failures else "no files"
        raise DataError(
            f"--data.predict_path {path} holds no image to predict ({found}): point it at a PNG, JPEG, BMP or TIFF "
            "file, or a folder of them"
        )
    return used, torch.stack(images), failures
