"""The LightningModule: one model type's losses in train/val/test, their logging, the optimiser.

Metric names are a public contract (see README): `{stage}/{term}` for each of the model type's
terms (a VAE: recon, kl, loss = recon + β·kl, nelbo = recon + kl; an AE: recon, loss) are epoch
means over all devices; training values at the logging interval carry the suffix `_step`.
"""

import logging
import math
from collections import Counter
from collections.abc import Sequence
from typing import Optional

import pytorch_lightning as pl
import torch

from vaelab.checkpoints import restore_rng_states, rng_states
from vaelab.errors import NonFiniteLossError
from vaelab.models import build_model
from vaelab.training.graph_step import CudaGraphStep
from vaelab.training.lightning_compat import CountedStep
from vaelab.training.loggers import CHECKPOINT_KEY as WANDB_CHECKPOINT_KEY, wandb_checkpoint_state
from vaelab.training.optim import clip_gradients, lr_of_step, make_lr_scheduler, make_optimizer, steps_per_batch

log = logging.getLogger(__name__)

# A training loss this many times the first step's magnitude above it has diverged: a finite
# number that no longer means anything (lr=1e4 reaches KL ≈ 1e10); the run fails instead of completing.
DIVERGENCE_FACTOR = 1000.0


def eager_reason(cuda_graph: bool, device: torch.device, world_size: int, precision: str) -> Optional[str]:
    """Why a fit cannot replay its training step as one CUDA graph, or None when it can."""
    if not cuda_graph:
        return "model.cuda_graph=false"
    if device.type != "cuda":
        return f"it needs a CUDA device, not {device.type}"
    if world_size > 1:
        return "not with several devices (DDP synchronises gradients between kernels)"
    if precision != "32-true":
        return f"not with trainer.precision={precision}"
    return None


