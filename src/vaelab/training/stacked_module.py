"""Training N stacked VAEs (models/stack.py) in one Lightning fit, each member still a run of its own.

`StackedLitModule` is LitAutoencoder's step for a Stack: manual optimisation, one Adam over
the stacked parameters (elementwise, so N Adams), per-member gradient clipping, the alive mask.
When the members share model.lr, that Adam is make_optimizer's fused torch Adam and the schedule
make_lr_scheduler's; when their rates differ, it is a StackedAdam (training/optim.py: member n at
its own rate) and `MemberRates` gives each member the rate its single run's schedule gives it.
What LitAutoencoder, its callbacks and its loggers do for one run, it does per member
(`MemberRun`): epoch means from sums and counts, step values at `log_every_n_steps`, the
NaN / divergence checks (a failing member stops; the others go on), the best checkpoint by
the monitored value and last.ckpt (each a LitAutoencoder checkpoint of that member alone), the
latent diagnostics and panels, and the rows of its own CSV record, at the steps Lightning gives
a single run's rows.

`StackedDataModule` gives each member its own data order: the permutation a single run with the
member's seed draws each epoch (TensorBatchLoader, seeded by seed + epoch); training batches are
(N, B, 1, H, W), validation and test batches (B, 1, H, W), shared (they are not shuffled).
"""

import functools
import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Optional

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import Logger

from vaelab.checkpoints import AtomicCheckpointIO, rng_states
from vaelab.data.datamodule import MNISTDataModule
from vaelab.data.loader import EpochSeed, ResumableLoader, TensorBatchLoader
from vaelab.evaluation.latent import active_units, encode
from vaelab.evaluation.panels import make_panels, save_panels
from vaelab.models import VAE
from vaelab.models.stack import Stack
from vaelab.training.callbacks import BestEpochMetrics, LatentPanels
from vaelab.training.callbacks.latent_panels import split_images
from vaelab.training.lightning_compat import saves_every_epoch, validates_on_a_timer
from vaelab.training.module import DIVERGENCE_FACTOR
from vaelab.training.optim import (StackedAdam, clip_gradients, cosine_lr_factor, lr_of_step, make_lr_scheduler,
                                   make_optimizer, steps_per_batch)

log = logging.getLogger(__name__)


