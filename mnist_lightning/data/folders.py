"""Your own images as a dataset: `--data.image_folder ROOT`, torchvision's `ImageFolder` layout.

`ROOT/<class name>/<image files>`, classes in sorted order (their names as the folders spell them, Unicode kept, in
NFC). When `ROOT/train` exists, it is the training set and `ROOT/val` (or `ROOT/valid`) and `ROOT/test`, when
present, the validation and test sets, each with the same class folders; what is missing is held out of the training
images. Otherwise every image is in `ROOT/<class>/` and the validation and test sets are held out of them: a seeded,
stratified split (the same on every run and machine) of `val_size` and `test_size` images, each a count or a
fraction (default 0.1 each).

Rules (each problem is one line that names it and the fix):
- hidden files and folders (names starting with ".", `Thumbs.db`, `desktop.ini`) are ignored; so are files directly
  in ROOT (said in one line); a folder inside a class folder is refused (one level only);
- symbolic links are followed, to files and to folders alike (a broken one counts as an unreadable file);
- a file that is not a usable image is skipped and counted, and the list written to `<cache>/skipped.txt`; more
  than `MAX_BAD_SHARE` of them is refused;
- a class needs at least one usable training image, and there must be two classes or more; a class in val/ or test/
  that train/ lacks is refused;
- each image is prepared by `images.resized` (the documented rule): `channels` 1 (grey) or 3 (RGB), by default 1
  when every training image is grey, else 3; `size` height×width, by default the most common one of the training
  images. Sizes are height×width throughout.

Read once: the decoded images of each split in the folder (`train`, `val`, `test`, or `all`) are one tensor file
under `<data_dir>/image_folders/<ROOT's name>-<key>/`, keyed by what the folder holds (every file's path, size and
modification time) and the conversion asked for; a changed folder has another key and is read again, and a cache
whose files do not match what its `facts.json` records is never used. The first process on a machine to need it
builds it (a lock file beside it), the others wait and load it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import math
import os
import re
import sys
import unicodedata
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor
from tqdm import tqdm

from mnist_lightning.data.images import GREY_MODES, MAX_PIXELS, UnusableImage, open_image, resized
from mnist_lightning.datasets import IMAGE_FOLDER, RESIZE, DatasetSpec
from mnist_lightning.errors import ArgumentError, CheckpointError, DataError, global_rank
from mnist_lightning.files import write_atomically, write_failure
from mnist_lightning.threads import usable_cpus

SPLIT_SEED = 1234  # the one seed of every held-out split (data.module.fixed_split too)
CACHE_FOLDER = "image_folders"
CACHE_FORMAT = 1  # part of the key: a cache written by an earlier rule is never used
FACTS_FILE = "facts.json"
SKIPPED_FILE = "skipped.txt"
HIDDEN = ("thumbs.db", "desktop.ini", "ehthumbs.db")
MAX_BAD_SHARE = 0.10
DEFAULT_SHARE = 0.1  # the default val_size and test_size of a folder
MIN_SIZE = 4  # pixels of height and width below which an image size is refused
SPLIT_FOLDERS = {"train": ("train",), "val": ("val", "valid"), "test": ("test",)}
ELSEWHERE = "or pass --data.data_dir DIR (where the cache goes)"
Size = tuple[int, int]


@dataclass(frozen=True)
class Listing:
    """What a folder holds: its classes, and each split's files (relative to ROOT) with their labels."""

    root: Path
    classes: tuple[str, ...]
    splits: dict[str, list[tuple[str, int]]]  # "train", "val", "test" (ROOT/train/...) or "all" (ROOT/<class>/...)
    loose: int  # files directly in ROOT, which are not read

    def key(self, channels: int | None, size: Size | None) -> str:
        """What the cache is keyed by: every file's path, size and modification time, and the conversion asked for."""
        entries = []
        for split, files in self.splits.items():
            for name, label in files:
                try:
                    stat = (self.root / name).stat()
                    entries.append([split, name, label, stat.st_size, stat.st_mtime_ns])
                except OSError:  # a broken link, or a file gone since: read (and skipped) as such
                    entries.append([split, name, label, -1, -1])
        request = {"format": CACHE_FORMAT, "channels": channels, "size": size, "classes": self.classes}
        return hashlib.sha256(json.dumps([request, entries], ensure_ascii=False).encode()).hexdigest()


