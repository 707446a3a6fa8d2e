"""The LightningModule: one shared step for train/val/test, the loss, its logging, the optimiser.

Metric names are a public contract (see README): `{stage}/recon`, `{stage}/kl`, `{stage}/loss`
(= recon + β·kl, what is optimised) and `{stage}/nelbo` (= recon + kl) are epoch means over all
devices; training values at the logging interval carry the suffix `_step`.
"""

from collections.abc import Sequence

import pytorch_lightning as pl
import torch
from torch import nn
from torchmetrics import MeanMetric

from vaelab.errors import ConfigError, NonFiniteLossError
from vaelab.models import MODELS, RECON_LOSSES, gaussian_kl, reconstruction_loss
from vaelab.models.autoencoders import build_model

STAGES = ("train", "val", "test")


def loss_terms(model_name: str) -> tuple[str, ...]:
    return ("recon", "kl", "loss", "nelbo") if model_name == "vae" else ("recon", "loss")


def check_hyperparameters(model: str, latent_dim: int, beta: float, recon_loss: str, lr: float,
                          hidden_dims: Sequence[int], pixel_range: Sequence[float]) -> None:
    """Raise ConfigError for values no training can use, naming the config key."""
    if model not in MODELS:
        raise ConfigError(f"model={model!r} is unknown; choose one of {', '.join(MODELS)}")
    if latent_dim < 1:
        raise ConfigError(f"model.latent_dim={latent_dim} must be at least 1")
    if beta < 0:
        raise ConfigError(f"model.beta={beta} must be >= 0 (0 drops the KL term, 1 is the plain VAE)")
    if not lr > 0:
        raise ConfigError(f"model.lr={lr} must be > 0")
    if recon_loss not in RECON_LOSSES:
        raise ConfigError(f"model.recon_loss={recon_loss!r} is unknown; choose one of {', '.join(RECON_LOSSES)}")
    if not hidden_dims or any(h < 1 for h in hidden_dims):
        raise ConfigError(f"model.hidden_dims={list(hidden_dims)} must be a non-empty list of positive sizes")
    if recon_loss == "bce" and tuple(pixel_range) != (0.0, 1.0):
        raise ConfigError(
            f"model.recon_loss=bce is a Bernoulli likelihood and needs pixel values in [0, 1], but "
            f"data.pixel_range={list(pixel_range)}; use model.recon_loss=mse or data.pixel_range=[0,1]"
        )


class LitAutoencoder(pl.LightningModule):
    """Trains an AE or a β-VAE; builds the plain model from its hyperparameters."""

    def __init__(
        self,
        model: str = "vae",
        image_shape: Sequence[int] = (1, 28, 28),
        latent_dim: int = 20,
        hidden_dims: Sequence[int] = (400,),
        net: str = "mlp",
        beta: float = 1.0,
        recon_loss: str = "mse",
        lr: float = 1e-3,
        pixel_range: Sequence[float] = (0.0, 1.0),
    ):
        super().__init__()
        pixel_range = tuple(float(v) for v in pixel_range)
        check_hyperparameters(model, latent_dim, beta, recon_loss, lr, hidden_dims, pixel_range)
        self.save_hyperparameters(logger=False)  # run() logs the whole resolved config instead
        self.model = build_model(model, tuple(image_shape), latent_dim, list(hidden_dims), net)
        self.terms = loss_terms(model)
        self.pixel_low, self.pixel_scale = pixel_range[0], pixel_range[1] - pixel_range[0]
        # nan_strategy="disable": a NaN must propagate to the mean (not be dropped with a
        # warning), and the default NaN check would synchronise with the host on every step.
        self.epoch_means = nn.ModuleDict(
            {f"{stage}_{term}": MeanMetric(nan_strategy="disable") for stage in STAGES for term in self.terms}
        )

    def forward(self, x: torch.Tensor):
        return self.model(x)

    def compute_losses(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Batch means of the loss terms for images `x` in `pixel_range`."""
        out = self.model(x)
        recon = reconstruction_loss(out.logits, self._to_unit_range(x), self.hparams.recon_loss)
        recon = recon * self.pixel_scale**2  # mse in the data's own units; bce has scale 1
        if out.mu is None:
            return {"recon": recon, "loss": recon}
        kl = gaussian_kl(out.mu, out.logvar)
        return {"recon": recon, "kl": kl, "loss": recon + self.hparams.beta * kl, "nelbo": recon + kl}

    def _to_unit_range(self, x: torch.Tensor) -> torch.Tensor:
        """The decoder's sigmoid covers [0, 1]; map data from `pixel_range` there."""
        if (self.pixel_low, self.pixel_scale) == (0.0, 1.0):
            return x
        return (x - self.pixel_low) / self.pixel_scale

    def _shared_step(self, batch, stage: str) -> torch.Tensor:
        x, _ = batch
        losses = self.compute_losses(x)
        for term, value in losses.items():
            mean = self.epoch_means[f"{stage}_{term}"]
            mean.update(value.detach(), x.shape[0])  # weighted by batch size: exact under uneven shards
            self.log(f"{stage}/{term}", mean, on_step=False, on_epoch=True, prog_bar=term == "loss")
        if stage == "train" and self.trainer._logger_connector.should_update_logs:
            self._log_step_values(losses)
        return losses["loss"]

    def _log_step_values(self, losses: dict[str, torch.Tensor]) -> None:
        # Only at the logging interval: the all-gather and the finiteness check cost a host sync.
        values = torch.stack([v.detach() for v in losses.values()])
        if self.trainer.world_size > 1:
            values = self.all_gather(values).mean(dim=0)
        if not torch.isfinite(values).all():
            raise NonFiniteLossError(
                f"the training loss became {values[list(losses).index('loss')].item()} at step "
                f"{self.global_step} (epoch {self.current_epoch}); lower model.lr (now {self.hparams.lr:g}) "
                f"or model.beta, or check the data"
            )
        for term, value in zip(losses, values):
            self.log(f"train/{term}_step", value, on_step=True, on_epoch=False)

    def training_step(self, batch, batch_idx):
        return self._shared_step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._shared_step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._shared_step(batch, "test")

    def on_train_epoch_end(self) -> None:
        loss = self.epoch_means["train_loss"].compute()
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"the mean training loss of epoch {self.current_epoch} is {loss.item()}; lower model.lr "
                f"(now {self.hparams.lr:g}) or model.beta, or check the data"
            )

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
