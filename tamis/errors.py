"""The one exception family of tamis.

Every error that a caller can act on is a :class:`TamisError`. Messages say what was
seen, what was expected and how to fix it; the CLI prints the message as one line and
exits with code 2.
"""

from __future__ import annotations


class TamisError(Exception):
    """Base class of every error tamis raises on purpose."""


class InputError(TamisError, ValueError):
    """The store (a file, a directory or in-memory data) cannot be used as given."""


class ConfigError(TamisError, ValueError):
    """A parameter or option has a value tamis does not accept."""


class DeviceError(TamisError, RuntimeError):
    """The requested compute device cannot be used."""


class PairLimitError(ConfigError):
    """A threshold gives more pairs than the scan's pair budget (``max_pairs``) allows."""

    def __init__(self, message: str, threshold: float, limit: int):
        super().__init__(message)
        self.threshold = threshold
        self.limit = limit


class OutputError(TamisError, OSError):
    """The report cannot be written where it was asked for (no permission, a full disk, a folder
    another scan is writing)."""


__all__ = ["TamisError", "InputError", "ConfigError", "DeviceError", "OutputError", "PairLimitError"]