@dataclass(frozen=True)
class Split:
    """One split's images (uint8 N×C×H×W), labels, files (relative to ROOT) and per-image pixel sums and sums of
    squares (for the mean and std of any subset)."""

    images: Tensor
    labels: Tensor
    files: list[str]
    sums: Tensor
    squares: Tensor

    def subset(self, index: Tensor) -> Split:
        return Split(
            self.images[index],
            self.labels[index],
            [self.files[i] for i in index.tolist()],
            self.sums[index],
            self.squares[index],
        )


@dataclass(frozen=True)
class FolderData:
    """An image folder read: its classes, image shape and splits, and where its cache lies."""

    root: Path
    classes: tuple[str, ...]
    image_shape: tuple[int, int, int]
    splits: dict[str, Split]
    cache: Path
    summary: str  # how the images were converted, and why (the defaults chosen)


def hidden(name: str) -> bool:
    return name.startswith(".") or name.lower() in HIDDEN


def class_name(folder: str) -> str:
    return unicodedata.normalize("NFC", folder)


def _entries(folder: Path) -> list[os.DirEntry]:
    try:
        return sorted((e for e in os.scandir(folder) if not hidden(e.name)), key=lambda e: e.name)
    except PermissionError as e:
        raise DataError(f"--data.image_folder: {folder} cannot be read ({e.strerror}): make it readable") from None


def list_folder(root: Path) -> Listing:
    """The classes and files of ROOT (see the module's docstring); `DataError` or `ArgumentError` when its layout is
    not one of the two."""
    if not root.exists():
        raise ArgumentError(
            f"--data.image_folder {root}: no such folder; pass the folder that holds a folder per class"
        )
    if not root.is_dir():
        raise ArgumentError(
            f"--data.image_folder {root} is a file, not a folder: pass the folder that holds a folder per class "
            "(ROOT/<class>/<images>)"
        )
    entries = _entries(root)
    folders = {e.name: Path(e.path) for e in entries if e.is_dir()}
    loose = sum(1 for e in entries if not e.is_dir())
    if "train" not in folders:
        misplaced = [name for names in SPLIT_FOLDERS.values() for name in names if name in folders]
        if misplaced:
            raise DataError(
                f"--data.image_folder {root} has {misplaced[0]}/ but no train/: add ROOT/train/<class>/, or rename "
                f"{misplaced[0]}/ if it is a class"
            )
        found = _classes_in(root, root)
        classes = _check_classes(root, found)
        files = [(name, classes.index(cls)) for cls, names in found.items() for name in names]
        return Listing(root, tuple(classes), {"all": files}, loose)
    splits_found: dict[str, dict[str, list[str]]] = {}
    others = set(folders)
    for split, names in SPLIT_FOLDERS.items():
        present = [name for name in names if name in folders]
        others -= set(present)
        if len(present) > 1:
            raise DataError(f"--data.image_folder {root} has both {' and '.join(present)}/: keep one of them")
        if present:
            splits_found[split] = _classes_in(folders[present[0]], root)
    if others:
        raise DataError(
            f"--data.image_folder {root} has train/ beside {', '.join(sorted(others))}/: with train/, ROOT holds "
            "only train/, val/ (or valid/) and test/, each with a folder per class; move the rest"
        )
    classes = _check_classes(root / "train", splits_found["train"])
    for split, found in splits_found.items():
        unknown = sorted(set(found) - set(classes))
        if unknown:
            raise DataError(
                f"--data.image_folder {root}: class {unknown[0]!r} is in {split}/ but not in train/: the network "
                "learns train/'s classes only; add it to train/ or remove it"
            )
    listed = {
        split: [(name, classes.index(cls)) for cls, names in found.items() for name in names]
        for split, found in splits_found.items()
    }
    return Listing(root, tuple(classes), listed, loose)


