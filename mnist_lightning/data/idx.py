"""The IDX file format of MNIST: writing it, and explaining why a file is not valid IDX."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from mnist_lightning.files import write_atomically

UINT8_TYPE_CODE = 0x08


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array as an uncompressed IDX file, atomically (`mnist_lightning.files.write_atomically`)."""
    if array.dtype != np.uint8:
        raise TypeError(f"IDX writer takes uint8 arrays, got {array.dtype}")
    header = struct.pack(">BBBB", 0, 0, UINT8_TYPE_CODE, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    write_atomically(path, header + np.ascontiguousarray(array).tobytes())


def idx_format_problem(path: Path, expected_ndim: int) -> str | None:
    """Say what makes `path` an invalid uint8 IDX file of `expected_ndim` dimensions, or None if it looks valid."""
    size = path.stat().st_size
    with path.open("rb") as f:
        magic = f.read(4)
        if len(magic) < 4 or magic[:2] != b"\0\0" or magic[2] != UINT8_TYPE_CODE:
            return f"wrong magic number {magic.hex() or '(empty file)'}: not an uncompressed uint8 IDX file"
        ndim = magic[3]
        if ndim != expected_ndim:
            return f"holds {ndim}-dimensional data, expected {expected_ndim}"
        dims_bytes = f.read(4 * ndim)
    if len(dims_bytes) < 4 * ndim:
        return "truncated inside its header"
    dims = struct.unpack(f">{ndim}I", dims_bytes)
    expected_size = 4 + 4 * ndim + int(np.prod(dims))
    if size < expected_size:
        return f"truncated: {size:,} of {expected_size:,} bytes"
    if size > expected_size:
        return f"has {size - expected_size:,} unexpected trailing bytes"
    return None
