"""What each member of a stack sees: a single run of its own.

LitAutoencoder trains N ≥ 1 members (training/module.py); N > 1 is a stack (models/stack.py).
Each member keeps the callbacks and loggers its single run has, unchanged: they are handed a
view of the fit that shows that member alone.

    member n's `val/loss` is logged as `val/loss@n` (`member_key`; N = 1 logs plain names, no view)
    MemberLogger     gives its logger the member's own metrics under their plain names
    MemberCallback   calls its callback (ModelCheckpoint, BestEpochMetrics, LatentPanels, EpochTimer,
                     Preemption, EarlyStopping, ...) with a MemberTrainer and a MemberModule, as long as the
                     member trains (LitAutoencoder.member_active)
    MemberTrainer    the trainer as the member's single run has it: its callback_metrics, loggers,
                     checkpoint callback and run directory; a checkpoint it saves is the member's own
                     (LitAutoencoder.on_save_checkpoint cuts it out of the stack's); `should_stop` stops
                     the member alone (LitAutoencoder.stop_member)
    MemberModule     the LightningModule as the member's: `model` is the member's single model with
                     its current weights, and `log` logs under the member's names
    FrozenMember     a member that stopped early, as it stood then: put back once the fit ends
"""

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Checkpoint
from pytorch_lightning.loggers import Logger

SEPARATOR = "@"


def member_key(name: str, index: Optional[int]) -> str:
    """The name under which member `index` logs `name` (None: a single run, the plain name)."""
    return name if index is None else f"{name}{SEPARATOR}{index}"


def member_metrics(metrics: dict[str, Any], index: int) -> dict[str, Any]:
    """Member `index`'s metrics under their plain names, with the metrics of no member (e.g. `epoch`)."""
    suffix = f"{SEPARATOR}{index}"
    own = {}
    for key, value in metrics.items():
        name, separator, _ = key.rpartition(SEPARATOR)
        if key.endswith(suffix):
            own[name] = value
        elif not separator:
            own[key] = value
    return own


@dataclass
class Member:
    """Member `index` of a stack: where its run lives, and its single run's loggers and callbacks."""

    index: int
    run_dir: Path
    loggers: list[Logger] = field(default_factory=list)
    callbacks: list[pl.Callback] = field(default_factory=list)


class MemberLogger(Logger):
    """`logger` of member `index`: it receives the member's metrics (plain names) and nothing else."""

    def __init__(self, logger: Logger, index: int):
        super().__init__()
        self.logger, self.index = logger, index
        self._stopped: Optional[tuple[int, int]] = None  # (epochs, steps) its member trained before it stopped early

    def stopped_early(self, epochs: int, steps: int) -> None:
        """The member trained `epochs` epochs, `steps` steps: what it logs from now on (its test) is
        logged at its own epoch and step, as its single run logs it, not at the stack's."""
        self._stopped = (epochs, steps)

    @property
    def name(self) -> Optional[str]:
        return self.logger.name

    @property
    def version(self):
        return self.logger.version

    @property
    def save_dir(self) -> Optional[str]:
        return self.logger.save_dir

    @property
    def log_dir(self) -> Optional[str]:
        return getattr(self.logger, "log_dir", None)

    @property
    def experiment(self) -> Any:
        return self.logger.experiment

    def log_metrics(self, metrics: dict[str, Any], step: Optional[int] = None) -> None:
        own = member_metrics(metrics, self.index)
        if any(key.endswith(f"{SEPARATOR}{self.index}") for key in metrics):  # not a row of another member's alone
            if self._stopped is not None and own.get("epoch", -1) >= self._stopped[0]:  # after its last epoch
                epochs, step = self._stopped
                own = {**own, "epoch": epochs}
            self.logger.log_metrics(own, step)

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        """The task logs each member's own configuration into its loggers; the stack's is not theirs."""

    def save(self) -> None:
        self.logger.save()

    def finalize(self, status: str) -> None:
        self.logger.finalize(status)

    def after_save_checkpoint(self, checkpoint_callback) -> None:
        """Each member's checkpoint callback tells its own loggers (through MemberTrainer.loggers)."""


class MemberModule:
    """The LightningModule as member `index` sees it (see the module docstring)."""

    def __init__(self, module: pl.LightningModule, index: int):
        self._module, self.index = module, index

    def __getattr__(self, name: str) -> Any:
        return getattr(self._module, name)

    @property
    def model(self):
        return self._module.member_model(self.index)

    def log(self, name: str, value: Any, *args, **kwargs) -> None:
        self._module.log(member_key(name, self.index), value, *args, **kwargs)


