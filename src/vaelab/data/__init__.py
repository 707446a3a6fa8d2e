"""Reading MNIST-style data, resolving where it comes from, and the DataModule."""

from vaelab.data.datamodule import BINARIZE, MNISTDataModule
from vaelab.data.idx import idx_shape, write_idx
from vaelab.data.loader import TensorBatchLoader
from vaelab.data.sources import DATASETS, SOURCES, ImageSet, load_images

__all__ = ["BINARIZE", "DATASETS", "SOURCES", "ImageSet", "MNISTDataModule", "TensorBatchLoader",
           "idx_shape", "load_images", "write_idx"]
