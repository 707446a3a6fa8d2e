"""Your own images: a folder of image files (`data=folder`) or a .npz file of arrays (`data=npz`).

A folder holds PNG, JPEG, BMP or WebP files (vaelab.catalog.IMAGE_SUFFIXES, any case), either
all in the folder itself (no labels: -1) or in one subfolder per class (the label of a file is
the index of its folder among the sorted folder names). Files and folders whose name starts with
a dot, and files of other types, are skipped. Each file is decoded with PIL into grey or RGB
(`channels`: 1, 3, or None for as the files are: all grey → 1, else 3, grey files repeated into
three channels), then brought to `image_size` (H, W): centre-cropped to its aspect ratio and
resized with PIL's bicubic filter; with `image_size` None every file must have one size.

A .npz file holds a uint8 array `x`, (N, H, W) or (N, H, W, C) with C 1 or 3, optional integer
labels `y` (N,), and optionally a test set `x_test` (and `y_test` where `y` is given).

Both decode into the uint8 cache (vaelab.data.cache) keyed by every file's name, size, inode and
modification time and by the settings that change the decoded pixels (`image_size`, `channels`).
The cache file lives beside the images (`<folder>/vaelab-images.pt`, `<name>-vaelab-images.pt`
beside a .npz file); where that folder is not writable (a shared, read-only data set), in
data.data_dir under a name made from the images' path, so the next run does not decode them
again; where neither is writable, nowhere.
"""

import hashlib
import zipfile
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from PIL import Image, ImageOps

from vaelab.catalog import IMAGE_SUFFIXES
from vaelab.data.cache import CACHE_FILE, cached, files_key, writable_cache_file
from vaelab.errors import DataError

# Modes PIL opens grey files in (8- and 16-bit, with or without alpha, 1-bit).
GREY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")
_FORMAT = 1  # of what `_decode_folder` and `_decode_npz` produce: a change here rebuilds every cache


def cache_path(images: Path, data_dir: Path) -> Optional[Path]:
    """Where the decoded images of the folder or file `images` are kept (see the module's docstring)."""
    images = Path(images).resolve()
    beside = images if images.is_dir() else images.parent
    name = CACHE_FILE if images.is_dir() else f"{images.stem}-{CACHE_FILE}"
    digest = hashlib.sha256(str(images).encode()).hexdigest()[:12]
    return writable_cache_file(beside, name) or writable_cache_file(data_dir, f"{images.name}-{digest}-{CACHE_FILE}")


# -- a folder of image files ------------------------------------------------------------------

def _visible(path: Path) -> bool:
    return not path.name.startswith(".")


def _is_image(path: Path) -> bool:
    return path.is_file() and _visible(path) and path.suffix.lower() in IMAGE_SUFFIXES


