"""Training: the LightningModule, the CUDA-graph step, loggers and callbacks."""

from vaelab.training.module import LitAutoencoder
from vaelab.training.optim import make_optimizer

__all__ = ["LitAutoencoder", "make_optimizer"]
