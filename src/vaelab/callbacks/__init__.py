"""Callbacks that watch training."""

from vaelab.callbacks.best_metrics import BestEpochMetrics
from vaelab.callbacks.epoch_timer import EpochTimer
from vaelab.callbacks.latent_panels import LatentPanels

__all__ = ["BestEpochMetrics", "EpochTimer", "LatentPanels"]