class LitAutoencoder(pl.LightningModule):
    """Trains model type `name` (conf/model/<name>.yaml) with Adam at `lr`.

    `settings` are the model type's own (latent_dim, hidden_dims, net, recon_loss, beta, ...);
    see vaelab.models. `optimizer` is the learning-rate schedule (conf/optimizer/, training/optim.py);
    `gradient_clip_val` and `gradient_clip_algorithm` are the trainer's (the train task hands them
    over: Lightning refuses them under manual optimisation). The arguments are the checkpoint's
    hyperparameters: load_from_checkpoint rebuilds the same model.
    """

    def __init__(self, name: str = "vae", image_shape: Sequence[int] = (1, 28, 28),
                 pixel_range: Sequence[float] = (0.0, 1.0), lr: float = 1e-3, cuda_graph: bool = True,
                 optimizer: Optional[dict] = None, gradient_clip_val: Optional[float] = None,
                 gradient_clip_algorithm: Optional[str] = "norm", **settings):
        super().__init__()
        self.save_hyperparameters(logger=False)  # the train task logs the whole resolved config instead
        self.model = build_model(name, image_shape, pixel_range, **settings)
        self.optimizer_settings = dict(optimizer or {})
        self.terms = self.model.terms
        # Per stage: the batch-size-weighted sums of the terms, on the device, and the image
        # count (on the host). One small add per step; no host sync until the epoch ends.
        self._sums: dict[str, torch.Tensor] = {}
        self._counts: Counter[str] = Counter()
        # Manual optimisation, so that one step can be a replayed CUDA graph (graph_step.py)
        # and the eager step is the same code path with or without it.
        self.automatic_optimization = False
        self._graph: Optional[CudaGraphStep] = None
        self._counted_step: Optional[CountedStep] = None  # Lightning's step count around a replay
        self._graph_wanted = False  # decided once per fit, in on_fit_start
        self.last_step_values: dict[str, float] = {}  # train/<term>_step at the last logging interval
        self._scheduler_per_step = False  # set in configure_optimizers
        self._first_loss: Optional[float] = None  # the first training step's loss, for the divergence check
        self._rng_to_restore: Optional[dict] = None  # from a checkpoint; restored once the sanity check is done

    def forward(self, x: torch.Tensor):
        return self.model(x)

    def _sum_buffer(self, stage: str) -> torch.Tensor:
        if stage not in self._sums:
            self._sums[stage] = torch.zeros(len(self.terms), device=self.device)
        return self._sums[stage]

    def _accumulate(self, stage: str, losses: dict[str, torch.Tensor], batch_size: int) -> None:
        # In place into one buffer per stage, so that a captured CUDA graph can do it too.
        self._sum_buffer(stage).add_(torch.stack(list(losses.values())).detach(), alpha=batch_size)

    def _training_losses(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The training losses of batch `x`, added to the epoch sums: the graph captures this."""
        losses = self.model.losses(x)
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

    def _step_values_due(self) -> bool:
        """Lightning's own logging interval, counted in optimiser steps (after this step's)."""
        every = self.trainer.log_every_n_steps
        return bool(self.trainer.fast_dev_run) or (every > 0 and self.global_step % every == 0)

    def _log_step_values(self, losses: dict[str, torch.Tensor]) -> None:
        # Only at the logging interval: the all-gather and the finiteness check cost a host sync.
        values = torch.stack([v.detach() for v in losses.values()])
        if self.trainer.world_size > 1:
            values = self.all_gather(values).mean(dim=0)
        if not torch.isfinite(values).all():
            raise NonFiniteLossError(
                f"the training loss became {values[list(losses).index('loss')].item()} at step "
                f"{self.global_step} (epoch {self.current_epoch}); lower model.lr (now {self.hparams.lr:g}) "
                f"or check the data"
            )
        self._refuse_divergence(float(values[list(losses).index("loss")]), f"at step {self.global_step}")
        self.last_step_values = {f"train/{term}_step": float(v) for term, v in zip(losses, values)}
        # The settings this step was taken with (global_step already counts it).
        scheduled = self.model.scheduled_values(self.global_step - 1, self.trainer.num_training_batches)
        self.last_step_values.update({f"train/{name}": value for name, value in scheduled.items()})
        self.last_step_values["train/lr"] = lr_of_step(self.optimizers().optimizer, self.lr_schedulers(), self.hparams.lr,
                                                       self.global_step - 1)
        # Straight to the loggers, with the step and epoch that Lightning's own on_step flush
        # gives them. A self.log here makes Lightning go over these values after every later batch
        # of the epoch: 0.26 against 0.17 s per epoch at batch 128 on an H200 (graphed step 0.35 ms).
        for logger in self.loggers:
            logger.log_metrics({**self.last_step_values, "epoch": self.current_epoch}, step=self.global_step - 1)
            logger.save()

    def _refuse_divergence(self, loss: float, when: str) -> None:
        first = self._first_loss
        if first is not None and loss > first + DIVERGENCE_FACTOR * max(abs(first), 1.0):
            raise NonFiniteLossError(
                f"the training loss diverged: {loss:.4g} {when} (epoch {self.current_epoch}) against {first:.4g} at "
                f"the first step; lower model.lr (now {self.hparams.lr:g}) or clip the gradients "
                f"(trainer.gradient_clip_val)"
            )

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # The generators of the sampling noise and of dynamic binarisation, and the divergence
        # check's reference: a resumed run continues exactly where this one stands.
        checkpoint["rng_states"] = rng_states()
        checkpoint["first_loss"] = self._first_loss
        # The W&B run (id, transaction logs) that a resume from this checkpoint logs into.
        wandb_run = wandb_checkpoint_state(self.loggers)
        if wandb_run is not None:
            checkpoint[WANDB_CHECKPOINT_KEY] = wandb_run

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._rng_to_restore = checkpoint.get("rng_states")
        self._first_loss = checkpoint.get("first_loss", self._first_loss)

    def on_train_start(self) -> None:
        # After the sanity check, whose validation draws samples that the checkpointed run did not.
        if self._rng_to_restore is not None:
            restore_rng_states(self._rng_to_restore)
            self._rng_to_restore = None

    def on_fit_start(self) -> None:
        reason = eager_reason(self.hparams.cuda_graph, self.device, self.trainer.world_size, str(self.trainer.precision))
        self._graph_wanted = reason is None
        log.info("training step: %s", "one CUDA graph per step" if reason is None else f"eager ({reason})")

    def _clip_gradients(self) -> None:
        if self.hparams.gradient_clip_val:
            clip_gradients(list(self.parameters()), self.hparams.gradient_clip_val, self.hparams.gradient_clip_algorithm)

    def training_step(self, batch, batch_idx):
        x, _ = batch
        optimizer = self.optimizers()
        if self.model.schedule_varies:  # before the step, in place: the graph reads the new values
            self.model.advance(self.global_step, self.trainer.num_training_batches)
        if self._graph is None and self._graph_wanted:
            self._counted_step = CountedStep(optimizer)
            self._graph = CudaGraphStep(self._training_losses, list(self.parameters()), optimizer.optimizer,
                                        x, accumulators=[self._sum_buffer("train")],
                                        before_optimizer_step=self._clip_gradients)
        if self._graph is not None and self._graph.applies_to(x):
            with self._counted_step:  # Lightning counts the step that the graph takes
                losses = self._graph(x)
        else:  # eager: no graph, or a batch of another size (the last one of an epoch)
            optimizer.zero_grad(set_to_none=self._graph is None)  # keep the graph's grad buffers
            losses = self._training_losses(x)
            self.manual_backward(losses["loss"])
            self._clip_gradients()
            optimizer.step()
        if self._scheduler_per_step:
            self.lr_schedulers().step()
        if self._first_loss is None:  # one host sync per fit
            self._first_loss = float(losses["loss"].detach())
        # Counted on the host: a replayed graph does not run Python.
        self._counts["train"] += x.shape[0]
        if self._step_values_due():
            self._log_step_values(losses)

    def _evaluation_step(self, batch, stage: str) -> None:
        x, _ = batch
        self._accumulate(stage, self.model.losses(x), x.shape[0])
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
                f"(now {self.hparams.lr:g}) or check the data"
            )
        if means:
            self._refuse_divergence(float(means["loss"]), "as the epoch's mean")

    def on_validation_epoch_start(self) -> None:
        # Validation (and the callbacks that draw from the model, e.g. the latent panels) runs before
        # on_train_epoch_end: look at this epoch's training loss so far before they can trip on it.
        count = self._counts.get("train", 0)
        if self.trainer.sanity_checking or not count:
            return
        loss = float(self._sum_buffer("train")[self.terms.index("loss")]) / count
        if not math.isfinite(loss):
            raise NonFiniteLossError(
                f"the training loss became {loss} in epoch {self.current_epoch}; lower model.lr "
                f"(now {self.hparams.lr:g}) or check the data"
            )
        self._refuse_divergence(loss, "as the mean so far")

    def on_validation_epoch_end(self) -> None:
        means = self._log_epoch_means("val")
        if self.optimizer_settings.get("scheduler") == "plateau" and means and not self.trainer.sanity_checking:
            monitor = str(self.optimizer_settings.get("monitor", "val/loss")).removeprefix("val/")
            self.lr_schedulers().step(float(means[monitor]))

    def on_test_epoch_end(self) -> None:
        self._log_epoch_means("test")

    def configure_optimizers(self):
        capturable = eager_reason(self.hparams.cuda_graph, self.device, self.trainer.world_size,
                                  str(self.trainer.precision)) is None
        scheduled = self.optimizer_settings.get("scheduler", "constant") != "constant"
        optimizer = make_optimizer(self.parameters(), self.hparams.lr, self.device, capturable=capturable,
                                   tensor_lr=capturable and scheduled)
        # Only the cosine needs the run's length (Lightning sets up the train loader to count it).
        total_steps = self.trainer.estimated_stepping_batches if self.optimizer_settings.get("scheduler") == "cosine" else 0
        scheduler = make_lr_scheduler(optimizer, self.optimizer_settings, self.hparams.lr, total_steps=total_steps)
        self._scheduler_per_step = steps_per_batch(scheduler)
        # Lightning saves and restores the scheduler's state with the checkpoint; stepping it is ours.
        return optimizer if scheduler is None else {"optimizer": optimizer, "lr_scheduler": scheduler}
