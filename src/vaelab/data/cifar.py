"""CIFAR-10 as torchvision lays it out: `<data_dir>/cifar-10-batches-py/`, five training batches,
a test batch and `batches.meta`, each a pickled dict.

torchvision's download (and its md5 checks of the archive) fetches and extracts the files; they
are read here rather than by torchvision's CIFAR10 class, which accepts only files whose md5 is
the original's and, for any other file, says "Dataset not found or corrupted" without naming
it. The pickles are read with an unpickler that builds dicts, lists, strings and numpy arrays
and nothing else, so a file that is not a CIFAR batch cannot run code; each file is checked for
what a batch holds (`data` (n, 3072) uint8, n `labels`), and a file that is not is named.
"""

import contextlib
import io
import pickle
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torchvision import datasets
from torchvision.datasets.utils import extract_archive

from vaelab.errors import DataError

FOLDER = datasets.CIFAR10.base_folder  # cifar-10-batches-py
TRAIN_FILES = tuple(name for name, _ in datasets.CIFAR10.train_list)  # data_batch_1 .. data_batch_5
TEST_FILE = datasets.CIFAR10.test_list[0][0]  # test_batch
META_FILE = datasets.CIFAR10.meta["filename"]  # batches.meta
FILES = (*TRAIN_FILES, TEST_FILE, META_FILE)
ARCHIVE = datasets.CIFAR10.filename  # cifar-10-python.tar.gz, what the download fetches into data_dir
SIDE = 32

# What a CIFAR batch pickle may build: numpy arrays (as numpy 1 and numpy 2 pickle them).
_ALLOWED = {(module, name) for module in ("numpy.core.multiarray", "numpy._core.multiarray")
            for name in ("_reconstruct", "scalar")} | {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}


class _BatchUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"it asks for {module}.{name}, which a CIFAR batch does not hold")


def folder(data_dir: Path) -> Path:
    return Path(data_dir) / FOLDER


def files(data_dir: Path) -> list[Path]:
    return [folder(data_dir) / name for name in FILES]


def present(data_dir: Path) -> bool:
    """Whether the batches are there, extracting torchvision's archive in `data_dir` if only it is."""
    if all(path.exists() for path in files(data_dir)):
        return True
    archive = Path(data_dir) / ARCHIVE
    if not archive.exists():
        return False
    try:
        extract_archive(str(archive), str(data_dir))
    except Exception as err:  # a truncated download
        raise DataError(f"{archive} is not a readable archive ({err}); delete it and run again with "
                        f"data.source=download, or put the extracted {FOLDER}/ into {data_dir}") from err
    return all(path.exists() for path in files(data_dir))


def _load(path: Path, fix: str) -> dict:
    try:
        with path.open("rb") as f:
            entry = _BatchUnpickler(f, encoding="latin1").load()
    except Exception as err:
        raise DataError(f"{path} is not a CIFAR batch file ({err}). {fix}") from err
    if not isinstance(entry, dict):
        raise DataError(f"{path} is not a CIFAR batch file (it holds a {type(entry).__name__}, not a dict). {fix}")
    return entry


def _batch(path: Path, fix: str, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    entry = _load(path, fix)
    data, labels = entry.get("data"), entry.get("labels", entry.get("fine_labels"))
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * SIDE * SIDE:
        what = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{path}: its data is {what}, not uint8 rows of 3×{SIDE}×{SIDE} pixels. {fix}")
    labels = np.asarray(labels if labels is not None else [])
    if labels.shape != (len(data),) or not np.issubdtype(labels.dtype, np.integer) or \
            (len(labels) and (labels.min() < 0 or labels.max() >= n_classes)):
        raise DataError(f"{path} holds {len(data)} images but not as many labels in 0..{n_classes - 1}. {fix}")
    return data, labels


def decode(data_dir: Path) -> dict[str, torch.Tensor]:
    """The batches in `<data_dir>/cifar-10-batches-py`, checked: uint8 images (N, 3, 32, 32) (the
    batches' rows are channel-first already) and int64 labels."""
    fix = f"Delete {folder(data_dir)} and run again with data.source=download, or put intact files there."
    meta = _load(folder(data_dir) / META_FILE, fix)
    n_classes = len(meta.get("label_names", ()))
    if not n_classes:
        raise DataError(f"{folder(data_dir) / META_FILE} has no label_names. {fix}")
    tensors = {}
    for split, names in (("train", TRAIN_FILES), ("test", (TEST_FILE,))):
        batches = [_batch(folder(data_dir) / name, fix, n_classes) for name in names]
        images = np.concatenate([data for data, _ in batches]).reshape(-1, 3, SIDE, SIDE)
        tensors[f"{split}_images"] = torch.from_numpy(images)
        tensors[f"{split}_labels"] = torch.from_numpy(np.concatenate([labels for _, labels in batches]).astype(np.int64))
    return tensors


def class_names(data_dir: Path) -> tuple[str, ...]:
    meta = _load(folder(data_dir) / META_FILE, f"Delete {folder(data_dir)} and run again with data.source=download.")
    return tuple(str(name) for name in meta["label_names"])


def download(data_dir: Path, mirrors: Optional[list[str]]) -> None:
    """torchvision's download of the archive (checked against its md5) and extraction into `data_dir`;
    `mirrors`: base URLs to fetch cifar-10-python.tar.gz from instead of torchvision's, in turn."""
    urls = [f"{m.rstrip('/')}/{ARCHIVE}" for m in mirrors] if mirrors else [datasets.CIFAR10.url]
    reasons = []
    for url in urls:
        cls = type("CIFAR10", (datasets.CIFAR10,), {"url": url})
        chatter = io.StringIO()  # torchvision prints its progress and each failure
        try:
            with contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):
                cls(str(data_dir), train=True, download=True)
            return
        except Exception as err:
            reasons.append(str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__)
    raise DataError(f"could not download cifar10 from {', '.join(urls)}: {'; '.join(reasons)}")
