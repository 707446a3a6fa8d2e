"""Watches the latent space during training: diagnostics every validation, image panels every few epochs."""

import logging
from pathlib import Path
from typing import Optional

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import Logger, TensorBoardLogger, WandbLogger

from vaelab.errors import ConfigError
from vaelab.evaluation.latent import active_units, encode
from vaelab.evaluation.panels import Panel, make_panels, save_panels

log = logging.getLogger(__name__)


def split_images(trainer: pl.Trainer, split: str, limit: Optional[int], device: torch.device):
    """The first `limit` images of a split as model inputs (floats in pixel_range) and their labels."""
    datamodule = trainer.datamodule
    if datamodule is None or not getattr(datamodule, "splits", None):
        raise ConfigError("the LatentPanels callback needs vaelab's ImageDataModule (trainer.fit(..., datamodule=...))")
    images, labels = datamodule.splits[split]
    images, labels = images[:limit].to(device), labels[:limit].to(device)
    # The DataModule's own conversion: uint8 → floats in data.pixel_range (val/test are never resampled).
    x, _ = datamodule.on_after_batch_transfer((images, labels), 0)
    return x, labels


class LatentPanels(pl.Callback):
    """Latent diagnostics at every validation epoch and image panels every `every_n_epochs` epochs.

    Diagnostics (all ranks compute them on the whole validation split, so they agree without
    communication; logged as epoch metrics):
      val/active_units   number of dims with Cov_x(E_q[z_i]) > 0.01 (Burda et al. 2015)
      val/kl_per_dim     W&B histogram, one bin per dimension (VAE)
    Panels (global rank 0 only, no collective): images/<panel>_epoch<NNN>.png in the run dir
    and every image-capable logger, epochs counted from 0 like the checkpoints.
    """

    def __init__(self, every_n_epochs: int = 5, n_images: int = 8, n_samples: int = 64, n_scatter: int = 2000,
                 interpolation_steps: int = 10, traversal_dims: int = 10, traversal_steps: int = 9,
                 max_val_images: Optional[int] = 10000, output_dir: Optional[str] = None, seed: int = 0):
        self.every_n_epochs, self.n_scatter, self.max_val_images = every_n_epochs, n_scatter, max_val_images
        self.output_dir, self.seed = output_dir, seed
        self.panel_options = dict(n_images=n_images, n_samples=n_samples, interpolation_steps=interpolation_steps,
                                  traversal_dims=traversal_dims, traversal_steps=traversal_steps)
        self.saved: list[Path] = []

    def _panels_due(self, trainer: pl.Trainer) -> bool:
        if self.every_n_epochs == 0 or trainer.fast_dev_run:  # debug=fdr: one batch, no panels
            return False
        epoch = trainer.current_epoch
        last = trainer.max_epochs is not None and epoch + 1 >= trainer.max_epochs
        return (epoch + 1) % self.every_n_epochs == 0 or last

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        with torch.no_grad():
            x, _ = split_images(trainer, "val", self.max_val_images, pl_module.device)
            model = pl_module.model
            codes = encode(model, x)
            # Every rank encodes the same images, so the value is the same everywhere; sync_dist
            # only keeps Lightning from warning about an unsynchronised epoch metric.
            pl_module.log("val/active_units", float(active_units(codes)), on_step=False, on_epoch=True, sync_dist=True)
            if trainer.is_global_zero:
                kl = model.kl_per_dim(codes)  # None without a KL per dimension (an AE, a VampPrior)
                if kl is not None:
                    self._log_kl_histogram(trainer, kl)
                if self._panels_due(trainer):
                    self._write_panels(trainer, pl_module)

    def _log_kl_histogram(self, trainer: pl.Trainer, kl: torch.Tensor) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                import wandb

                values = kl.cpu().numpy()
                edges = list(range(len(values) + 1))  # one bin per dimension: the bar chart as a histogram
                # Through log_metrics, as every other value: a resumed run does not log a step twice.
                logger.log_metrics({"val/kl_per_dim": wandb.Histogram(np_histogram=(values, edges))},
                                   step=trainer.global_step)

    def _write_panels(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        x, labels = split_images(trainer, "test", self.n_scatter, pl_module.device)
        classes = getattr(getattr(trainer.datamodule, "images", None), "classes", None)  # the labels' names, if any
        panels = make_panels(pl_module.model, x, labels, seed=self.seed, classes=classes, **self.panel_options)
        folder = Path(self.output_dir or trainer.default_root_dir) / "images"
        self.saved += save_panels(panels, folder, suffix=f"_epoch{trainer.current_epoch:03d}")
        log_panels(trainer.loggers, panels, step=trainer.global_step)


def log_panels(loggers: list[Logger], panels: list[Panel], step: int) -> None:
    """Send the panels to every image-capable logger, as uint8 (W&B would not rescale floats)."""
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            import wandb

            # One history row for all panels, at the trainer's global step.
            logger.log_metrics({f"panels/{p.name}": wandb.Image(p.image, caption=p.caption) for p in panels}, step)
        elif isinstance(logger, TensorBoardLogger):
            for panel in panels:
                logger.experiment.add_image(f"panels/{panel.name}", panel.image, step, dataformats="HWC")
