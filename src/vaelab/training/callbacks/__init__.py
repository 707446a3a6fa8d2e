"""Callbacks that watch training."""

from vaelab.training.callbacks.best_metrics import BestEpochMetrics
from vaelab.training.callbacks.epoch_timer import EpochTimer
from vaelab.training.callbacks.latent_panels import LatentPanels

__all__ = ["BestEpochMetrics", "EpochTimer", "LatentPanels"]
