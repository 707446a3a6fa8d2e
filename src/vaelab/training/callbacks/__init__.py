"""Callbacks that watch training."""

from vaelab.training.callbacks.best_metrics import BestEpochMetrics
from vaelab.training.callbacks.checkpoint import ResumableModelCheckpoint
from vaelab.training.callbacks.early_stopping import EarlyStopping, early_stopping_record
from vaelab.training.callbacks.epoch_timer import EpochTimer
from vaelab.training.callbacks.latent_panels import LatentPanels
from vaelab.training.callbacks.preemption import Preemption
from vaelab.training.callbacks.summary import ModelSummary

__all__ = ["BestEpochMetrics", "EarlyStopping", "EpochTimer", "LatentPanels", "ModelSummary", "Preemption",
           "ResumableModelCheckpoint", "early_stopping_record"]
