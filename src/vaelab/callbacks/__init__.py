"""Callbacks that watch training."""

from vaelab.callbacks.best_metrics import BestEpochMetrics
from vaelab.callbacks.latent_panels import LatentPanels

__all__ = ["BestEpochMetrics", "LatentPanels"]
