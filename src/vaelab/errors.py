"""Errors that reach the user as one readable line (see `vaelab.tasks.cli.report_errors`)."""

from typing import Any


class VaelabError(Exception):
    """Base class: the message names the problem and the fix; no traceback is shown."""


class ConfigError(VaelabError, ValueError):
    """An impossible configuration value, found before any training starts."""


class DataError(VaelabError):
    """Data that is missing, unreachable or corrupt."""


class NonFiniteLossError(VaelabError, FloatingPointError):
    """The training loss became NaN or infinite, or grew by orders of magnitude (diverged)."""


class CheckpointError(VaelabError):
    """A checkpoint that is missing, unreadable, unsafe, or of another model than the run's."""


class DiskFullError(VaelabError, OSError):
    """A file could not be written for lack of space; the file it would have replaced is intact."""


class RunInterrupted(VaelabError):
    """SIGTERM or SIGINT stopped the run after it saved a resumable checkpoint.

    `exit_code` is the shell's convention for the signal (128 + its number), so that a scheduler
    and a sweep see the job as stopped, not done.
    """

    def __init__(self, message: str, signal_number: int):
        super().__init__(message)
        self.exit_code = 128 + signal_number


def show(value: Any) -> str:
    """A config value as one writes it on the command line: null, true, [0,1], 0.001."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(show(v) for v in value) + "]"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def refused(key: str, value: Any, requirement: str) -> ConfigError:
    """The one wording of every config rule: `<key>=<value> must be <requirement>`."""
    return ConfigError(f"{key}={show(value)} must be {requirement}")