def _classes_in(folder: Path, root: Path) -> dict[str, list[str]]:
    """Each class folder of `folder` and its files (relative to `root`)."""
    found: dict[str, list[str]] = {}
    for entry in _entries(folder):
        if not entry.is_dir():
            continue
        files = []
        for item in _entries(Path(entry.path)):
            if item.is_dir():
                raise DataError(
                    f"--data.image_folder: {Path(item.path)} is a folder inside a class folder: images go directly in "
                    "<class>/ (one level); move them up, or make it a class of its own"
                )
            files.append(os.path.relpath(item.path, root))
        found.setdefault(class_name(entry.name), []).extend(files)
    return found


def _check_classes(folder: Path, found: dict[str, list[str]]) -> list[str]:
    empty = [name for name, files in found.items() if not files]
    if empty:
        raise DataError(
            f"--data.image_folder: class folder {folder / empty[0]} holds no files: add its images, or remove it"
        )
    if len(found) < 2:
        what = f"only one class folder ({next(iter(found))})" if found else "no class folders"
        raise DataError(
            f"--data.image_folder: {folder} has {what}: a classifier needs two classes or more, each a folder of "
            "images (ROOT/<class>/<images>)"
        )
    return sorted(found)


# --- Reading, once -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Header:
    size: Size  # height, width, upright (EXIF orientation applied)
    grey: bool


def read_header(path: Path, max_pixels: int = MAX_PIXELS) -> Header | str:
    """An image file's upright size and whether it is grey, from its header; or why it is not a usable image."""
    try:
        if path.stat().st_size == 0:
            return "empty file (0 bytes)"
        with Image.open(path) as image:
            if image.width * image.height > max_pixels:
                return f"{image.width}×{image.height} pixels is over the {max_pixels / 1e6:g}-megapixel limit"
            height, width = image.height, image.width
            with contextlib.suppress(Exception):  # a broken EXIF block: the image as stored
                if image.getexif().get(0x0112) in (5, 6, 7, 8):
                    height, width = width, height
            grey = image.mode in GREY_MODES
            if image.mode in ("P", "PA"):
                palette = image.getpalette() or []
                grey = all(palette[i] == palette[i + 1] == palette[i + 2] for i in range(0, len(palette) - 2, 3))
            return Header((height, width), grey)
    except Exception as e:  # Pillow raises many types for files that are not images or are broken
        return "not an image file (PNG, JPEG, BMP, TIFF or WebP)" if "identify" in str(e) else f"unreadable ({e})"


def _decode(path: Path, shape: tuple[int, int, int]) -> Tensor | str:
    try:
        return resized(open_image(path, MAX_PIXELS, draft=(shape[2], shape[1])), shape)
    except UnusableImage as e:
        return str(e)
    except Exception as e:  # anything else a broken file makes Pillow raise
        return f"unreadable image ({e})"


def _progress(total: int, description: str) -> tqdm:
    return tqdm(total=total, desc=description, unit=" images", file=sys.stderr, disable=global_rank() != 0)


def _pool_map(function: Any, items: Sequence[Any], description: str) -> Iterator[Any]:
    """`function` over `items`, in order, on a thread per usable CPU (Pillow decodes and resizes without the GIL).
    Submitted a window at a time: `Executor.map` submits every item at once, a future each (70,000 for MNIST)."""
    window = 1024
    with ThreadPoolExecutor(usable_cpus()) as pool, _progress(len(items), description) as bar:
        for start in range(0, len(items), window):
            for result in pool.map(function, items[start : start + window]):
                bar.update()
                yield result


def say(line: str) -> None:
    if global_rank() == 0:
        print(line, file=sys.stderr)


