"""What the entry points share: quiet known noise, check the config first, and turn VaelabErrors
into one clear line."""

import functools
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig

from vaelab.errors import VaelabError
from vaelab.rundir import is_relaunched_rank, refuse_earlier_run
from vaelab.sweeps.jobs import describe_error, in_multirun, is_sweep_job, record_failure, run_sweep_job

log = logging.getLogger("vaelab")

# Printed by every Lightning process on these versions; nothing a user can act on.
_NOISE_WARNINGS = (r".*LeafSpec.*",)
_NOISE_LOG_FRAGMENTS = ("litlogger", "LitLogger")


class _DropFragments(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(fragment in message for fragment in _NOISE_LOG_FRAGMENTS)


def silence_known_noise() -> None:
    for pattern in _NOISE_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    for name in ("pytorch_lightning.utilities.rank_zero", "lightning_fabric.utilities.rank_zero"):
        logging.getLogger(name).addFilter(_DropFragments())


def refuse_used_run_dir(argv: list[str]) -> None:
    """Exit before Hydra writes `.hydra/` if an explicit `hydra.run.dir` holds an earlier run.

    Default run directories are unique to the microsecond; only an explicit one can collide.
    """
    for arg in argv:
        key, _, value = arg.partition("=")
        if key.lstrip("+") == "hydra.run.dir" and value:
            try:
                refuse_earlier_run(Path(value.strip("\"'")))
            except VaelabError as err:
                print(f"error: {err}", file=sys.stderr)
                sys.exit(2)


def report_errors(check: Callable[[DictConfig], None]):
    """Wrap a Hydra task function: `check(cfg)` first, then the task.

    A single run that fails with a VaelabError (a value the check refuses, missing data, a NaN
    loss) ends with its message and exit code 2. A multirun job's failure is logged and recorded
    and the sweep goes on (see `vaelab.sweeps.jobs`).
    """
    # The script that a multi-device sweep job reruns as its own process (vaelab.sweeps.jobs);
    # taken now, in the launching process: joblib's and submitit's workers run other scripts.
    entry_point = os.path.abspath(sys.argv[0])

    def decorate(task: Callable[[DictConfig], Any]) -> Callable[[DictConfig], Any]:
        @functools.wraps(task)
        def wrapper(cfg: DictConfig) -> Any:
            if in_multirun():
                return run_sweep_job(check, task, cfg, entry_point)
            try:
                check(cfg)
                return task(cfg)
            except Exception as err:
                if is_sweep_job():  # the own process of a multi-device sweep job: the sweep reads this
                    record_failure(cfg, describe_error(err))
                if not isinstance(err, VaelabError):
                    raise
                if not is_relaunched_rank():
                    log.error("%s", err)
                sys.exit(2)

        return wrapper

    return decorate
