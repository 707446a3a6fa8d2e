"""The LightningModule: the loss (one `compute_losses` for train/val/test), its logging, the optimiser.

Metric names are a public contract (see README): `{stage}/recon`, `{stage}/kl`, `{stage}/loss`
(= recon + β·kl, what is optimised) and `{stage}/nelbo` (= recon + kl) are epoch means over all
devices; training values at the logging interval carry the suffix `_step`.
"""

import logging
from collections import Counter
from collections.abc import Sequence
from typing import Optional

import pytorch_lightning as pl
import torch

from vaelab.errors import ConfigError, NonFiniteLossError
from vaelab.graph_step import CudaGraphStep
from vaelab.models import MODELS, RECON_LOSSES, gaussian_kl, reconstruction_error
from vaelab.models.autoencoders import build_model

log = logging.getLogger(__name__)


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
        cuda_graph: bool = True,
    ):
        super().__init__()
        pixel_range = tuple(float(v) for v in pixel_range)
        check_hyperparameters(model, latent_dim, beta, recon_loss, lr, hidden_dims, pixel_range)
        self.save_hyperparameters(logger=False)  # run() logs the whole resolved config instead
        self.model = build_model(model, tuple(image_shape), latent_dim, list(hidden_dims), net)
        self.terms = loss_terms(model)
        self.pixel_low, self.pixel_scale = pixel_range[0], pixel_range[1] - pixel_range[0]
        # Per stage: the batch-size-weighted sums of the terms, on the device, and the image
        # count (on the host). One small add per step; no host sync until the epoch ends.
        self._sums: dict[str, torch.Tensor] = {}
        self._counts: Counter[str] = Counter()
        # Manual optimisation, so that one step can be a replayed CUDA graph (graph_step.py)
        # and the eager step is the same code path with or without it.
        self.automatic_optimization = False
        self._graph: Optional[CudaGraphStep] = None
        self._graph_wanted = False  # decided once per fit, in on_fit_start

    def forward(self, x: torch.Tensor):
        return self.model(x)

    def compute_losses(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Batch means of the loss terms for images `x` in `pixel_range`."""
        out = self.model(x)
        recon = self.reconstruction_error(out.logits, x).mean()
        if out.mu is None:
            return {"recon": recon, "loss": recon}
        kl = gaussian_kl(out.mu, out.logvar)
        return {"recon": recon, "kl": kl, "loss": recon + self.hparams.beta * kl, "nelbo": recon + kl}

    def reconstruction_error(self, logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Per-image reconstruction error (B,) of images `x` in `pixel_range`, in the data's units."""
        error = reconstruction_error(logits, self._to_unit_range(x), self.hparams.recon_loss)
        return error if self.pixel_scale == 1 else error * self.pixel_scale**2  # bce has scale 1

    def _to_unit_range(self, x: torch.Tensor) -> torch.Tensor:
        """The decoder's sigmoid covers [0, 1]; map data from `pixel_range` there."""
        if (self.pixel_low, self.pixel_scale) == (0.0, 1.0):
            return x
        return (x - self.pixel_low) / self.pixel_scale

    def _sum_buffer(self, stage: str) -> torch.Tensor:
        if stage not in self._sums:
            self._sums[stage] = torch.zeros(len(self.terms), device=self.device)
        return self._sums[stage]

    def _accumulate(self, stage: str, losses: dict[str, torch.Tensor], batch_size: int) -> None:
        # In place into one buffer per stage, so that a captured CUDA graph can do it too.
        self._sum_buffer(stage).add_(torch.stack(list(losses.values())).detach(), alpha=batch_size)

    def _training_losses(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The training losses of batch `x`, added to the epoch sums: the graph captures this."""
        losses = self.compute_losses(x)
        self._accumulate("train", losses, x.shape[0])
        return losses

    def _log_epoch_means(self, stage: str) -> dict[str, torch.Tensor]:
        """Log `{stage}/{term}` as the mean over every image this epoch, on all devices.

        Sums and counts are reduced, not per-device means averaged, so uneven shards weigh right.
        """
        # Every rank takes part in the reduction, also one whose shard was empty.
        count = torch.tensor([float(self._counts.pop(stage, 0))], device=self.device)
        totals = torch.cat([self._sum_buffer(stage), count])
        self._sums[stage].zero_()
        if self.trainer.world_size > 1:
            totals = self.trainer.strategy.reduce(totals, reduce_op="sum")
        if totals[-1] == 0:
            return {}
        means = dict(zip(self.terms, totals[:-1] / totals[-1]))
        for term, mean in means.items():
            self.log(f"{stage}/{term}", mean, on_step=False, on_epoch=True, prog_bar=term == "loss")
        return means

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
        # Straight to the loggers, at the current step: self.log keeps one value per training_step,
        # the last of a group of batches.
        self.trainer._logger_connector.log_metrics({f"train/{term}_step": v for term, v in zip(losses, values)})

    def graph_unavailable_reason(self) -> Optional[str]:
        """Why the CUDA-graph step cannot be used in this fit, or None when it can."""
        if not self.hparams.cuda_graph:
            return "model.cuda_graph=false"
        if self.device.type != "cuda":
            return f"it needs a CUDA device, not {self.device.type}"
        if self.trainer.world_size > 1:
            return "not with several devices (DDP synchronises gradients between kernels)"
        if str(self.trainer.precision) != "32-true":
            return f"not with trainer.precision={self.trainer.precision}"
        return None

    def on_fit_start(self) -> None:
        reason = self.graph_unavailable_reason()
        self._graph_wanted = reason is None
        log.info("training step: %s", "one CUDA graph per step" if reason is None else f"eager ({reason})")

    def training_step(self, batch, batch_idx):
        # One loader item is one batch, or a list of batches with data.batches_per_step > 1:
        # each is its own optimiser step, so Lightning's per-step host work is paid once per list.
        optimizer = self.optimizers()
        for i, (x, _) in enumerate(batch if isinstance(batch, list) else [batch]):
            if i > 0:
                if 0 <= self.trainer.max_steps <= self.global_step:
                    break  # Lightning checks max_steps only between training_steps
                # Lightning counts one batch per training_step, and logs and checks the logging
                # interval at that count; counting every optimiser step keeps both as with K = 1.
                self.trainer.fit_loop.epoch_loop._batches_that_stepped += 1
            losses = self._optimizer_step(optimizer, x)
            # The condition under which Lightning itself writes on_step values to the loggers.
            if self.trainer._logger_connector.should_update_logs or self.trainer.fast_dev_run:
                self._log_step_values(losses)

    def _optimizer_step(self, optimizer, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if self._graph is None and self._graph_wanted:
            self._graph = CudaGraphStep(self._training_losses, list(self.parameters()), optimizer.optimizer,
                                        x, accumulators=[self._sum_buffer("train")])
        if self._graph is not None and self._graph.applies_to(x):
            # Lightning's step bookkeeping (global_step) without a second optimiser update.
            optimizer._on_before_step()
            losses = self._graph(x)
            optimizer._on_after_step()
        else:  # eager: no graph, or a batch of another size (the last one of an epoch)
            optimizer.zero_grad(set_to_none=self._graph is None)  # keep the graph's grad buffers
            losses = self._training_losses(x)
            self.manual_backward(losses["loss"])
            optimizer.step()
        # Counted on the host: a replayed graph does not run Python.
        self._counts["train"] += x.shape[0]
        return losses

    def _evaluation_step(self, batch, stage: str) -> None:
        x, _ = batch
        self._accumulate(stage, self.compute_losses(x), x.shape[0])
        self._counts[stage] += x.shape[0]

    def validation_step(self, batch, batch_idx):
        self._evaluation_step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._evaluation_step(batch, "test")

    def on_train_epoch_end(self) -> None:
        means = self._log_epoch_means("train")
        if means and not torch.isfinite(means["loss"]):
            raise NonFiniteLossError(
                f"the mean training loss of epoch {self.current_epoch} is {means['loss'].item()}; lower model.lr "
                f"(now {self.hparams.lr:g}) or model.beta, or check the data"
            )

    def on_validation_epoch_end(self) -> None:
        self._log_epoch_means("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch_means("test")

    def configure_optimizers(self):
        capturable = self.graph_unavailable_reason() is None
        return make_optimizer(self.parameters(), self.hparams.lr, self.device, capturable=capturable)


def make_optimizer(parameters, lr: float, device: torch.device, capturable: bool = False) -> torch.optim.Optimizer:
    """Adam; the fused kernel where it exists (CPU and CUDA) updates all tensors in one launch."""
    fused = device.type in ("cpu", "cuda")
    return torch.optim.Adam(parameters, lr=lr, fused=fused, capturable=capturable)