# -- data --------------------------------------------------------------------------------------------
class StackedBatchLoader(ResumableLoader):
    """Training batches (N, B, H, W) uint8: member n's batch is the one a single run with seed
    `seeds[n]` gets at that step (one TensorBatchLoader per member gives each epoch's order)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, seeds: Sequence[int],
                 batches_done: Optional[Callable[[], int]] = None):
        self.images, self.labels, self.batch_size = images, labels, batch_size
        self.members = [TensorBatchLoader(images, labels, batch_size, shuffle=True, seed=s, pad=True) for s in seeds]
        self.sampler = EpochSeed()  # Lightning calls set_epoch on it
        self.batch_sampler = None
        self.batches_done = batches_done
        self._resume_at: Optional[tuple[int, int]] = None

    def __len__(self) -> int:
        return self.members[0].num_batches()

    def __iter__(self):
        first = self.first_batch()
        for member in self.members:
            member.sampler.set_epoch(self.sampler.epoch)
        order = torch.stack([m.indices() for m in self.members]).to(self.images.device)  # (N, n)
        images, labels = self.images[order], self.labels[order]  # (N, n, H, W), (N, n)
        size = self.batch_size
        for start in range(first * size, len(self) * size, size):
            yield images[:, start : start + size], labels[:, start : start + size]


class StackedDataModule(MNISTDataModule):
    """MNISTDataModule whose training batches hold one batch per member (see StackedBatchLoader)."""

    def __init__(self, seeds: Sequence[int], **settings: Any):
        super().__init__(**settings)
        if self.binarize == "dynamic":
            raise ValueError("data.binarize=dynamic does not stack: each run resamples from the global generator")
        # What a single run's loader is seeded with: torch.initial_seed() after seed_everything(seed).
        self.seeds = [int(s) % 2**32 for s in seeds]

    def train_dataloader(self) -> StackedBatchLoader:
        trainer = self.trainer
        if trainer is not None and trainer.world_size != 1:
            raise ValueError("a stack trains on one device")
        device = trainer.strategy.root_device if trainer else torch.device("cpu")
        key = ("train", device)
        if key not in self._on_device:
            images, labels = self.splits["train"]
            self._on_device[key] = (images.to(device), labels.to(device))
        images, labels = self._on_device[key]
        batches_done = (lambda: trainer.fit_loop.epoch_loop.batch_progress.current.completed) if trainer else None
        return StackedBatchLoader(images, labels, self.batch_size, self.seeds, batches_done=batches_done)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        images, labels = batch
        x = images.unsqueeze(-3) / 255  # (…, B, 1, H, W): the single run's conversion, per member too
        low, high = self.pixel_range
        if (low, high) != (0.0, 1.0):
            x = x.mul_(high - low).add_(low)
        return x, labels


# -- one member's run --------------------------------------------------------------------------------
class MemberRun:
    """What the callbacks and loggers of a single run keep, for member `index` of a stack.

    `checkpoint` and `best` are real ResumableModelCheckpoint / BestEpochMetrics objects built from
    the member's config, used for their settings, file names and checkpoint state, not as callbacks.
    """

    def __init__(self, index: int, run_dir: Path, hparams: dict[str, Any], vae: VAE, loggers: list[Logger],
                 checkpoint: Optional[ModelCheckpoint], best: Optional[BestEpochMetrics],
                 panels: Optional[LatentPanels]):
        self.index, self.run_dir, self.hparams, self.vae = index, Path(run_dir), hparams, vae
        self.loggers, self.checkpoint, self.best, self.panels = loggers, checkpoint, best, panels
        self.error: Optional[str] = None  # set when the member fails (the single run would raise this)
        self.first_loss: Optional[float] = None
        self.last_step_values: dict[str, float] = {}
        self.train_means: dict[str, float] = {}  # the last training epoch's means (train/<term>)
        self.val_metrics: dict[str, float] = {}  # the last validation's val/* (with val/active_units)
        self.test_metrics: dict[str, float] = {}
        self.best_state: Optional[dict[str, torch.Tensor]] = None  # the weights of the best checkpoint
        self.panel_paths: list[Path] = []

    @property
    def alive(self) -> bool:
        return self.error is None

    def log_row(self, metrics: dict[str, float], step: int) -> None:
        for logger in self.loggers:
            logger.log_metrics(metrics, step=step)
            logger.save()


class MemberRates:
    """The learning rates of a StackedAdam whose members' model.lr differ: at optimiser step t member n
    gets the rate its single run's schedule (optim.make_lr_scheduler) gives it from its base rate lr_n,

        constant  lr_n(t) = lr_n
        cosine    lr_n(t) = lr_n · cosine_lr_factor(t, W, T, min_lr / lr_n)     (= m + (lr_n − m)·½(1 + cos …))

    computed as that run's LambdaLR computes it (the same float products), and kept in the optimiser's
    param group: "lr" (and "initial_lr" under a schedule) as lists of N. `step()` follows each
    optimiser step, as a torch scheduler stepped per batch; `member_state_dicts(n)` is what member n's
    own scheduler would save (none for a constant rate). plateau is refused (each member's rate
    would follow its own val/loss)."""

    def __init__(self, optimizer: StackedAdam, settings: dict[str, Any], lrs: Sequence[float], total_steps: int):
        kind = settings.get("scheduler", "constant")
        self.optimizer, self.lrs, self.last_epoch = optimizer, [float(r) for r in lrs], 0
        self._template: Optional[dict[str, Any]] = None
        if kind == "cosine":
            warmup, floor = int(settings.get("warmup_steps", 0)), float(settings.get("min_lr", 0.0))
            self.factors = [functools.partial(cosine_lr_factor, warmup_steps=warmup, total_steps=int(total_steps),
                                              min_factor=floor / lr) for lr in self.lrs]
            # torch's bookkeeping keys of a LambdaLR just built (this torch version's), filled in per member.
            stand_in = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
            self._template = torch.optim.lr_scheduler.LambdaLR(stand_in, lambda t: 1.0).state_dict()
            optimizer.param_groups[0]["initial_lr"] = list(self.lrs)
        elif kind == "constant":
            self.factors = None
        else:
            raise ValueError(f"optimizer.scheduler={kind} does not stack with a learning rate per member")
        self._set()  # the rates of step 0, as a LambdaLR sets them when it is built

    def rate(self, n: int, step: int) -> float:
        """Member n's rate at optimiser step `step` (what its single run's lr_of_step gives)."""
        return self.lrs[n] if self.factors is None else self.lrs[n] * self.factors[n](step)

    def _set(self) -> None:
        self.optimizer.param_groups[0]["lr"] = [self.rate(n, self.last_epoch) for n in range(len(self.lrs))]

    def step(self) -> None:
        self.last_epoch += 1
        if self.factors is not None:  # a constant rate stays as it is
            self._set()

    def member_state_dicts(self, n: int) -> list[dict[str, Any]]:
        """The lr_schedulers entry of member n's single-run checkpoint: its LambdaLR's state, or []."""
        if self._template is None:
            return []
        return [{**self._template, "base_lrs": [self.lrs[n]], "last_epoch": self.last_epoch,
                 "_step_count": self.last_epoch + 1, "_last_lr": [self.rate(n, self.last_epoch)]}]


# -- the LightningModule -----------------------------------------------------------------------------
class StackedLitModule(pl.LightningModule):
    """Trains `stack` as LitAutoencoder trains each of its members alone (see the module docstring)."""

    def __init__(self, stack: Stack, members: Sequence[MemberRun], lr: float | Sequence[float],
                 optimizer: Optional[dict] = None,
                 gradient_clip_val: Optional[float] = None, gradient_clip_algorithm: Optional[str] = "norm",
                 before_step: Optional[Callable[["StackedLitModule", int], None]] = None):
        super().__init__()
        self.model = stack
        self.members = list(members)
        # Each member's model.lr (a single number: the same for every member).
        self.lrs = [float(r) for r in lr] if isinstance(lr, Sequence) else [float(lr)] * stack.n
        if len(self.lrs) != stack.n:
            raise ValueError(f"{stack.n} members need {stack.n} learning rates, not {len(self.lrs)}")
        self.optimizer_settings = dict(optimizer or {})
        if self.optimizer_settings.get("scheduler", "constant") == "plateau":
            raise ValueError("optimizer.scheduler=plateau does not stack (yet): each member's rate would follow "
                             "its own val/loss")
        self.gradient_clip_val, self.gradient_clip_algorithm = gradient_clip_val, gradient_clip_algorithm
        self.before_step = before_step  # a test hook: called before each training step with the global step
        self.terms = stack.terms
        self.automatic_optimization = False
        self._sums: dict[str, torch.Tensor] = {}  # per stage: (N, terms) batch-size-weighted sums
        self._counts: dict[str, int] = {}
        self._scheduler_per_step = False
        self._member_rates: Optional[MemberRates] = None  # set when the members' rates differ
        self._first_losses_taken = False
        self._generator_states: Optional[list[torch.Tensor]] = None
        self._pending_saves: list[tuple[MemberRun, dict[str, float]]] = []  # checkpoints due (ModelCheckpoint's timing)
        self.io = AtomicCheckpointIO()

    # -- sums and means ---------------------------------------------------------------------------
    def _sum_buffer(self, stage: str) -> torch.Tensor:
        if stage not in self._sums:
            self._sums[stage] = torch.zeros(self.model.n, len(self.terms), device=self.device)
        return self._sums[stage]

    def _accumulate(self, stage: str, losses: dict[str, torch.Tensor], batch_size: int) -> None:
        self._sum_buffer(stage).add_(torch.stack([losses[t].detach() for t in self.terms], dim=1), alpha=batch_size)
        self._counts[stage] = self._counts.get(stage, 0) + batch_size

    def _epoch_means(self, stage: str) -> Optional[list[dict[str, float]]]:
        """Per member {term: mean} over this epoch's images (host floats); sums reset; None if no images."""
        count = self._counts.pop(stage, 0)
        buffer = self._sum_buffer(stage)
        means = (buffer / count).tolist() if count else None  # float32, as LitAutoencoder divides
        buffer.zero_()
        if means is None:
            return None
        return [dict(zip(self.terms, row)) for row in means]

    # -- failure ----------------------------------------------------------------------------------
    def _fail(self, member: MemberRun, message: str) -> None:
        member.error = message
        self.model.stop(member.index)
        log.error("stacked member %d (%s) failed: %s", member.index, member.run_dir.name, message)

    def _diverged(self, member: MemberRun, loss: float, when: str) -> bool:
        first = member.first_loss
        if first is not None and loss > first + DIVERGENCE_FACTOR * max(abs(first), 1.0):
            self._fail(member, f"the training loss diverged: {loss:.4g} {when} (epoch {self.current_epoch}) against "
                               f"{first:.4g} at the first step; lower model.lr (now {self._lr_text(member)}) or clip the "
                               f"gradients (trainer.gradient_clip_val)")
            return True
        return False

    def _lr_text(self, member: MemberRun) -> str:
        """The member's own model.lr, as its single run's errors name it."""
        return f"{self.lrs[member.index]:g}"

    # -- training ---------------------------------------------------------------------------------
    def _clip_gradients(self) -> None:
        if not self.gradient_clip_val:
            return
        if self.gradient_clip_algorithm == "value":  # elementwise: the same for all members at once
            clip_gradients(list(self.parameters()), self.gradient_clip_val, "value")
        else:
            self.model.clip_grad_norm_per_member(self.gradient_clip_val)

    def training_step(self, batch, batch_idx):
        x, _ = batch  # (N, B, 1, H, W)
        if self.before_step is not None:
            self.before_step(self, self.global_step)
        optimizer = self.optimizers()
        stack = self.model
        if stack.schedule_varies:
            stack.advance(self.global_step, self.trainer.num_training_batches)
        optimizer.zero_grad(set_to_none=True)
        alive_before = stack.alive.clone()
        losses = stack.losses(x)
        self.manual_backward(stack.objective(losses))
        stack.mask_dead_gradients()
        self._clip_gradients()
        optimizer.step()
        if self._member_rates is not None:
            self._member_rates.step()
        elif self._scheduler_per_step:
            self.lr_schedulers().step()
        # What each single run sees: its losses up to and at the step it broke, NaN after (its weights
        # would be NaN from then on), so that its checks fail as the single run's would.
        seen = {k: torch.where(alive_before, v.detach(), torch.nan) for k, v in losses.items()}
        self._accumulate("train", seen, x.shape[1])
        if not self._first_losses_taken:  # one host sync per fit
            self._first_losses_taken = True
            for member, loss in zip(self.members, seen["loss"].tolist()):
                member.first_loss = loss
        if self._step_values_due():
            self._log_step_values(seen)

    def _step_values_due(self) -> bool:
        every = self.trainer.log_every_n_steps
        return bool(self.trainer.fast_dev_run) or (every > 0 and self.global_step % every == 0)

    def _log_step_values(self, seen: dict[str, torch.Tensor]) -> None:
        values = torch.stack([seen[t] for t in self.terms], dim=1).cpu()  # (N, terms)
        step = self.global_step - 1
        scheduled = self.model.scheduled_values(step, self.trainer.num_training_batches)
        lrs = self._rates_of_step(step)
        loss_index = self.terms.index("loss")
        for member in self.members:
            if not member.alive:
                continue
            row = values[member.index]
            if not torch.isfinite(row).all():
                self._fail(member, f"the training loss became {row[loss_index].item()} at step {self.global_step} "
                                   f"(epoch {self.current_epoch}); lower model.lr (now {self._lr_text(member)}) or check "
                                   f"the data")
                continue
            if self._diverged(member, float(row[loss_index]), f"at step {self.global_step}"):
                continue
            member.last_step_values = {f"train/{term}_step": float(v) for term, v in zip(self.terms, row)}
            member.last_step_values.update({f"train/{k}": v for k, v in scheduled[member.index].items()})
            member.last_step_values["train/lr"] = lrs[member.index]
            member.log_row({**member.last_step_values, "epoch": self.current_epoch}, step=step)

    def on_train_epoch_end(self) -> None:
        means = self._epoch_means("train")
        if means is None:
            if self._save_on_train_epoch_end():
                self._flush_saves()
            return
        for member in self.members:
            if not member.alive:
                continue
            loss = means[member.index]["loss"]
            if not math.isfinite(loss):
                self._fail(member, f"the mean training loss of epoch {self.current_epoch} is {loss}; lower model.lr "
                                   f"(now {self._lr_text(member)}) or check the data")
                continue
            if self._diverged(member, loss, "as the epoch's mean"):
                continue
            member.train_means = {f"train/{t}": v for t, v in means[member.index].items()}
            member.log_row({**member.train_means, "epoch": self.current_epoch}, step=self.global_step - 1)
        if self._save_on_train_epoch_end():
            self._flush_saves()

    # -- validation and test ----------------------------------------------------------------------
    def validation_step(self, batch, batch_idx):
        x, _ = batch
        self._accumulate("val", self.model.losses(x), x.shape[0])

    def test_step(self, batch, batch_idx):
        x, _ = batch
        self._accumulate("test", self.model.losses(x), x.shape[0])

    def on_validation_start(self) -> None:
        # Lightning runs the sanity check inside isolate_rng: a single run's noise after it is what it
        # was before. The members' generators are put back the same way (on_validation_end).
        if self.trainer.sanity_checking and self.model.generators is not None:
            self._generator_states = [g.get_state() for g in self.model.generators]

    def on_validation_end(self) -> None:
        if self.trainer.sanity_checking and self._generator_states is not None:
            for g, state in zip(self.model.generators, self._generator_states):
                g.set_state(state)
            self._generator_states = None

    def on_validation_epoch_start(self) -> None:
        count = self._counts.get("train", 0)
        if self.trainer.sanity_checking or not count:
            return
        sums = self._sum_buffer("train")[:, self.terms.index("loss")].cpu()
        for member in self.members:
            if not member.alive:
                continue
            loss = float(sums[member.index]) / count
            if not math.isfinite(loss):
                self._fail(member, f"the training loss became {loss} in epoch {self.current_epoch}; lower model.lr "
                                   f"(now {self._lr_text(member)}) or check the data")
            else:
                self._diverged(member, loss, "as the mean so far")

    def on_validation_epoch_end(self) -> None:
        means = self._epoch_means("val")
        if self.trainer.sanity_checking or means is None:
            return
        for member in self.members:
            if not member.alive:
                continue
            metrics = {f"val/{t}": v for t, v in means[member.index].items()}
            member.vae.load_state_dict(self.model.member_state_dict(member.index))
            if member.panels is not None:
                self._latent_panels(member, metrics)
            member.val_metrics = metrics
            member.log_row({**metrics, "epoch": self.current_epoch}, step=self.global_step - 1)
            if member.best is not None:
                self._track_best(member, metrics)
            if member.checkpoint is not None:
                self._pending_saves.append((member, metrics))
        if not self._save_on_train_epoch_end():
            self._flush_saves()

    def _save_on_train_epoch_end(self) -> bool:
        """When ModelCheckpoint saves (its _should_save_on_train_epoch_end): at the end of the training
        epoch when validation runs once per epoch, else at the end of each validation."""
        trainer = self.trainer
        if validates_on_a_timer(trainer) or trainer.check_val_every_n_epoch != 1:
            return False
        return trainer.val_check_interval == 1.0

    def _flush_saves(self) -> None:
        for member, metrics in self._pending_saves:
            if member.alive:  # a member that failed at the epoch's end saves nothing, as its single run
                self._save_checkpoints(member, metrics)
        self._pending_saves = []

    def _latent_panels(self, member: MemberRun, metrics: dict[str, float]) -> None:
        """LatentPanels.on_validation_epoch_end for the member (its plain VAE holds the member's weights)."""
        panels, vae = member.panels, member.vae
        with torch.no_grad():
            x, _ = split_images(self.trainer, "val", panels.max_val_images, self.device)
            metrics["val/active_units"] = float(active_units(encode(vae, x)))
            if self._panels_due(panels):
                x, labels = split_images(self.trainer, "test", panels.n_scatter, self.device)
                drawn = make_panels(vae, x, labels, seed=panels.seed, **panels.panel_options)
                folder = Path(panels.output_dir or member.run_dir) / "images"
                member.panel_paths += save_panels(drawn, folder, suffix=f"_epoch{self.current_epoch:03d}")

    def _panels_due(self, panels: LatentPanels) -> bool:
        trainer = self.trainer
        if panels.every_n_epochs == 0 or trainer.fast_dev_run:
            return False
        epoch = trainer.current_epoch
        last = trainer.max_epochs is not None and epoch + 1 >= trainer.max_epochs
        return (epoch + 1) % panels.every_n_epochs == 0 or last

    def _track_best(self, member: MemberRun, metrics: dict[str, float]) -> None:
        best = member.best
        current = metrics.get(best.monitor)
        if current is None or not math.isfinite(current):
            return
        if best.best is None or (current < best.best if best.mode == "min" else current > best.best):
            best.best, best.epoch, best.metrics = current, self.current_epoch, dict(metrics)

    # -- checkpoints ------------------------------------------------------------------------------
    def _save_checkpoints(self, member: MemberRun, metrics: dict[str, float]) -> None:
        """ModelCheckpoint(save_top_k=1, save_last) of the member at this validation's end."""
        callback = member.checkpoint
        if callback.save_top_k != 1 or not saves_every_epoch(callback):
            raise ValueError("a stacked member saves its best checkpoint (save_top_k=1, every epoch) and last.ckpt only")
        current = metrics.get(callback.monitor)
        score = torch.tensor(float("inf") if current is None or math.isnan(current) else current)
        callback.current_score = score
        previous = callback.best_model_path
        better = (callback.best_model_score is None
                  or (score < callback.best_model_score if callback.mode == "min" else score > callback.best_model_score))
        if better:
            path = callback.format_checkpoint_name({"epoch": self.current_epoch, "step": self.global_step, **metrics})
            callback.best_model_path = callback.kth_best_model_path = path
            callback.best_model_score = callback.kth_value = score
            callback.best_k_models = {path: score}
            self._write(member, path)
            member.best_state = self.model.member_state_dict(member.index)
            if previous and previous != path:
                Path(previous).unlink(missing_ok=True)
        if callback.save_last:
            last = str(Path(callback.dirpath) / f"{callback.CHECKPOINT_NAME_LAST}{callback.FILE_EXTENSION}")
            callback.last_model_path = last
            self._write(member, last)

    def _write(self, member: MemberRun, path: str) -> None:
        self.io.save_checkpoint(self.member_checkpoint(member), path)

    def member_checkpoint(self, member: MemberRun) -> dict[str, Any]:
        """Member `member` as LitAutoencoder's checkpoint of its single run at this point."""
        n, trainer = member.index, self.trainer
        state_dict = {f"model.{k}": v for k, v in self.model.member_state_dict(n).items()}
        callbacks = {}
        if member.best is not None:
            callbacks[member.best.state_key] = member.best.state_dict()
        if member.checkpoint is not None:
            callbacks[member.checkpoint.state_key] = member.checkpoint.state_dict()
        generator = self.model.generators[n] if self.model.generators is not None else None
        rng = rng_states()
        if generator is not None and generator.device.type == "cpu":  # the single run's noise comes from it
            rng["torch"] = generator.get_state()
        return {
            "epoch": trainer.current_epoch,
            "global_step": trainer.global_step,
            "pytorch-lightning_version": pl.__version__,
            "state_dict": state_dict,
            "loops": {"fit_loop": trainer.fit_loop.state_dict(), "validate_loop": trainer.validate_loop.state_dict(),
                      "test_loop": trainer.test_loop.state_dict(), "predict_loop": trainer.predict_loop.state_dict()},
            "callbacks": callbacks,
            "optimizer_states": [self.model.member_optimizer_state(n, self.optimizers().optimizer)],
            "lr_schedulers": (self._member_rates.member_state_dicts(n) if self._member_rates is not None
                              else [s.state_dict() for s in self._schedulers()]),
            "hparams_name": "kwargs",
            "hyper_parameters": dict(member.hparams),
            "rng_states": rng,
            "first_loss": member.first_loss,
            "stacked": {"members": self.model.n, "index": n},
        }

    def _schedulers(self) -> list:
        schedulers = self.lr_schedulers()
        return [] if schedulers is None else schedulers if isinstance(schedulers, list) else [schedulers]

    def on_test_epoch_end(self) -> None:
        means = self._epoch_means("test")
        for member in self.members:
            if member.alive and means is not None:
                member.test_metrics = {f"test/{t}": v for t, v in means[member.index].items()}
                member.log_row({**member.test_metrics, "epoch": self.current_epoch}, step=self.global_step)

    def load_best_weights(self) -> None:
        """Every member that has a best checkpoint gets its weights back (what its single run tests)."""
        for member in self.members:
            if member.best_state is not None:
                self.model.load_member_state_dict(member.index, member.best_state)

    # -- the optimiser ---------------------------------------------------------------------------
    def configure_optimizers(self):
        """One model.lr for all: make_optimizer's fused Adam and make_lr_scheduler's schedule, as a single
        run has them. Rates that differ: a StackedAdam with each member's Adam settings, and MemberRates."""
        total = self.trainer.estimated_stepping_batches if self.optimizer_settings.get("scheduler") == "cosine" else 0
        if len(set(self.lrs)) > 1:
            single = make_optimizer([torch.zeros(1, device=self.device, requires_grad=True)], self.lrs[0], self.device)
            optimizer = StackedAdam(self.parameters(), self.lrs, betas=single.defaults["betas"],
                                    eps=single.defaults["eps"], member_defaults=single.defaults)
            self._member_rates = MemberRates(optimizer, self.optimizer_settings, self.lrs, total_steps=total)
            return optimizer
        optimizer = make_optimizer(self.parameters(), self.lrs[0], self.device)
        scheduler = make_lr_scheduler(optimizer, self.optimizer_settings, self.lrs[0], total_steps=total)
        self._scheduler_per_step = steps_per_batch(scheduler)
        return optimizer if scheduler is None else {"optimizer": optimizer, "lr_scheduler": scheduler}

    def _rates_of_step(self, step: int) -> list[float]:
        """Each member's rate at optimiser step `step`, as its single run logs it (train/lr)."""
        if self._member_rates is not None:
            return [self._member_rates.rate(n, step) for n in range(self.model.n)]
        return [lr_of_step(self.optimizers().optimizer, self.lr_schedulers(), self.lrs[0], step)] * self.model.n
