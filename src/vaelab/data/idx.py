"""The IDX file format of MNIST-style data sets: checking and writing files.

Reading stays with torchvision; these checks run first because torchvision's reader fails on a
truncated file with "shape '[60000, 28, 28]' is invalid", naming neither the file nor the fix.
"""

import gzip
import math
import shutil
import struct
from pathlib import Path

import numpy as np

from vaelab.errors import DataError
from vaelab.files import atomic_write

# IDX type byte → bytes per element (big-endian values).
_ELEMENT_SIZES = {0x08: 1, 0x09: 1, 0x0B: 2, 0x0C: 4, 0x0D: 4, 0x0E: 8}
_NUMPY_TYPES = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09, np.dtype(">i2"): 0x0B,
                np.dtype(">i4"): 0x0C, np.dtype(">f4"): 0x0D, np.dtype(">f8"): 0x0E}


def idx_shape(path: Path, fix: str) -> tuple[int, ...]:
    """Shape stored in the IDX file at `path`, after checking that the file is complete.

    `fix` is the advice appended to the error (how to get an intact file).
    """
    path = Path(path)
    with path.open("rb") as f:
        header = f.read(4)
        if len(header) < 4 or header[0] != 0 or header[1] != 0 or header[2] not in _ELEMENT_SIZES or not 1 <= header[3] <= 4:
            raise DataError(f"{path} is not an IDX file (bad header {header.hex() or 'empty'}). {fix}")
        ndim = header[3]
        dims_bytes = f.read(4 * ndim)
    if len(dims_bytes) < 4 * ndim:
        raise DataError(f"{path} is truncated inside its header. {fix}")
    shape = struct.unpack(f">{ndim}I", dims_bytes)
    expected = 4 + 4 * ndim + math.prod(shape) * _ELEMENT_SIZES[header[2]]
    actual = path.stat().st_size
    if actual != expected:
        what = "truncated" if actual < expected else "longer than its header says"
        raise DataError(
            f"{path} is {what}: its header describes {'×'.join(map(str, shape))} values "
            f"({expected:,} bytes) but the file has {actual:,} bytes. {fix}"
        )
    return shape


def write_idx(path: Path, array: np.ndarray) -> Path:
    """Write `array` as an (uncompressed) IDX file, the format torchvision reads."""
    array = np.asarray(array)
    dtype = array.dtype.newbyteorder(">") if array.dtype.itemsize > 1 else array.dtype
    if dtype not in _NUMPY_TYPES:
        raise ValueError(f"IDX cannot store dtype {array.dtype}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        f.write(bytes([0, 0, _NUMPY_TYPES[dtype], array.ndim]))
        f.write(struct.pack(f">{array.ndim}I", *array.shape))
        f.write(array.astype(dtype).tobytes())
    return path


def gunzip(source: Path, target: Path) -> None:
    """Decompress `source` into `target` atomically, so an interrupted copy leaves no half file."""
    with gzip.open(source, "rb") as src, atomic_write(target, "wb") as dst:
        shutil.copyfileobj(src, dst)
