"""Experiment loggers: a CSV record always, plus W&B (offline by default) or TensorBoard."""

import logging
import os
from pathlib import Path
from typing import Any, Optional, Sequence

from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import CSVLogger, Logger, TensorBoardLogger, WandbLogger

from vaelab.errors import ConfigError

log = logging.getLogger(__name__)

LOGGERS = ("wandb", "tensorboard")


def wandb_online() -> bool:
    """W&B goes online only when the user asks; with a key but no network, init would hang."""
    return os.environ.get("WANDB_MODE", "").lower() == "online"


def build_loggers(logger_cfg: Optional[DictConfig], run_dir: Path, run_name: str,
                  group: Optional[str] = None, tags: Sequence[str] = ()) -> list[Logger]:
    """The CSV logger writes `<run_dir>/csv/metrics.csv`; `logger_cfg` adds W&B and/or TensorBoard.

    `group` and `tags` go to W&B (all jobs of a sweep share a group, see vaelab.sweep); a
    `logger.wandb.group` set in the config wins, and its `logger.wandb.tags` come first.
    """
    loggers: list[Logger] = [CSVLogger(save_dir=str(run_dir), name="csv", version="")]
    for kind, options in (logger_cfg or {}).items():
        options = OmegaConf.to_container(options, resolve=True) if options is not None else {}
        if kind == "wandb":
            online = wandb_online()
            if not online:
                os.environ["WANDB_MODE"] = "offline"
            options["group"] = options.get("group") or group
            options["tags"] = list(dict.fromkeys([*(options.get("tags") or []), *tags]))
            loggers.append(WandbLogger(name=run_name, save_dir=str(run_dir), offline=not online, **options))
        elif kind == "tensorboard":
            loggers.append(TensorBoardLogger(save_dir=str(run_dir), name="tensorboard", version="", **options))
        elif kind != "csv":
            raise ConfigError(f"logger {kind!r} is unknown; choose logger=wandb, csv, tensorboard or none")
    return loggers


def log_hyperparameters(loggers: list[Logger], params: dict[str, Any]) -> None:
    for logger in loggers:
        logger.log_hyperparams(params)


def finish_wandb(loggers: list[Logger], failed: bool = False) -> None:
    """Close the W&B run so its file is complete and the next sweep job starts a new run."""
    for logger in loggers:
        if isinstance(logger, WandbLogger) and logger._experiment is not None:
            logger.experiment.finish(exit_code=1 if failed else 0)
