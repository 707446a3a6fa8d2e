"""Writing files that other processes read: atomically.

Sweep jobs run at once (joblib), a killed run leaves what it wrote, a disk fills up, and
readers (summaries, comparisons, the next run) may look at any moment: every file (records,
checkpoints, the classifier cache, decompressed data) is written to a temporary file in its
target's directory (the same filesystem, so the rename is atomic), flushed to the disk, and
renamed over its target. A reader sees the old file or the new one, never half of one, and a
write that fails leaves the old file as it was.
"""

import errno
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from vaelab.errors import DiskFullError

# A write that fails for lack of room: no space, over quota, over the file-size limit.
_NO_ROOM = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def _fsync_directory(folder: Path) -> None:
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:  # some filesystems do not open directories; the rename is done all the same
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


@contextmanager
def atomic_write(path: str | Path, mode: str = "w", **open_kwargs) -> Iterator[IO]:
    """Open a temporary file beside `path`; on success it is fsynced and replaces `path`, on
    error it is removed and `path` is left as it was.

    A full disk (or quota, or file-size limit) raises DiskFullError, one line naming the file.
    """
    path = Path(path)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(partial, mode, **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        partial.replace(path)
        _fsync_directory(path.parent)
    except OSError as err:
        if err.errno in _NO_ROOM and not isinstance(err, DiskFullError):
            raise DiskFullError(f"the disk is full: {path} could not be written ({os.strerror(err.errno)}); "
                                f"the files written before it are intact. Free space on that disk and run again") from err
        raise
    finally:
        partial.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> Path:
    with atomic_write(path, newline="") as f:
        f.write(text)
    return Path(path)


def write_json(path: str | Path, record: dict[str, Any]) -> Path:
    """One JSON object, keys sorted; values JSON cannot hold (paths, ...) as strings."""
    return write_text(path, json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")
