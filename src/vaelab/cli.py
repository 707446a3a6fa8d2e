"""What the entry points share: quiet known noise, and turn VaelabErrors into one clear line."""

import functools
import logging
import sys
import warnings
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

from vaelab.errors import VaelabError
from vaelab.rundir import is_relaunched_rank, refuse_earlier_run

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


def _in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def report_errors(task):
    """Wrap a Hydra task function: a VaelabError ends a single run with its message and exit code 2."""

    @functools.wraps(task)
    def wrapper(cfg):
        try:
            return task(cfg)
        except VaelabError as err:
            if not is_relaunched_rank():
                log.error("%s", err)
            if _in_multirun():
                raise
            sys.exit(2)

    return wrapper