def open_image_folder(
    root: Path | str, data_dir: Path, channels: int | None = None, size: Size | None = None
) -> FolderData:
    """The image folder ROOT, read from its cache, or read and cached first (once per machine: a lock beside it)."""
    root = Path(root).expanduser()
    listing = list_folder(root)
    if listing.loose:
        say(f"note: {root}: {listing.loose} files directly in it are not read (only ROOT/<class>/ and its splits)")
    key = listing.key(channels, size)
    slug = re.sub(r"[^\w.-]", "_", root.resolve().name)[:60] or "root"
    cache = Path(data_dir) / CACHE_FOLDER / f"{slug}-{key[:16]}"
    found = _load_cache(cache, key)
    if found is not None:
        return found
    try:
        cache.mkdir(parents=True, exist_ok=True)
        lock = open(cache.parent / f".{cache.name}.lock", "a+")  # noqa: SIM115 (held until the cache is written)
    except OSError as e:
        raise write_failure(cache, e.errno, ELSEWHERE) from None
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process of this machine may be writing it: wait, then load it
        found = _load_cache(cache, key)
        if found is not None:
            return found
        _build_cache(listing, cache, key, channels, size)
    found = _load_cache(cache, key)
    if found is None:
        raise DataError(f"the image folder cache {cache} was written but does not read back: remove it and run again")
    return found


def _load_cache(cache: Path, key: str) -> FolderData | None:
    """The cache in `cache`, if it is complete and of `key`; None otherwise (it is then written again)."""
    try:
        facts = json.loads((cache / FACTS_FILE).read_text())
        if facts["key"] != key:
            return None
        splits = {}
        for split, length in facts["files"].items():
            path = cache / f"{split}.pt"
            if path.stat().st_size != length:
                return None
            content = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            splits[split] = Split(**content)
        shape = tuple(int(n) for n in facts["image_shape"])
        return FolderData(Path(facts["root"]), tuple(facts["classes"]), shape, splits, cache, facts["summary"])
    except Exception:  # missing, partial, of an older format: never used
        return None


def _choose(headers: list[Header], channels: int | None, size: Size | None) -> tuple[int, Size, list[str]]:
    """The channels and size of the network's images, and why (for the summary)."""
    why = []
    if size is None:
        counts = Counter(header.size for header in headers)
        size, count = counts.most_common(1)[0]
        why.append(f"{size[0]}×{size[1]}: the most common size of the training images ({count:,} of {len(headers):,})")
        if min(size) < MIN_SIZE:
            raise DataError(
                f"--data.image_folder: the most common size of the training images is {size[0]}×{size[1]}, below "
                f"{MIN_SIZE}×{MIN_SIZE}: pass --data.image_size [H, W] of at least {MIN_SIZE}"
            )
    else:
        why.append(f"{size[0]}×{size[1]}: --data.image_size")
    if channels is None:
        colour = sum(not header.grey for header in headers)
        channels = 3 if colour else 1
        why.append(
            f"{channels} channel{'s' if channels > 1 else ''}: "
            + (f"{colour:,} training images have colour" if colour else "every training image is grey")
        )
    else:
        why.append(f"{channels} channel{'s' if channels > 1 else ''}: --data.image_channels")
    return channels, size, why


def pixel_sums(images: Tensor, chunk: int = 4096) -> tuple[Tensor, Tensor]:
    """Each uint8 image's sum of pixels and of their squares (float64), in integers a chunk at a time: float64 copies
    of a whole split took 17.5 times the cached tensors' memory for MNIST's 60,000 images
    (benchmarks/image_folder.py)."""
    sums, squares = [], []
    for start in range(0, len(images), chunk):
        flat = images[start : start + chunk].flatten(1).to(torch.int32)
        sums.append(flat.sum(dim=1, dtype=torch.int64))
        squares.append(flat.square_().sum(dim=1, dtype=torch.int64))
    empty = torch.zeros(0, dtype=torch.int64)
    return torch.cat(sums or [empty]).double(), torch.cat(squares or [empty]).double()