class MemberTrainer:
    """The Trainer as member `member` sees it (see the module docstring)."""

    def __init__(self, trainer: pl.Trainer, member: Member):
        self._trainer, self.member = trainer, member

    def __getattr__(self, name: str) -> Any:
        return getattr(self._trainer, name)

    @property
    def callback_metrics(self) -> dict[str, Any]:
        return member_metrics(self._trainer.callback_metrics, self.member.index)

    @property
    def logged_metrics(self) -> dict[str, Any]:
        return member_metrics(self._trainer.logged_metrics, self.member.index)

    @property
    def progress_bar_metrics(self) -> dict[str, Any]:
        return member_metrics(self._trainer.progress_bar_metrics, self.member.index)

    @property
    def loggers(self) -> list[Logger]:
        return self.member.loggers

    @property
    def logger(self) -> Optional[Logger]:
        return self.member.loggers[0] if self.member.loggers else None

    @property
    def checkpoint_callbacks(self) -> list[Checkpoint]:
        return [c for c in self.member.callbacks if isinstance(c, Checkpoint)]

    @property
    def checkpoint_callback(self) -> Optional[Checkpoint]:
        return next(iter(self.checkpoint_callbacks), None)

    @property
    def should_stop(self) -> bool:
        """Whether the member's training was stopped (by its early stopping), not whether the fit stops."""
        return self._trainer.lightning_module.member_stopped_early(self.member.index)

    @should_stop.setter
    def should_stop(self, stop: bool) -> None:
        if stop:
            self._trainer.lightning_module.stop_member(self.member.index)

    @property
    def default_root_dir(self) -> str:
        return str(self.member.run_dir)

    @property
    def lightning_module(self) -> MemberModule:
        return MemberModule(self._trainer.lightning_module, self.member.index)

    def save_checkpoint(self, filepath, weights_only: bool = False, storage_options: Optional[Any] = None) -> None:
        with self._trainer.lightning_module.saving_member(self.member.index):
            self._trainer.save_checkpoint(filepath, weights_only, storage_options)


# The hooks a Trainer calls on its callbacks as (trainer, pl_module, *args).
_HOOKS = sorted(name for name, value in vars(pl.Callback).items()
                if callable(value) and (name.startswith("on_") or name in ("setup", "teardown")))
_ALWAYS = ("setup", "teardown")  # a failed or stopped member's callbacks still set up and clean up (signal handlers)


class MemberCallback(pl.Callback):
    """`callback` of member `member`, called with the member's view of the fit while the member trains."""

    def __init__(self, callback: pl.Callback, member: Member):
        self.callback, self.member = callback, member

    @property
    def state_key(self) -> str:
        return member_key(self.callback.state_key, self.member.index)

    def state_dict(self) -> dict[str, Any]:
        return self.callback.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.callback.load_state_dict(state_dict)

    def _forward(self, hook: str, trainer: pl.Trainer, pl_module: pl.LightningModule, *args, **kwargs) -> Any:
        if hook not in _ALWAYS and not pl_module.member_active(self.member.index):
            return None
        return getattr(self.callback, hook)(MemberTrainer(trainer, self.member),
                                            MemberModule(pl_module, self.member.index), *args, **kwargs)


def _forwarding(hook: str):
    def forward(self, trainer, pl_module, *args, **kwargs):
        return self._forward(hook, trainer, pl_module, *args, **kwargs)
    forward.__name__ = hook
    return forward


for _hook in _HOOKS:
    setattr(MemberCallback, _hook, _forwarding(_hook))


class FrozenMember:
    """Member `index` of a stack as it stood when its training ended: its slices of the stacked
    parameters and buffers, of the optimiser's per-parameter state (Adam's moments; the step count, a
    scalar, is the stack's) and the state of its noise `generator`. Its gradients are zero from then on,
    but Adam keeps moving weights on their momentum, and the stack keeps drawing its noise:
    `restore` puts the member back exactly as it was, so that its test draws what its single run's does."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, index: int,
                 generator: Optional[torch.Generator] = None):
        self.index, self.generator = index, generator
        stacked = [*model.parameters(), *model.buffers()]
        for p in model.parameters():
            stacked += [v for v in optimizer.state.get(p, {}).values() if torch.is_tensor(v) and v.dim() > 0]
        self._saved = [(t, t[index].clone()) for t in stacked]
        self._generator_state = generator.get_state() if generator is not None else None

    @torch.no_grad()
    def restore(self) -> None:
        for stacked, saved in self._saved:  # in place: a captured CUDA graph reads these tensors
            stacked[self.index].copy_(saved)
        if self.generator is not None:
            self.generator.set_state(self._generator_state)


def member_views(members: Sequence[Member]) -> tuple[list[Logger], list[pl.Callback]]:
    """The loggers and callbacks a Trainer gets for the members of a stack: each member's own, as views."""
    loggers = [MemberLogger(logger, m.index) for m in members for logger in m.loggers]
    callbacks = [MemberCallback(callback, m) for m in members for callback in m.callbacks]
    return loggers, callbacks
