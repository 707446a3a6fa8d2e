"""Callbacks that watch training."""

from vaelab.callbacks.best_metrics import BestEpochMetrics
from vaelab.callbacks.epoch_timer import EpochTimer

__all__ = ["BestEpochMetrics", "EpochTimer"]
