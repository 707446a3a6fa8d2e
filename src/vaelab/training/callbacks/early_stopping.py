"""Early stopping on a validation metric: Lightning's EarlyStopping, off until `patience` is set.

    python train.py callbacks.early_stopping.patience=50 callbacks.early_stopping.monitor=val/nelbo

The fit stops after `patience` validations in which `monitor` did not improve by more than
`min_delta`. A single run stops as Lightning stops it (trainer.should_stop). In a stack the same
callback is handed its member's view of the fit (training/members.py: MemberTrainer), where setting
`should_stop` ends that member's training alone (LitAutoencoder.stop_member); the fit ends once no
member trains. Either way `early_stopping_record` says, for metrics.json, whether and when it stopped.
"""

import logging
from collections.abc import Sequence
from typing import Any, Optional

import pytorch_lightning as pl
from pytorch_lightning.callbacks import EarlyStopping as LightningEarlyStopping
from pytorch_lightning.callbacks.early_stopping import EarlyStoppingReason

from vaelab.training.members import MemberTrainer

log = logging.getLogger(__name__)


class EarlyStopping(LightningEarlyStopping):
    """Lightning's EarlyStopping; `patience: null` turns it off (the entry stays in the config, so that
    `callbacks.early_stopping.patience=50` on the command line turns it on)."""

    def __init__(self, monitor: str = "val/loss", patience: Optional[int] = None, mode: str = "min",
                 min_delta: float = 0.0, **kwargs: Any):
        super().__init__(monitor=monitor, patience=0 if patience is None else patience, mode=mode,
                         min_delta=min_delta, **kwargs)
        self.enabled = patience is not None
        # Where it stopped this fit, for metrics.json. Not in its state: the test after the fit loads the
        # callbacks' states of the best checkpoint, which was saved before the stop.
        self.stop: Optional[dict[str, Any]] = None

    def _run_early_stopping_check(self, trainer: pl.Trainer) -> None:
        if not self.enabled:
            return
        self.stopping_reason = EarlyStoppingReason.NOT_STOPPED  # this check's verdict, not one a resume restored
        super()._run_early_stopping_check(trainer)
        if self.stop is None and self.stopping_reason != EarlyStoppingReason.NOT_STOPPED:
            self.stop = {"stopped_early": True, "stopped_epoch": self.stopped_epoch, "epochs": self.stopped_epoch + 1,
                         "global_step": trainer.global_step}
            log.info("early stopping after epoch %d%s: %s", self.stopped_epoch, _of_run(trainer),
                     self.stopping_reason_message)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # The patience is this run's setting: Lightning would take the checkpoint's (0 where it was off).
        patience = self.patience
        super().load_state_dict(state_dict)
        self.patience = patience

    def record(self) -> dict[str, Any]:
        """What metrics.json says of it: nothing when off; whether it stopped the run, and where: the
        epoch of its last validation, and the epochs and steps trained (a stack's fit may go on longer)."""
        if not self.enabled:
            return {}
        return self.stop or {"stopped_early": False}


def _of_run(trainer: pl.Trainer) -> str:
    """' of <run dir>' for a stack's member (its MemberTrainer's run directory), '' for a single run."""
    return f" of {trainer.member.run_dir.name}" if isinstance(trainer, MemberTrainer) else ""


def early_stopping_record(callbacks: Sequence[pl.Callback]) -> dict[str, Any]:
    """The record of the run's EarlyStopping among `callbacks` (see EarlyStopping.record); {} without one."""
    early_stopping = next((c for c in callbacks if isinstance(c, EarlyStopping)), None)
    return early_stopping.record() if early_stopping is not None else {}
