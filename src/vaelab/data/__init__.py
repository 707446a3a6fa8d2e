"""Reading MNIST-style data, resolving where it comes from, and the DataModule."""

from vaelab.data.datamodule import MNISTDataModule
from vaelab.data.idx import idx_shape, write_idx
from vaelab.data.loader import TensorBatchLoader
from vaelab.data.sources import ImageSet, load_images

__all__ = ["ImageSet", "MNISTDataModule", "TensorBatchLoader", "idx_shape", "load_images", "write_idx"]
