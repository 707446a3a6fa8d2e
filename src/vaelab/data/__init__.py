"""Reading images, resolving where they come from, and the DataModule."""

from vaelab.data.datamodule import ImageDataModule, MNISTDataModule
from vaelab.data.factors import GroundTruth
from vaelab.data.idx import idx_shape, write_idx
from vaelab.data.loader import TensorBatchLoader
from vaelab.data.sources import ImageSet, load_images

__all__ = ["GroundTruth", "ImageDataModule", "ImageSet", "MNISTDataModule", "TensorBatchLoader", "idx_shape", "load_images", "write_idx"]