def _build_cache(listing: Listing, cache: Path, key: str, channels: int | None, size: Size | None) -> None:
    root = listing.root
    names = [(split, name, label) for split, files in listing.splits.items() for name, label in files]
    headers = list(_pool_map(lambda item: read_header(root / item[1]), names, f"Scanning {root}"))
    training = ("train", "all")
    usable = [h for (split, _, _), h in zip(names, headers, strict=True) if isinstance(h, Header) and split in training]
    bad: dict[int, str] = {i: h for i, h in enumerate(headers) if isinstance(h, str)}
    if not usable:
        _report_bad(listing, cache, names, bad, limit=0)
    channels, size, why = _choose(usable, channels, size)
    shape = (channels, *size)
    _check_memory(len(names), shape)
    images = torch.empty((len(names), *shape), dtype=torch.uint8)
    todo = [i for i in range(len(names)) if i not in bad]

    def decode(i: int) -> str | None:
        result = _decode(root / names[i][1], shape)
        if isinstance(result, str):
            return result
        images[i] = result
        return None

    for i, problem in zip(todo, _pool_map(decode, todo, f"Reading {root}"), strict=True):
        if problem is not None:
            bad[i] = problem
    _report_bad(listing, cache, names, bad)
    good = torch.tensor([i not in bad for i in range(len(names))])
    kinds = {split for split, _, _ in names}
    written = {}
    for split in sorted(kinds):
        index = torch.tensor([i for i, (s, _, _) in enumerate(names) if s == split], dtype=torch.int64)
        index = index[good[index]]
        labels = torch.tensor([names[i][2] for i in index.tolist()], dtype=torch.int64)
        if split in training:
            missing = [listing.classes[c] for c in range(len(listing.classes)) if not (labels == c).any()]
            if missing:
                raise DataError(
                    f"--data.image_folder {root}: class {missing[0]!r} has no usable training image (see "
                    f"{cache / SKIPPED_FILE}): add images to it, or remove its folder"
                )
        part = images[index]
        sums, squares = pixel_sums(part)
        content = {
            "images": part,
            "labels": labels,
            "files": [names[i][1] for i in index.tolist()],
            "sums": sums,
            "squares": squares,
        }
        buffer = io.BytesIO()
        torch.save(content, buffer)
        write_atomically(cache / f"{split}.pt", buffer.getbuffer(), ELSEWHERE)
        written[split] = buffer.getbuffer().nbytes
    summary = f"{shape[1]}×{shape[2]}×{shape[0]} (height×width×channels): " + "; ".join(why)
    facts = {
        "key": key,
        "root": str(root.resolve()),
        "classes": list(listing.classes),
        "image_shape": list(shape),
        "files": written,
        "summary": summary,
        "skipped": len(bad),
    }
    write_atomically(cache / FACTS_FILE, json.dumps(facts, ensure_ascii=False, indent=1).encode(), ELSEWHERE)
    say(f"Read {len(names) - len(bad):,} images of {root} into {cache}")


def _check_memory(count: int, shape: tuple[int, int, int]) -> None:
    needed = count * math.prod(shape)
    with contextlib.suppress(ValueError, OSError, AttributeError):
        memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        if needed > memory / 2:
            raise DataError(
                f"--data.image_folder: {count:,} images of {'×'.join(map(str, shape))} take {needed / 1e9:.1f} GB, "
                f"over half of this machine's {memory / 1e9:.1f} GB: pass a smaller --data.image_size (or "
                "--data.image_channels 1)"
            )


