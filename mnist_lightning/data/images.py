"""Your own images (photos, scans, drawings) as a network's input, by one of two rules, chosen by the dataset's
recorded `preparation` (`PREPARATIONS`):

- `digit`, the way MNIST prepared its digits: white ink on black, fitted into 20×20 pixels and placed in a 28×28
  field so that their centre of mass is in the middle. `mnist_style` does the same to any image of one digit, for a
  field of any size (a dataset of 20×20 images gets its digit fitted into 14×14).
- `resize`, the way `--data.image_folder` reads its images (`resized`): turned upright by its EXIF orientation;
  transparency flattened onto white; 16-bit pixels scaled from 0-65535 (32-bit integer ones too, which must lie in
  that range), float pixels taken as 0-1 (or as 0-255 when some exceed 1 and none exceeds 255; others are refused);
  converted to grey (ITU-R 601-2 luma, Pillow's "L") or RGB; and resized to the dataset's height×width with
  Pillow's antialiased bilinear filter, the aspect ratio not kept. An image that would be enlarged more than 4× in
  height or width is refused as too small.

`read_own_images` applies a rule to a file or a folder and reports, rather than raises, each file it cannot use;
`serve` applies `prepare_image` to each uploaded image.
"""

from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor
from torchvision.transforms.v2 import functional as F

from mnist_lightning.datasets import DATASETS, DIGIT, RESIZE
from mnist_lightning.errors import DataError

MAX_PIXELS = 50_000_000
MNIST_SHAPE = DATASETS["mnist"].image_shape
BOX_SHARE = 20 / 28  # MNIST fits each digit into 20×20 pixels of its 28×28 field
MIN_CONTRAST = 32  # grey levels between ink and paper below which an image counts as blank
MAX_ENLARGEMENT = 4  # `resized` refuses an image it would have to enlarge more than this in height or width
SIXTEEN_BIT_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")
# Pillow's modes of one channel (with or without alpha): grey whatever their pixels
GREY_MODES = ("1", "L", "LA", "La", "F", *SIXTEEN_BIT_MODES)
KINDS = "PNG, JPEG, BMP, TIFF or WebP"


class UnusableImage(Exception):
    """One file that cannot be predicted; the message says why."""


