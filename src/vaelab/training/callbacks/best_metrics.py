"""Remembers the validation metrics of the best epoch, i.e. of the best checkpoint."""

import math
from typing import Optional

import pytorch_lightning as pl


class BestEpochMetrics(pl.Callback):
    """Keeps every `val/...` metric of the epoch whose `monitor` value was best.

    By default it follows the trainer's ModelCheckpoint (its `monitor` and `mode`; val/loss,
    min without one), which saves the best weights at the end of that same validation: these
    are the validation metrics of the checkpoint that is tested after fit, without a second pass.
    """

    def __init__(self, monitor: Optional[str] = None, mode: Optional[str] = None):
        self.monitor, self.mode = monitor, mode
        self.best: float | None = None
        self.epoch: int | None = None
        self.metrics: dict[str, float] = {}

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        checkpoint = trainer.checkpoint_callback
        followed = checkpoint is not None and checkpoint.monitor
        self.monitor = self.monitor or (checkpoint.monitor if followed else "val/loss")
        self.mode = self.mode or (checkpoint.mode if followed else "min")

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or self.monitor not in trainer.callback_metrics:
            return
        current = float(trainer.callback_metrics[self.monitor])
        if not math.isfinite(current):
            return
        if self.best is None or (current < self.best if self.mode == "min" else current > self.best):
            self.best, self.epoch = current, trainer.current_epoch
            self.metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}

    def state_dict(self) -> dict:
        return {"best": self.best, "epoch": self.epoch, "metrics": self.metrics}

    def load_state_dict(self, state_dict: dict) -> None:
        self.best, self.epoch, self.metrics = state_dict["best"], state_dict["epoch"], state_dict["metrics"]