def _report_bad(
    listing: Listing, cache: Path, names: list[tuple[str, str, int]], bad: dict[int, str], limit: float = MAX_BAD_SHARE
) -> None:
    """Write the skipped files and why to `<cache>/skipped.txt`, say so in one line; refuse more than `limit` of
    them."""
    skipped = cache / SKIPPED_FILE
    if not bad:
        with contextlib.suppress(FileNotFoundError):
            skipped.unlink()
        return
    lines = "".join(f"{names[i][1]}\t{problem}\n" for i, problem in sorted(bad.items()))
    write_atomically(skipped, lines.encode(), ELSEWHERE)
    first = min(bad)
    example = f"e.g. {names[first][1]}: {bad[first]}"
    if len(bad) > limit * len(names):
        raise DataError(
            f"--data.image_folder {listing.root}: {len(bad):,} of {len(names):,} files are not usable images, "
            + (f"over {limit:.0%}" if limit else "every training image among them")
            + f" ({example}; every one in {skipped}): fix or remove them"
            + (", or pass a smaller --data.image_size" if "too small" in bad[first] else "")
        )
    say(f"skipped {len(bad):,} of {len(names):,} files of {listing.root} that are not usable images (list: {skipped})")


# --- Splits --------------------------------------------------------------------------------------------------------


def count_of(size: int | float, total: int, flag: str) -> int:
    """A count (an int of 1 or more) or a fraction (a float between 0 and 1) of `total` items, as a count."""
    if isinstance(size, bool) or not isinstance(size, (int, float)):
        raise ArgumentError(f"--data.{flag} must be a count (1, 2, ...) or a fraction (0.1), got {size!r}")
    if isinstance(size, float) and not size.is_integer():
        if not 0 < size < 1:
            raise ArgumentError(f"--data.{flag} {size} is a fraction outside (0, 1): pass 0.1, say, or a count")
        return max(1, round(size * total))
    if size < 1:
        raise ArgumentError(f"--data.{flag} must be a positive count or a fraction in (0, 1), got {size}")
    return int(size)


def hold_out(labels: Tensor, counts: Sequence[int], seed: int = SPLIT_SEED) -> list[Tensor]:
    """A seeded split of items with `labels` into parts of `counts` items, each with every class in about its share,
    and the rest (returned last); every class keeps at least one item in the rest. Indices sorted."""
    classes = int(labels.max()) + 1
    members = [torch.nonzero(labels == c).flatten() for c in range(classes)]
    generator = torch.Generator().manual_seed(seed)
    members = [m[torch.randperm(len(m), generator=generator)] for m in members]
    sizes = torch.tensor([len(m) for m in members], dtype=torch.float64)
    taken = torch.zeros(classes, dtype=torch.int64)
    parts = []
    for count in counts:
        share = sizes * count / sizes.sum()
        quota = share.floor().to(torch.int64)
        # largest remainders first, class order breaking ties
        order = sorted(range(classes), key=lambda c: (-(share[c] - quota[c]).item(), c))
        for c in order[: count - int(quota.sum())]:
            quota[c] += 1
        quota = torch.minimum(quota, sizes.to(torch.int64) - 1 - taken).clamp(min=0)
        parts.append(torch.cat([m[t : t + q] for m, t, q in zip(members, taken.tolist(), quota.tolist(), strict=True)]))
        taken += quota
    rest = torch.cat([m[t:] for m, t in zip(members, taken.tolist(), strict=True)])
    return [part.sort().values for part in [*parts, rest]]


def folder_splits(
    data: FolderData, val_size: int | float | None, test_size: int | float | None
) -> tuple[Split, Split, Split]:
    """Training, validation and test images of a folder: its own splits, and what is missing held out of training."""
    splits = data.splits
    if "all" in splits:
        train = splits["all"]
    else:
        train = splits["train"]
        for split, given in (("val", val_size), ("test", test_size)):
            if split in splits and given is not None:
                say(f"note: {data.root / split} is the {split} set: --data.{split}_size {given} is not used")
    wanted = [(name, size) for name, size in (("val", val_size), ("test", test_size)) if name not in splits]
    counts = [
        count_of(DEFAULT_SHARE if size is None else size, len(train.labels), f"{name}_size") for name, size in wanted
    ]
    if sum(counts) >= len(train.labels) - len(data.classes) + 1:
        asked = ", ".join(f"{name}_size {count}" for (name, _), count in zip(wanted, counts, strict=True))
        raise ArgumentError(
            f"--data.image_folder {data.root}: {asked} leave too few of its {len(train.labels):,} images to train on "
            "(one per class at least): pass a smaller --data.val_size or --data.test_size, or a fraction such as 0.1"
        )
    *held, rest = hold_out(train.labels, counts)
    parts = dict(zip([name for name, _ in wanted], [train.subset(index) for index in held], strict=True))
    train = train.subset(rest) if held else train
    return train, parts.get("val") or splits["val"], parts.get("test") or splits["test"]


