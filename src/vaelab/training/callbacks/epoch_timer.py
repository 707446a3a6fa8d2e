"""Wall-clock seconds per training epoch, logged as `time/train_epoch_s`."""

import time

import pytorch_lightning as pl
import torch


class EpochTimer(pl.Callback):
    """Times each training epoch (validation excluded) on the device's clock.

    Enable with `+callbacks.epoch_timer._target_=vaelab.training.callbacks.EpochTimer`; bench/ uses it
    to compare runs on 1 and 2 devices through the real entry point.
    """

    def __init__(self) -> None:
        self._start = self._validation_start = self._validation_time = 0.0

    @staticmethod
    def _now(pl_module: pl.LightningModule) -> float:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        return time.perf_counter()

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._validation_time = 0.0
        self._start = self._now(pl_module)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._validation_start = self._now(pl_module)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._validation_time += self._now(pl_module) - self._validation_start

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        seconds = self._now(pl_module) - self._start - self._validation_time
        pl_module.log("time/train_epoch_s", seconds, on_step=False, on_epoch=True, rank_zero_only=True)