def load_image(source: Path | bytes, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open an image file, or an image file's bytes, of at most `max_pixels` pixels, as greyscale ("L"), flattened
    onto white if it has transparency."""
    image = open_image(source, max_pixels)
    if has_alpha(image):
        white = Image.new("RGBA", image.size, "white")
        return Image.alpha_composite(white, image.convert("RGBA")).convert("L")
    return image.convert("L")


def open_image(source: Path | bytes, max_pixels: int = MAX_PIXELS, draft: tuple[int, int] | None = None) -> Image.Image:
    """An image file, or an image file's bytes, of at most `max_pixels` pixels, decoded in its own mode; `UnusableImage`
    says why not. `draft`: a JPEG may be decoded at a reduced scale no smaller than this (width, height)."""
    if (source.stat().st_size if isinstance(source, Path) else len(source)) == 0:
        raise UnusableImage("empty file (0 bytes)")
    try:
        with Image.open(source if isinstance(source, Path) else io.BytesIO(source)) as image:
            if image.width * image.height > max_pixels:  # checked on the header, before decoding
                raise UnusableImage(
                    f"{image.width}×{image.height} pixels is over the {max_pixels / 1e6:g}-megapixel limit"
                )
            if draft is not None and image.format == "JPEG":
                image.draft(image.mode, draft)
            image.load()
            return image
    except UnidentifiedImageError:
        raise UnusableImage(f"not an image file ({KINDS})") from None
    except Image.DecompressionBombError as e:  # Pillow's own limit, checked when the header is read
        raise UnusableImage(f"over the {max_pixels / 1e6:g}-megapixel limit ({e})") from None
    # Malformed files make Pillow's decoders raise any of these; each means the same to the user.
    except (OSError, ValueError, SyntaxError, EOFError, IndexError, struct.error) as e:
        raise UnusableImage(f"unreadable image ({e})") from None


def has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info


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


def resized(image: Image.Image, shape: tuple[int, int, int]) -> Tensor:
    """An image of any mode and size as a uint8 C×H×W tensor of `shape`, by the image folder rule (see the module's
    docstring); `UnusableImage` says why not."""
    channels, height, width = shape
    image = ImageOps.exif_transpose(image)
    if image.width * MAX_ENLARGEMENT < width or image.height * MAX_ENLARGEMENT < height:
        raise UnusableImage(
            f"{image.height}×{image.width} pixels (height×width) is too small to resize to {height}×{width} (at most "
            f"{MAX_ENLARGEMENT}× enlarged)"
        )
    image = eight_bit(image)
    if has_alpha(image):
        white = Image.new("RGBA", image.size, "white")
        image = Image.alpha_composite(white, image.convert("RGBA"))
    image = image.convert("L" if channels == 1 else "RGB")
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.BILINEAR)
    pixels = torch.from_numpy(np.array(image, dtype=np.uint8))
    return pixels[None] if channels == 1 else pixels.permute(2, 0, 1).contiguous()


def eight_bit(image: Image.Image) -> Image.Image:
    """16-bit, 32-bit integer and float images as 8-bit grey ("L"); any other image as it is."""
    if image.mode not in (*SIXTEEN_BIT_MODES, "F"):
        return image
    values = np.asarray(image).astype(np.float64)
    if not np.isfinite(values).all():
        raise UnusableImage("float pixels that are not numbers (NaN or infinite)")
    low, high = float(values.min()), float(values.max())
    if image.mode == "F":
        if low < 0 or high > 255:
            raise UnusableImage(f"float pixels from {low:g} to {high:g}: they must lie in 0-1 (or 0-255)")
        scale = 255.0 if high <= 1 else 1.0
    else:
        if low < 0 or high > 65535:
            raise UnusableImage(f"integer pixels from {low:g} to {high:g}: 16-bit images must lie in 0-65535")
        scale = 255 / 65535
    return Image.fromarray(np.rint(values * scale).clip(0, 255).astype(np.uint8), "L")


def prepare_resized(
    source: Path | bytes, shape: tuple[int, int, int] = MNIST_SHAPE, max_pixels: int = MAX_PIXELS
) -> Tensor:
    """An image file (or its bytes) as a uint8 C×H×W tensor of `shape`, as an image folder's images are read."""
    return resized(open_image(source, max_pixels, draft=(shape[2], shape[1])), shape)


# How each dataset's own images are prepared, by the preparation its facts record (datasets.DatasetSpec).
PREPARATIONS = {DIGIT: prepare_digit, RESIZE: prepare_resized}


def prepare_image(
    source: Path | bytes, shape: tuple[int, int, int], preparation: str = DIGIT, max_pixels: int = MAX_PIXELS
) -> Tensor:
    """An image file (or its bytes) prepared by `preparation` (`digit` or `resize`) as a uint8 C×H×W tensor."""
    return PREPARATIONS[preparation](source, shape, max_pixels)


def read_digit_images(
    path: Path, shape: tuple[int, int, int] = MNIST_SHAPE
) -> tuple[list[Path], Tensor, list[tuple[Path, str]]]:
    """`read_own_images` with MNIST's preparation of digits."""
    return read_own_images(path, shape, DIGIT)


def read_own_images(
    path: Path, shape: tuple[int, int, int] = MNIST_SHAPE, preparation: str = DIGIT
) -> tuple[list[Path], Tensor, list[tuple[Path, str]]]:
    """Prepare one image file, or every file in a folder (not its subfolders, not hidden files), as `shape` images,
    by `preparation` (`PREPARATIONS`).

    Returns the files that worked, their N×C×H×W uint8 images, and (file, reason) for each that did not; `DataError`
    when none did.
    """
    if not path.exists():
        raise DataError(f"--data.predict_path {path}: no such file or folder")
    files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")) if path.is_dir() else [path]
    used, images, failures = [], [], []
    for file in files:
        try:
            images.append(prepare_image(file, shape, preparation))
            used.append(file)
        except UnusableImage as e:
            failures.append((file, str(e)))
    if not used:
        found = f"{len(failures)} files, none usable" if failures else "no files"
        raise DataError(
            f"--data.predict_path {path} holds no image to predict ({found}): point it at a {KINDS} file, or a "
            "folder of them"
        )
    return used, torch.stack(images), failures
