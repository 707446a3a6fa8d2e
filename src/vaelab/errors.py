"""Errors that reach the user as one readable line (see `vaelab.cli.report_errors`)."""


class VaelabError(Exception):
    """Base class: the message names the problem and the fix; no traceback is shown."""


class ConfigError(VaelabError, ValueError):
    """An impossible configuration value, found before any training starts."""


class DataError(VaelabError):
    """Data that is missing, unreachable or corrupt."""


class NonFiniteLossError(VaelabError, FloatingPointError):
    """The training loss became NaN or infinite."""
