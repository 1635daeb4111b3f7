"""Errors of the rules engine, all in the one tidings tree.

::

    TidingsError
    └── ConfigurationError
        └── RuleError             a rule is invalid (a bad expression, an unknown field)
            └── RuleFileError     ... in a rule file: carries the file, the line, the reason

A file that fails to load leaves the rules it had before active; the error is logged
and kept in :attr:`RuleEngine.errors` until the file is fixed.
"""

from __future__ import annotations

from pathlib import Path

from .._errors import ConfigurationError

__all__ = ["RuleError", "RuleFileError"]


class RuleError(ConfigurationError):
    """A rule is invalid: an expression that does not parse, an unknown field or
    aggregate, a type mismatch, a bad action. ``path`` is where in the rule (e.g.
    ``("then", 0, "publish", "key")``); ``line_offset`` the line within a multi-line
    expression."""

    path: tuple[str | int, ...] = ()
    line_offset: int = 0

    def at(self, *path: str | int) -> RuleError:
        """Prefix ``path`` to where the error is; returns self."""
        self.path = (*path, *self.path)
        return self


class RuleFileError(RuleError):
    """A rule file cannot be loaded; ``file``, ``line`` (1-based, or None) and ``reason``
    say where and why."""

    def __init__(self, file: Path, line: int | None, reason: str) -> None:
        where = f"{file}:{line}" if line is not None else str(file)
        super().__init__(f"{where}: {reason}")
        self.file = file
        self.line = line
        self.reason = reason
