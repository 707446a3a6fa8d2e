"""The only private parts of Lightning that vaelab uses, in one place.

A replayed CUDA graph runs the optimiser update itself, so Lightning's `LightningOptimizer.step`
never runs and would not count the step (global_step, max_steps, the logging interval and the
checkpoints all follow that count). Lightning's manual-optimisation loop installs two hooks on the
optimizer wrapper, `_on_before_step` and `_on_after_step`, which do exactly that bookkeeping
around `step()`; `CountedStep` calls them around a step that Lightning does not see.

Lightning's WandbLogger keeps in private attributes what vaelab's WandbLogger (training/loggers.py)
needs to log into a checkpoint's W&B run: the arguments wandb.init will get (to set the run id
before the run starts), the run if it has started (without starting it), its record of the
checkpoint files already logged, the artifact name it was given, and its metric-key prefix. The
functions below are the only places that touch them.

The data module resumes a mid-epoch checkpoint from the training loop's count of the batches it
has trained on this epoch (`trained_batches`), which Lightning keeps in its loops' progress
objects, not in a public property.

A module of the lowest layer (it imports nothing of vaelab), so that data/ and training/ both
reach Lightning's private parts through it. Tests in tests/test_training_step.py,
tests/test_wandb_resume.py and tests/test_data.py fail with a clear message when
a Lightning upgrade drops any of them; pyproject.toml pins pytorch-lightning to the minor version
tested.
"""

from typing import Any, Optional

import pytorch_lightning as pl
from lightning_fabric.utilities.logger import _add_prefix
from pytorch_lightning.core.optimizer import LightningOptimizer
from pytorch_lightning.loggers import WandbLogger

PRIVATE_HOOKS = ("_on_before_step", "_on_after_step")


def missing_hooks(optimizer: LightningOptimizer) -> list[str]:
    return [name for name in PRIVATE_HOOKS if not callable(getattr(optimizer, name, None))]


class CountedStep:
    """`with counted_step:` counts the optimiser step taken inside as Lightning counts its own.

    Made once per fit (the hooks are checked then) and entered once per step: a plain class,
    since a replayed graph step takes a fraction of a millisecond of host time.
    """

    def __init__(self, optimizer: LightningOptimizer):
        missing = missing_hooks(optimizer)
        if missing:
            raise RuntimeError(f"pytorch-lightning {pl.__version__} has no LightningOptimizer.{', '.join(missing)}; "
                               f"the CUDA-graph step needs them (vaelab/lightning_compat.py): "
                               f"use model.cuda_graph=false or the pytorch-lightning version pinned in pyproject.toml")
        self.optimizer = optimizer

    def __enter__(self) -> None:
        self.optimizer._on_before_step()

    def __exit__(self, *exc_info) -> None:
        self.optimizer._on_after_step()


WANDB_LOGGER_PRIVATE = ("_wandb_init", "_experiment", "_logged_model_time", "_checkpoint_name", "_prefix", "_id")


def missing_wandb_attributes(logger: WandbLogger) -> list[str]:
    return [name for name in WANDB_LOGGER_PRIVATE if not hasattr(logger, name)]


def wandb_init_arguments(logger: WandbLogger) -> dict[str, Any]:
    """The keyword arguments the logger will pass to wandb.init (the dict itself: changes count)."""
    return logger._wandb_init


def set_wandb_run_id(logger: WandbLogger, run_id: str) -> None:
    """Log into the W&B run `run_id` (before the run starts)."""
    logger._id = logger._wandb_init["id"] = run_id


def started_wandb_run(logger: WandbLogger) -> Optional[Any]:
    """The logger's W&B run if it has started, without starting it (`logger.experiment` would)."""
    return logger._experiment


def logged_checkpoint_times(logger: WandbLogger) -> dict[str, float]:
    """Lightning's record of the checkpoint files logged as artifacts: path → modification time."""
    return logger._logged_model_time


def artifact_name(logger: WandbLogger) -> Optional[str]:
    """The checkpoint artifact's name given to the logger (`checkpoint_name`), if any."""
    return logger._checkpoint_name


def logged_keys(logger: WandbLogger, metrics: dict[str, Any]) -> frozenset[str]:
    """The keys under which `logger.log_metrics(metrics)` records the values (its prefix added)."""
    return frozenset(_add_prefix(dict(metrics), logger._prefix, logger.LOGGER_JOIN_CHAR))


def trained_batches(trainer: pl.Trainer) -> int:
    """The training batches the fit loop has completed in the current epoch (what a mid-epoch
    checkpoint has seen): `fit_loop.epoch_loop.batch_progress.current.completed`."""
    return trainer.fit_loop.epoch_loop.batch_progress.current.completed


def missing_loop_attributes(trainer: pl.Trainer) -> list[str]:
    """The parts of `trained_batches`'s path that this Lightning's Trainer lacks."""
    node, missing = trainer, []
    for name in ("fit_loop", "epoch_loop", "batch_progress", "current", "completed"):
        if not hasattr(node, name):
            missing.append(name)
            break
        node = getattr(node, name)
    return missing