def list_folder(root: Path) -> tuple[list[Path], list[int], Optional[tuple[str, ...]]]:
    """The image files of `root` in the order they are read, their labels and the class names
    (None for a flat folder)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data.path={root} is not a folder; give the folder of your images")
    entries = sorted(p for p in root.iterdir() if _visible(p))
    flat = [p for p in entries if _is_image(p)]
    class_dirs = [p for p in entries if p.is_dir()]
    kinds = ", ".join(s.lstrip(".") for s in IMAGE_SUFFIXES)
    if flat and class_dirs:
        with_images = [d for d in class_dirs if any(_is_image(p) for p in d.rglob("*"))]
        if with_images:
            raise DataError(f"{root} holds image files ({flat[0].name}, ...) and folders of images ({with_images[0].name}/, "
                            f"...): put every image in the folder itself (no labels) or each in the folder of its class")
    if flat:
        return flat, [-1] * len(flat), None
    files, labels = [], []
    for label, class_dir in enumerate(class_dirs):
        found = sorted(p for p in class_dir.rglob("*")
                       if _is_image(p) and not any(part.startswith(".") for part in p.relative_to(class_dir).parts))
        if not found:
            raise DataError(f"{class_dir} holds no image files ({kinds}): remove it, or put the images of class "
                            f"{class_dir.name} in it (the subfolders of {root} are its classes)")
        files += found
        labels += [label] * len(found)
    if not files:
        raise DataError(f"{root} holds no image files ({kinds}), neither in itself nor in one subfolder per class")
    return files, labels, tuple(d.name for d in class_dirs)


def _open(path: Path, channels: Optional[int]) -> Image.Image:
    """The file as a grey ("L") or RGB image: `channels`, or as the file is (None)."""
    try:
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image)  # a photo taken upright is upright
            image.load()
    except Exception as err:  # PIL: UnidentifiedImageError, OSError (truncated), SyntaxError, ...
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DataError(f"{path} is not a readable image ({reason}); replace or remove it") from err
    if image.mode.startswith("I"):  # 16-bit grey: PIL's convert to "L" clips at 255 instead of scaling
        scaled = np.asarray(image, dtype=np.float64) * (255 / 65535)
        image = Image.fromarray(np.clip(np.round(scaled), 0, 255).astype(np.uint8), "L")
    grey = image.mode in GREY_MODES if channels is None else channels == 1
    return image.convert("L" if grey else "RGB")


def _crop_box(width: int, height: int, size: tuple[int, int]) -> tuple[float, float, float, float]:
    """The centred part of a width×height image that has the aspect ratio of `size` (H, W)."""
    target_h, target_w = size
    if width * target_h > height * target_w:  # wider than the target: keep the full height
        kept = height * target_w / target_h
        return ((width - kept) / 2, 0.0, (width + kept) / 2, float(height))
    kept = width * target_h / target_w
    return (0.0, (height - kept) / 2, float(width), (height + kept) / 2)


def _decode_folder(files: list[Path], labels: list[int], image_size: Optional[tuple[int, int]],
                   channels: Optional[int]) -> dict[str, torch.Tensor]:
    arrays, first = [], None
    for path in files:
        image = _open(path, channels)
        if image_size is not None:
            if image.size != (image_size[1], image_size[0]):
                box = _crop_box(*image.size, image_size)
                image = image.resize((image_size[1], image_size[0]), Image.Resampling.BICUBIC, box=box)
        elif first is None:
            first = (path, image.size)
        elif image.size != first[1]:
            (w0, h0), (w, h) = first[1], image.size
            raise DataError(f"{first[0]} is {h0}×{w0} (height×width) but {path} is {h}×{w}: set data.image_size "
                            f"(e.g. data.image_size={h0} or data.image_size=[{h0},{w0}]) to bring every image to one size")
        array = np.asarray(image)
        arrays.append(array[None] if array.ndim == 2 else array.transpose(2, 0, 1))  # (C, H, W)
    if len({a.shape[0] for a in arrays}) > 1:  # grey and colour files, read as they are: grey ones to RGB
        arrays = [np.repeat(a, 3, axis=0) if a.shape[0] == 1 else a for a in arrays]
    return {"train_images": torch.from_numpy(np.stack(arrays)), "train_labels": torch.tensor(labels, dtype=torch.int64)}


def read_folder(root: Path, image_size: Optional[tuple[int, int]], channels: Optional[int],
                data_dir: Path) -> tuple[dict[str, torch.Tensor], Optional[tuple[str, ...]]]:
    """The images of the folder `root` (decoded once, then from the cache), and its class names."""
    files, labels, classes = list_folder(root)
    size = tuple(image_size) if image_size is not None else (None, None)
    key = (*files_key(files), ("decoded", "folder", _FORMAT, *size, channels))
    tensors = cached(key, cache_path(root, data_dir), lambda: _decode_folder(files, labels, image_size, channels))
    return tensors, classes


# -- a .npz file ------------------------------------------------------------------------------

def _images(path: Path, arrays: dict[str, np.ndarray], key: str) -> np.ndarray:
    x = arrays[key]
    if x.dtype != np.uint8:
        hint = " (from floats in [0, 1]: (x * 255).round().astype(np.uint8))" if x.dtype.kind == "f" else ""
        raise DataError(f"{key} in {path} is {x.dtype}, must be uint8 pixels 0..255{hint}")
    if x.ndim == 4 and x.shape[-1] not in (1, 3) and x.shape[1] in (1, 3):
        raise DataError(f"{key} in {path} has shape {x.shape}, must be (N, H, W) or (N, H, W, C) with C 1 or 3: "
                        f"channels last (np.moveaxis({key}, 1, -1))")
    if x.ndim not in (3, 4) or (x.ndim == 4 and x.shape[-1] not in (1, 3)) or 0 in x.shape:
        raise DataError(f"{key} in {path} has shape {x.shape}, must be (N, H, W) or (N, H, W, C) with C 1 or 3, N >= 1")
    return np.ascontiguousarray(x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2))  # (N, C, H, W)


def _labels(path: Path, arrays: dict[str, np.ndarray], key: str, n: int, images: str) -> np.ndarray:
    y = arrays[key]
    if not np.issubdtype(y.dtype, np.integer) or y.shape != (n,):
        raise DataError(f"{key} in {path} is {y.dtype} {y.shape}, must be integer labels ({n},): one per image of {images}")
    if n and y.min() < 0:
        raise DataError(f"{key} in {path} holds the label {y.min()}, must be labels >= 0 (leave {key} out for none)")
    return y.astype(np.int64)


def _decode_npz(path: Path) -> dict[str, torch.Tensor]:
    fix = f"write it with np.savez({path.name!r}, x=images, y=labels)"
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise DataError(f"{path} holds one array (a .npy file), not named arrays (a .npz file): {fix}")
        with loaded as npz:
            arrays = {name: npz[name] for name in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:  # not a zip, a damaged member, an object array
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DataError(f"{path} is not a readable .npz file of arrays ({reason}); {fix}") from err
    if "x" not in arrays:
        raise DataError(f"{path} has no array x (it has {', '.join(arrays) or 'none'}): save the images as x; {fix}")
    for test, train in (("y_test", "y"), ("y_test", "x_test")):
        if test in arrays and train not in arrays:
            raise DataError(f"{path} has {test} but no {train}: the test labels need the training labels y and "
                            f"the test images x_test")
    if "x_test" in arrays and ("y" in arrays) != ("y_test" in arrays):
        raise DataError(f"{path} has y and x_test but no y_test: give the test images their labels as y_test (or drop y)")
    tensors = {}
    for split, (x_key, y_key) in (("train", ("x", "y")), ("test", ("x_test", "y_test"))):
        if x_key not in arrays:
            continue
        images = _images(path, arrays, x_key)
        labels = _labels(path, arrays, y_key, len(images), x_key) if y_key in arrays else np.full(len(images), -1)
        tensors[f"{split}_images"], tensors[f"{split}_labels"] = torch.from_numpy(images), torch.from_numpy(labels)
    if "test_images" in tensors and tensors["test_images"].shape[1:] != tensors["train_images"].shape[1:]:
        raise DataError(f"x_test in {path} holds {tuple(tensors['test_images'].shape[1:])} images (C, H, W) but x holds "
                        f"{tuple(tensors['train_images'].shape[1:])}: the test images must have the shape of the training images")
    return tensors


def read_npz(path: Path, data_dir: Path) -> dict[str, torch.Tensor]:
    """The arrays of the .npz file at `path` (decoded once, then from the cache)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data.path={path} is not a file; give the .npz file of your images")
    key = (*files_key([path]), ("decoded", "npz", _FORMAT))
    return cached(key, cache_path(path, data_dir), lambda: _decode_npz(path))

