"""Errors that the command-line tools turn into one clear line and a non-zero exit."""

from __future__ import annotations


class HandReIDError(Exception):
    """Base class for user-facing errors (bad input, not bugs)."""


class ConfigError(HandReIDError):
    """A config value, key or file is wrong. ``key`` is the dotted path when known."""

    def __init__(self, message: str, key: str | None = None, source: str | None = None):
        self.message = message
        self.key = key
        self.source = source
        super().__init__(str(self))

    def at(self, prefix: str) -> ConfigError:
        key = f"{prefix}.{self.key}" if self.key else prefix
        return ConfigError(self.message, key=key, source=self.source)

    def in_file(self, source: str) -> ConfigError:
        return ConfigError(self.message, key=self.key, source=source)

    def __str__(self) -> str:
        where = f"{self.source}: " if self.source else ""
        key = f"{self.key}: " if self.key else ""
        return f"{where}{key}{self.message}"


class DataError(HandReIDError):
    """The dataset on disk is missing, malformed or incomplete."""