def folder_spec(data: FolderData, train: Split) -> DatasetSpec:
    """The folder's facts as a dataset: its classes, image shape and the mean and std of its training images."""
    pixels = len(train.labels) * math.prod(data.image_shape)
    mean = float(train.sums.sum()) / pixels / 255
    variance = float(train.squares.sum()) / pixels / 255**2 - mean**2
    if variance <= 1e-12:
        raise DataError(f"--data.image_folder {data.root}: every training pixel has the same value: nothing to learn")
    return DatasetSpec(
        name=IMAGE_FOLDER,
        folder=str(Path(CACHE_FOLDER) / data.cache.name),
        image_shape=data.image_shape,  # type: ignore[arg-type]
        classes=data.classes,
        mean=round(mean, 6),
        std=round(math.sqrt(variance), 6),
        preparation=RESIZE,
    )


def read_image_folder(
    root: Path | str,
    data_dir: Path,
    channels: int | None,
    size: Size | None,
    val_size: int | float | None,
    test_size: int | float | None,
    recorded: DatasetSpec | None = None,
) -> tuple[FolderData, tuple[Split, Split, Split], DatasetSpec]:
    """An image folder for a data module: read (its cache made first if need be), split, and its facts; `recorded`:
    the image folder dataset of the checkpoint this command uses, whose rule and classes it must have."""
    if recorded is not None:
        channels, size = check_rule(recorded, channels, size)
    data = open_image_folder(root, data_dir, channels, size)
    if recorded is not None and data.classes != recorded.classes:
        raise CheckpointError(
            f"the checkpoint was trained on an image folder of classes {list(recorded.classes)}, but "
            f"--data.image_folder {root} has {list(data.classes)}: pass the folder it was trained on, or a checkpoint "
            "of this one"
        )
    splits = folder_splits(data, val_size, test_size)
    spec = folder_spec(data, splits[0])
    counts = ", ".join(f"{len(s.labels):,} {n}" for n, s in zip(("train", "val", "test"), splits, strict=True))
    say(f"Image folder {root}: {len(spec.classes)} classes, {counts} images; {data.summary}")
    return data, splits, spec


def check_rule(recorded: DatasetSpec, channels: int | None, size: Size | None) -> tuple[int, Size]:
    """The channels and size a checkpoint's image folder was read with; a different one given is refused."""
    shape = recorded.image_shape
    if channels not in (None, shape[0]) or size not in (None, tuple(shape[1:])):
        raise ArgumentError(
            f"the checkpoint's network takes {shape[0]}-channel {shape[1]}×{shape[2]} images: leave --data.image_size "
            "and --data.image_channels out (they come from the checkpoint), or pass its own"
        )
    return shape[0], (shape[1], shape[2])


def image_size_of(size: int | Sequence[int] | None) -> Size | None:
    """`--data.image_size` (an int, or [height, width]) as height, width; checked."""
    if size is None:
        return None
    sizes = [size, size] if isinstance(size, int) else list(size)
    if len(sizes) != 2 or any(isinstance(n, bool) or not isinstance(n, int) or n < MIN_SIZE for n in sizes):
        raise ArgumentError(
            f"--data.image_size must be one size or [height, width], each at least {MIN_SIZE} pixels, got {size}"
        )
    return sizes[0], sizes[1]
