"""Errors a user can cause. The command line turns these into a message and exit status 2."""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user: a message they can act on, never a traceback."""


class ScenarioError(UserError):
    """A scenario that cannot run: names the file and the key path."""

    def __init__(self, message: str, *, source: str | None = None, key_path: str | None = None):
        super().__init__(message)
        self.message = message
        self.source = source
        self.key_path = key_path

    @property
    def located(self) -> str:
        """The message with its key path in front (unless it starts with it already)."""
        if self.key_path and not self.message.startswith(self.key_path):
            return f"{self.key_path}: {self.message}"
        return self.message

    def __str__(self) -> str:
        return f"{self.source or 'scenario'}: {self.located}"


class DataError(UserError):
    """A data set that is missing, truncated or inconsistent; `key_path` names the scenario key to fix."""

    def __init__(self, message: str, *, key_path: str = "dataset"):
        super().__init__(message)
        self.key_path = key_path
