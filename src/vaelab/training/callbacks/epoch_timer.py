"""Wall-clock seconds per epoch: `time/epoch_s` whole, `time/train_epoch_s` its training batches."""

import time
from typing import Optional

import pytorch_lightning as pl
import torch


class EpochTimer(pl.Callback):
    """Times each epoch on the device's clock.

    `time/epoch_s` is the whole epoch: its training batches, validation, and what callbacks do
    after it (latent diagnostics and panels, checkpoints). `time/train_epoch_s` is the epoch
    without the time from each validation's start to the next training batch (or the epoch's
    end), so that the two give what validation, panels and checkpoints cost per epoch.

    Enable with `+callbacks.epoch_timer._target_=vaelab.training.callbacks.EpochTimer`; bench/ uses it
    to compare runs through the real entry point.
    """

    def __init__(self) -> None:
        self._start = self._outside_training = 0.0
        self._validation_start: Optional[float] = None

    @staticmethod
    def _now(pl_module: pl.LightningModule) -> float:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        return time.perf_counter()

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._outside_training = 0.0
        self._validation_start = None
        self._start = self._now(pl_module)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._validation_start = self._now(pl_module)

    def _back_to_training(self, pl_module: pl.LightningModule) -> float:
        now = self._now(pl_module) if self._validation_start is not None else 0.0
        if self._validation_start is not None:  # one sync per validation, not per batch
            self._outside_training += now - self._validation_start
            self._validation_start = None
        return now

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        self._back_to_training(pl_module)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._back_to_training(pl_module)
        whole = self._now(pl_module) - self._start
        pl_module.log("time/epoch_s", whole, on_step=False, on_epoch=True, rank_zero_only=True)
        pl_module.log("time/train_epoch_s", whole - self._outside_training, on_step=False, on_epoch=True,
                      rank_zero_only=True)
