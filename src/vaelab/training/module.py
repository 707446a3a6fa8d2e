"""The LightningModule: one model type's losses in train/val/test, their logging, the optimiser;
for one model or for a stack of N (models/stack.py), each member of which is a run of its own.

Metric names are a public contract (see docs/evaluation.md, Metrics): `{stage}/{term}` for each of the model type's
terms (a VAE: recon, kl, loss = recon + β·kl, nelbo = recon + kl; an AE: recon, loss; at val and
test also its `eval_terms`, a VAE's mi, tc, dwkl) are epoch means over all devices; training
values at the logging interval carry the suffix `_step`.

A stack (`LitAutoencoder.stack`) runs this same code for its N members: every value below is kept
per member (a single run is N = 1), member n logs under `member_key(name, n)` and its callbacks,
loggers and checkpoints see it alone (training/members.py). A member whose loss becomes NaN or
diverges fails alone, with its single run's error (`failures`); the others go on. A member whose early
stopping stops it (`stopped`) ends its training alone, its weights kept as they were then.
"""

import logging
import math
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Optional

import pytorch_lightning as pl
import torch
from pytorch_lightning.trainer.states import TrainerFn

from vaelab.checkpoints import restore_rng_states, rng_states
from vaelab.errors import ConfigError, NonFiniteLossError
from vaelab.models import Autoencoder, build_model
from vaelab.models.stack import Stack
from vaelab.training.graph_step import CudaGraphStep
from vaelab.lightning_compat import CountedStep
from vaelab.training.loggers import CHECKPOINT_KEY as WANDB_CHECKPOINT_KEY, wandb_checkpoint_state
from vaelab.training.members import FrozenMember, MemberLogger, member_key
from vaelab.training.optim import (MemberRates, StackedAdam, clip_gradients, lr_of_step, make_lr_scheduler,
                                   make_optimizer, steps_per_batch)

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
        self.model: Autoencoder | Stack = build_model(name, image_shape, pixel_range, **settings)
        self.optimizer_settings = dict(optimizer or {})
        # Every term that some stage logs (metrics.json's "terms"); each stage's own: `_terms(stage)`.
        self.terms = tuple(dict.fromkeys((*self.model.stage_terms("train"), *self.model.stage_terms("test"))))
        self._train_size: Optional[int] = None  # the training set's size, handed to the model (`setup`)
        # One image as the data module delivers it (uint8 pixels, a label): the model summary runs the
        # model on it to count its FLOPs (training/callbacks/summary.py keeps that off the run's random draws).
        self.example_input_array = (torch.zeros(1, *image_shape, dtype=torch.uint8), torch.zeros(1, dtype=torch.long))
        # Each member's hyperparameters (what its checkpoints keep); one for a single run.
        self.member_hparams: list[dict[str, Any]] = [dict(self.hparams)]
        self.failures: dict[int, str] = {}  # member → the error its single run fails with
        self.stopped: dict[int, int] = {}  # member → the epoch at whose end its early stopping stopped it (a stack)
        self._frozen: list[FrozenMember] = []  # the stopped members as they stood then
        self._saving: Optional[int] = None  # the member whose checkpoint is being saved (a stack)
        self._member_rates: Optional[MemberRates] = None  # a stack whose members differ in model.lr, or on plateau
        self._generator_states: Optional[list[torch.Tensor]] = None  # members' noise around the sanity check
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
        # Per member: train/<term>_step and the scheduled values at the last logging interval.
        self.last_step_values: list[dict[str, float]] = [{}]
        self._scheduler_per_step = False  # set in configure_optimizers
        self._first_loss: Optional[list[float]] = None  # each member's first training loss, for the divergence check
        self._rng_to_restore: Optional[dict] = None  # from a checkpoint; restored once the sanity check is done

    # -- one model or a stack -----------------------------------------------------------------------
    @classmethod
    def stack(cls, members: Sequence["LitAutoencoder"],
              generators: Optional[Sequence[torch.Generator]] = None) -> "LitAutoencoder":
        """The first of `members` (each built as its single run builds it) made to train all of them
        as one stack, member n drawing its noise from `generators[n]`; a single module stays as it is."""
        module = members[0]
        if len(members) > 1:
            module.model = Stack([m.model for m in members], generators)
            module.example_input_array = None  # a stack has no forward: its summary counts no FLOPs
            module.member_hparams = [dict(m.hparams) for m in members]
            module.last_step_values = [{} for _ in members]
        return module

    @property
    def n(self) -> int:
        """The number of members: 1 for a single run."""
        return len(self.member_hparams)

    @property
    def lrs(self) -> list[float]:
        """Each member's model.lr."""
        return [float(h["lr"]) for h in self.member_hparams]

    def member_model(self, n: int) -> Autoencoder:
        """Member n as a single model with its current weights."""
        return self.model if self.n == 1 else self.model.member(n)

    def member_failed(self, n: int) -> bool:
        return n in self.failures

    def member_stopped_early(self, n: int) -> bool:
        return n in self.stopped

    def member_active(self, n: int) -> bool:
        """Whether member n takes part in this stage: it has not failed and, in the fit, early stopping
        has not stopped it in an earlier epoch (the epoch it stops in runs to its end, as alone)."""
        if self.member_failed(n):
            return False
        stopped = self.stopped.get(n)
        return stopped is None or self.trainer.state.fn != TrainerFn.FITTING or self.current_epoch <= stopped

    def stop_member(self, n: int) -> None:
        """A stack's member n stops training after this epoch (its early stopping, through its
        MemberTrainer): its weights and optimiser state stay as they are now (FrozenMember), the others
        go on, and the fit ends once none trains. It is tested after the fit as the others are."""
        if n in self.stopped or self.member_failed(n):
            return
        self.stopped[n] = self.current_epoch
        generator = self.model.generators[n] if self.model.generators is not None else None
        self._frozen.append(FrozenMember(self.model.model, self.optimizers().optimizer, n, generator))
        for logger in self.loggers:
            if isinstance(logger, MemberLogger) and logger.index == n:
                logger.stopped_early(self.current_epoch + 1, self.global_step)
        self.model.stop(n)
        self._end_fit_once_no_member_trains()

    def _end_fit_once_no_member_trains(self) -> None:
        if all(self.member_failed(n) or self.member_stopped_early(n) for n in range(self.n)):
            self.trainer.should_stop = True

    def _key(self, name: str, n: int) -> str:
        return member_key(name, None if self.n == 1 else n)

    @contextmanager
    def saving_member(self, n: int) -> Iterator[None]:
        """Checkpoints saved in this block are member n's (see on_save_checkpoint)."""
        self._saving = n
        try:
            yield
        finally:
            self._saving = None

    def forward(self, x: torch.Tensor, labels: Optional[torch.Tensor] = None):
        """The model's forward on images `x`, (B, C, H, W) in the data's pixel range (`labels`, of a
        batch as the data module delivers it, are not used)."""
        return self.model(x)

    # -- per-member sums and checks -----------------------------------------------------------------
    def _terms(self, stage: str) -> tuple[str, ...]:
        """The terms the model's losses give, and this module logs, at `stage`."""
        return self.model.stage_terms(stage)

    def _sum_buffer(self, stage: str) -> torch.Tensor:
        if stage not in self._sums:
            self._sums[stage] = torch.zeros(len(self._terms(stage)), self.n, device=self.device)
        return self._sums[stage]

    def _per_member(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        """(terms, N) the losses' values, detached."""
        return torch.stack(list(losses.values())).detach().view(len(losses), self.n)

    def _accumulate(self, stage: str, losses: dict[str, torch.Tensor], batch_size: int) -> None:
        # In place into one buffer per stage, so that a captured CUDA graph can do it too.
        self._sum_buffer(stage).add_(self._per_member(losses), alpha=batch_size)

    def _training_losses(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The training losses of batch `x`, added to the epoch sums: the graph captures this.

        A stack's member that has died reports NaN from then on, as its single run's would (its
        weights would be NaN): its own weights are kept finite (Stack.mask_dead_gradients).
        """
        losses = self.model.losses(x)
        if self.n > 1:
            alive = self.model.alive.clone()  # as it was before this step: the objective updates it in place
            losses = {k: torch.where(alive, v, math.nan) for k, v in losses.items()}
        self._accumulate("train", losses, x.shape[-4])
        return losses

    def _epoch_means(self, stage: str) -> list[dict[str, torch.Tensor]]:
        """Each member's mean of every term over the images of this epoch, on all devices ([] if none).

        Sums and counts are reduced, not per-device means averaged, so uneven shards weigh right.
        """
        # Every rank takes part in the reduction, also one whose shard was empty.
        count = torch.tensor([float(self._counts.pop(stage, 0))], device=self.device)
        totals = torch.cat([self._sum_buffer(stage).flatten(), count])
        self._sums[stage].zero_()
        if self.trainer.world_size > 1:
            totals = self.trainer.strategy.reduce(totals, reduce_op="sum")
        if totals[-1] == 0:
            return []
        terms = self._terms(stage)
        means = (totals[:-1] / totals[-1]).view(len(terms), self.n)
        return [dict(zip(terms, means[:, n])) for n in range(self.n)]

    def _log_means(self, stage: str, n: int, means: dict[str, torch.Tensor]) -> None:
        for term, mean in means.items():
            self.log(self._key(f"{stage}/{term}", n), mean, on_step=False, on_epoch=True, prog_bar=term == "loss")

    def _log_epoch_means(self, stage: str) -> list[dict[str, torch.Tensor]]:
        """Log `{stage}/{term}` of every member still training as the mean over every image this epoch."""
        means = self._epoch_means(stage)
        for n, member in enumerate(means):
            if self.member_active(n):
                self._log_means(stage, n, member)
        return means

    def _live(self) -> list[int]:
        return [n for n in range(self.n) if self.member_active(n)]

    def _fail(self, n: int, message: str) -> None:
        """Member n's run fails with `message`: a single run raises it; a stack's member stops, the
        others go on (the fit fails once no member is left)."""
        if self.n == 1:
            raise NonFiniteLossError(message)
        self.failures[n] = message
        self.model.stop(n)
        log.error("member %d of the stack failed: %s", n, message)
        if len(self.failures) == self.n:
            raise NonFiniteLossError(f"every member of the stack failed; member 0: {self.failures[0]}")
        self._end_fit_once_no_member_trains()  # the others stopped early

    def _check(self, n: int, loss: float, not_finite: str, when: str, finite: Optional[bool] = None) -> bool:
        """Fail member n if its training `loss` (or any of its terms: `finite`) is not finite, saying
        `not_finite`, or has diverged from its first value, saying `when`; whether it still trains."""
        lr = f"{self.lrs[n]:g}"
        if not (math.isfinite(loss) if finite is None else finite):
            self._fail(n, f"{not_finite}; lower model.lr (now {lr}) or check the data")
            return False
        first = self._first_loss[n] if self._first_loss is not None else None
        if first is not None and loss > first + DIVERGENCE_FACTOR * max(abs(first), 1.0):
            self._fail(n, f"the training loss diverged: {loss:.4g} {when} (epoch {self.current_epoch}) against "
                          f"{first:.4g} at the first step; lower model.lr (now {lr}) or clip the gradients "
                          f"(trainer.gradient_clip_val)")
            return False
        return True

    def _step_values_due(self) -> bool:
        """Lightning's own logging interval, counted in optimiser steps (after this step's)."""
        every = self.trainer.log_every_n_steps
        return bool(self.trainer.fast_dev_run) or (every > 0 and self.global_step % every == 0)

    def _rate_of_step(self, n: int, step: int) -> float:
        """Member n's learning rate at optimiser step `step` (train/lr)."""
        if self._member_rates is not None:
            return self._member_rates.rate(n, step)
        return lr_of_step(self.optimizers().optimizer, self.lr_schedulers(), self.lrs[0], step)

    def _log_step_values(self, losses: dict[str, torch.Tensor]) -> None:
        # Only at the logging interval: the all-gather and the finiteness check cost a host sync.
        values = self._per_member(losses)
        if self.trainer.world_size > 1:
            values = self.all_gather(values).mean(dim=0)
        values = values.cpu()
        terms = self._terms("train")
        loss_index = terms.index("loss")
        step = self.global_step - 1  # the step these values come from: global_step already counts it
        scheduled = self.model.scheduled_values(step, self.trainer.num_training_batches)
        if self.n == 1:
            scheduled = [scheduled]
        row: dict[str, float] = {}
        for n in self._live():
            own = values[:, n]
            when = f"at step {self.global_step}"
            if not self._check(n, float(own[loss_index]), f"the training loss became {own[loss_index].item()} {when} "
                               f"(epoch {self.current_epoch})", when, finite=bool(torch.isfinite(own).all())):
                continue
            current = {f"train/{term}_step": float(v) for term, v in zip(terms, own)}
            # The settings this step was taken with.
            current.update({f"train/{name}": value for name, value in scheduled[n].items()})
            current["train/lr"] = self._rate_of_step(n, step)
            self.last_step_values[n] = current
            row.update({self._key(k, n): v for k, v in current.items()})
        if not row:
            return
        # Straight to the loggers, with the step and epoch that Lightning's own on_step flush
        # gives them. A self.log here makes Lightning go over these values after every later batch
        # of the epoch: 0.26 against 0.17 s per epoch at batch 128 on an H200 (graphed step 0.35 ms).
        for logger in self.loggers:
            logger.log_metrics({**row, "epoch": self.current_epoch}, step=step)
            logger.save()

    # -- checkpoints ----------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # The generators of the sampling noise and of dynamic binarisation, and the divergence
        # check's reference: a resumed run continues exactly where this one stands.
        if self.n > 1:
            self._cut_out_member(checkpoint)
            return
        checkpoint["rng_states"] = rng_states()
        checkpoint["first_loss"] = self._first_loss[0] if self._first_loss is not None else None
        checkpoint["train_size"] = self._train_size
        # The W&B run (id, transaction logs) that a resume from this checkpoint logs into.
        wandb_run = wandb_checkpoint_state(self.loggers)
        if wandb_run is not None:
            checkpoint[WANDB_CHECKPOINT_KEY] = wandb_run

    def _cut_out_member(self, checkpoint: dict) -> None:
        """The stack's checkpoint (Lightning's, being saved) becomes the one member `saving_member`'s
        single run would save at this point: its weights, its optimiser state, learning-rate schedule,
        callbacks, hyperparameters, noise generator and W&B run; the loops' progress is the stack's."""
        n = self._saving
        if n is None:
            raise RuntimeError("a stack saves one member's checkpoint at a time (training/members.py: MemberTrainer)")
        checkpoint["state_dict"] = {f"model.{k}": v for k, v in self.model.member_state_dict(n).items()}
        if "optimizer_states" in checkpoint:
            checkpoint["optimizer_states"] = [self.model.member_optimizer_state(n, self.optimizers().optimizer)]
        if self._member_rates is not None and "lr_schedulers" in checkpoint:
            checkpoint["lr_schedulers"] = self._member_rates.member_state_dicts(n)
        if "callbacks" in checkpoint:
            suffix = member_key("", n)
            checkpoint["callbacks"] = {key.removesuffix(suffix): state for key, state in checkpoint["callbacks"].items()
                                       if key.endswith(suffix)}
        checkpoint["hyper_parameters"] = dict(self.member_hparams[n])
        rng = rng_states()
        generator = self.model.generators[n] if self.model.generators is not None else None
        if generator is not None and generator.device.type == "cpu":  # the member's noise comes from it
            rng["torch"] = generator.get_state()
        checkpoint["rng_states"] = rng
        checkpoint["first_loss"] = self._first_loss[n] if self._first_loss is not None else None
        checkpoint["train_size"] = self._train_size
        checkpoint["stacked"] = {"members": self.n, "index": n}
        own_loggers = [lg.logger for lg in self.loggers if isinstance(lg, MemberLogger) and lg.index == n]
        wandb_run = wandb_checkpoint_state(own_loggers)
        if wandb_run is not None:
            checkpoint[WANDB_CHECKPOINT_KEY] = wandb_run

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if self.n > 1:
            raise ConfigError("a stack does not resume from a checkpoint: resume each member alone with "
                              "ckpt_path=<its run dir>/checkpoints/<file>.ckpt")
        self._rng_to_restore = checkpoint.get("rng_states")
        first = checkpoint.get("first_loss")
        self._first_loss = [first] if first is not None else self._first_loss
        if checkpoint.get("train_size"):  # absent from checkpoints older than the KL decomposition
            self.use_train_size(int(checkpoint["train_size"]))

    def load_member_weights(self, n: int, state_dict: dict[str, torch.Tensor]) -> None:
        """Member n's weights from its single-run checkpoint's state_dict (`model.` names)."""
        weights = {k.removeprefix("model."): v for k, v in state_dict.items()}
        if self.n == 1:
            self.model.load_state_dict(weights)
        else:
            self.model.load_member_state_dict(n, weights)

    # -- the training set's size ------------------------------------------------------------------------
    def use_train_size(self, n: int) -> None:
        """Hand the model the number of training images N: the data set whose aggregate posterior q(z)
        the VAE's KL decomposition estimates (models/decomposition.py), at every stage. Kept in the
        checkpoints, so that eval.py and vaelab.load estimate with the N the run trained on; a
        checkpoint without it leaves N unknown (each batch then stands for the data set)."""
        self._train_size = int(n)
        self.model.use_train_size(self._train_size)

    def setup(self, stage: str) -> None:
        # Fit: the data module's training split. Test or validate: N as the fit or the checkpoint left it, else the data's.
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        size = (getattr(datamodule, "info", None) or {}).get("data/train_size")
        if size and (stage == "fit" or self._train_size is None):
            self.use_train_size(size)

    # -- the fit ----------------------------------------------------------------------------------------
    def on_train_start(self) -> None:
        # After the sanity check, whose validation draws samples that the checkpointed run did not.
        if self._rng_to_restore is not None:
            restore_rng_states(self._rng_to_restore)
            self._rng_to_restore = None

    def _eager_reason(self) -> Optional[str]:
        return eager_reason(self.hparams.cuda_graph, self.device, self.trainer.world_size, str(self.trainer.precision))

    def on_fit_start(self) -> None:
        if self.n > 1 and self.trainer.world_size > 1:
            raise ConfigError(f"a stack trains on one device, not {self.trainer.world_size}: run its jobs with "
                              f"another launcher, or give each one device")
        reason = self._eager_reason()
        self._graph_wanted = reason is None
        log.info("training step: %s", "one CUDA graph per step" if reason is None else f"eager ({reason})")

    def _objective(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        """What the step differentiates: the loss; a stack's Σ_n loss_n over its live members."""
        return losses["loss"] if self.n == 1 else self.model.objective(losses)

    def _after_backward(self) -> None:
        if self.n > 1:  # a dead member's NaN gradients must not reach Adam
            self.model.mask_dead_gradients()

    def _capture_step(self, optimizer, x: torch.Tensor) -> CudaGraphStep:
        """The training step as one CUDA graph (graph_step.py); a stack's with its members' generators."""
        generators = (self.model.generators or ()) if self.n > 1 else ()
        try:
            return CudaGraphStep(self._training_losses, list(self.parameters()), optimizer.optimizer, x,
                                 accumulators=[self._sum_buffer("train")], before_optimizer_step=self._clip_gradients,
                                 objective=self._objective, after_backward=self._after_backward, generators=generators)
        except RuntimeError as err:
            if self.n == 1:
                raise
            # Not yet run on a GPU (issue 21): say how to go on rather than fail a stack obscurely.
            raise ConfigError(f"the CUDA-graph step of a stack of {self.n} could not be captured ({err}); "
                              f"train it with model.cuda_graph=false") from err

    def _clip_gradients(self) -> None:
        """trainer.gradient_clip_val: each member by its own norm (by value, elementwise, it is the same)."""
        value, algorithm = self.hparams.gradient_clip_val, self.hparams.gradient_clip_algorithm
        if value and self.n > 1 and algorithm != "value":
            self.model.clip_grad_norm_per_member(value)
        elif value:
            clip_gradients(list(self.parameters()), value, algorithm)

    def training_step(self, batch, batch_idx):
        x, _ = batch  # (B, C, H, W); a stack's (N, B, C, H, W), a batch per member
        optimizer = self.optimizers()
        if self.model.schedule_varies:  # before the step, in place: the graph reads the new values
            self.model.advance(self.global_step, self.trainer.num_training_batches)
        if self._graph is None and self._graph_wanted:
            self._counted_step = CountedStep(optimizer)
            self._graph = self._capture_step(optimizer, x)
        if self._graph is not None and self._graph.applies_to(x):
            with self._counted_step:  # Lightning counts the step that the graph takes
                losses = self._graph(x)
        else:  # eager: no graph, or a batch of another size (the last one of an epoch)
            optimizer.zero_grad(set_to_none=self._graph is None)  # keep the graph's grad buffers
            losses = self._training_losses(x)
            self.manual_backward(self._objective(losses))
            self._after_backward()
            self._clip_gradients()
            optimizer.step()
        if self._member_rates is not None:
            self._member_rates.step()
        elif self._scheduler_per_step:
            self.lr_schedulers().step()
        if self._first_loss is None:  # one host sync per fit
            self._first_loss = self._per_member(losses)[self._terms("train").index("loss")].tolist()
        # Counted on the host: a replayed graph does not run Python.
        self._counts["train"] += x.shape[-4]
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
        for n, means in enumerate(self._epoch_means("train")):
            if not self.member_active(n):
                continue
            loss = means["loss"]
            if self._check(n, float(loss), f"the mean training loss of epoch {self.current_epoch} is {loss.item()}",
                           "as the epoch's mean"):
                self._log_means("train", n, means)

    def on_train_end(self) -> None:
        # Adam moved the stopped members on their momentum, the stack drew their noise: put them back.
        for member in self._frozen:
            member.restore()

    def on_validation_start(self) -> None:
        # Lightning runs the sanity check inside isolate_rng: a single run's noise after it is what it
        # was before. A stack's members' generators are put back the same way (on_validation_end).
        if self.trainer.sanity_checking and self.n > 1 and self.model.generators is not None:
            self._generator_states = [g.get_state() for g in self.model.generators]

    def on_validation_end(self) -> None:
        if self._generator_states is not None:
            for g, state in zip(self.model.generators, self._generator_states):
                g.set_state(state)
            self._generator_states = None

    def on_validation_epoch_start(self) -> None:
        # Validation (and the callbacks that draw from the model, e.g. the latent panels) runs before
        # on_train_epoch_end: look at this epoch's training loss so far before they can trip on it.
        count = self._counts.get("train", 0)
        if self.trainer.sanity_checking or not count:
            return
        losses = self._sum_buffer("train")[self._terms("train").index("loss")].tolist()
        for n in self._live():
            loss = losses[n] / count
            self._check(n, loss, f"the training loss became {loss} in epoch {self.current_epoch}", "as the mean so far")

    def on_validation_epoch_end(self) -> None:
        means = self._log_epoch_means("val")
        if self.optimizer_settings.get("scheduler") == "plateau" and means and not self.trainer.sanity_checking:
            monitor = str(self.optimizer_settings.get("monitor", "val/loss")).removeprefix("val/")
            if self._member_rates is not None:  # each member's rate follows its own value
                self._member_rates.validated({n: float(means[n][monitor]) for n in self._live()})
            else:
                self.lr_schedulers().step(float(means[0][monitor]))

    def on_test_epoch_end(self) -> None:
        self._log_epoch_means("test")

    def configure_optimizers(self):
        """Adam (training/optim.py) over all members' weights at once: elementwise, so each member's
        slice takes its own Adam step. Members of different model.lr, or on a plateau schedule (whose
        rates part as the members' validation values do): a StackedAdam and MemberRates, each member
        following the schedule from its own rate."""
        capturable = self._eager_reason() is None
        kind = self.optimizer_settings.get("scheduler", "constant")
        # Only the cosine needs the run's length (Lightning sets up the train loader to count it).
        total_steps = self.trainer.estimated_stepping_batches if kind == "cosine" else 0
        if len(set(self.lrs)) > 1 or (self.n > 1 and kind == "plateau"):
            single = make_optimizer([torch.zeros(1, device=self.device, requires_grad=True)], self.lrs[0], self.device)
            optimizer = StackedAdam(self.parameters(), self.lrs, betas=single.defaults["betas"],
                                    eps=single.defaults["eps"], member_defaults=single.defaults)
            self._member_rates = MemberRates(optimizer, self.optimizer_settings, self.lrs, total_steps=total_steps)
            return optimizer
        optimizer = make_optimizer(self.parameters(), self.lrs[0], self.device, capturable=capturable,
                                   tensor_lr=capturable and kind != "constant")
        scheduler = make_lr_scheduler(optimizer, self.optimizer_settings, self.lrs[0], total_steps=total_steps)
        self._scheduler_per_step = steps_per_batch(scheduler)
        # Lightning saves and restores the scheduler's state with the checkpoint; stepping it is ours.
        return optimizer if scheduler is None else {"optimizer": optimizer, "lr_scheduler": scheduler}
