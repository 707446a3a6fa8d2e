"""Experiment loggers. conf/logger/<choice>.yaml names them with `_target_`; every choice
includes the CSV record (<run dir>/csv/metrics.csv) that vaelab's own tools read."""

import os
from collections.abc import Sequence
from typing import Any, Optional

from pytorch_lightning.loggers import Logger
from pytorch_lightning.loggers import WandbLogger as LightningWandbLogger

from vaelab.sweeps.jobs import override_tags, sweep_group


def wandb_online() -> bool:
    """W&B goes online only when the user asks; with a key but no network, init would hang."""
    return os.environ.get("WANDB_MODE", "").lower() == "online"


class WandbLogger(LightningWandbLogger):
    """Lightning's WandbLogger, offline unless WANDB_MODE=online, grouped and tagged by the sweep.

    All jobs of a sweep share one group (a `group` set in the config wins), and each run is
    tagged with its overrides (`model=ae`, `model.beta=4`) after the config's own `tags`.
    """

    def __init__(self, group: Optional[str] = None, tags: Sequence[str] = (), **kwargs: Any):
        online = wandb_online()
        if not online:
            os.environ["WANDB_MODE"] = "offline"
        super().__init__(offline=not online, group=group or sweep_group(),
                         tags=list(dict.fromkeys([*tags, *override_tags()])), **kwargs)

    def finish(self, failed: bool = False) -> None:
        """Close the run so its file is complete and the next sweep job starts a new run.

        `wandb.run` is the run this logger started, if it started one (W&B has one per process).
        """
        import wandb

        if wandb.run is not None:
            wandb.run.finish(exit_code=1 if failed else 0)


def log_hyperparameters(loggers: list[Logger], params: dict[str, Any]) -> None:
    for logger in loggers:
        logger.log_hyperparams(params)


def finish_loggers(loggers: list[Logger], failed: bool = False) -> None:
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            logger.finish(failed=failed)
