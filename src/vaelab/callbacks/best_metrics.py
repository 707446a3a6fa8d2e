"""Remembers the validation metrics of the best epoch, i.e. of the best checkpoint."""

import math

import pytorch_lightning as pl


class BestEpochMetrics(pl.Callback):
    """Keeps every `val/...` metric of the epoch whose `monitor` value was best.

    ModelCheckpoint saves the best weights at the end of that same validation, so these are
    the validation metrics of the checkpoint that is tested after fit, without a second pass.
    """

    def __init__(self, monitor: str = "val/loss", mode: str = "min"):
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', not {mode!r}")
        self.monitor, self.mode = monitor, mode
        self.best: float | None = None
        self.epoch: int | None = None
        self.metrics: dict[str, float] = {}

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
