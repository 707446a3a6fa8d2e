"""Callbacks that watch training."""

from vaelab.callbacks.best_metrics import BestEpochMetrics

__all__ = ["BestEpochMetrics"]
