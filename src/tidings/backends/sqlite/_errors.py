"""The one place where ``sqlite3`` exceptions become tidings exceptions.

``sqlite3.OperationalError`` (locked beyond ``busy_timeout``, disk full, I/O error),
``sqlite3.DatabaseError`` (not a database, corrupt file) and every other driver error
become :class:`~tidings.TransportError`; a database file that cannot be opened becomes
:class:`~tidings.BrokerUnavailableError`; a value beyond SQLite's length limit becomes
:class:`~tidings.MessageTooLargeError`. Errors tidings raises on purpose pass through.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

from ..._errors import (
    BrokerUnavailableError,
    MessageTooLargeError,
    TidingsError,
    TransportError,
)

__all__ = ["sqlite_errors"]


@contextmanager
def sqlite_errors(action: str, *, opening: bool = False) -> Iterator[None]:
    """Translate driver errors raised while doing ``action`` into tidings errors."""
    try:
        yield
    except TidingsError:
        raise
    except sqlite3.Error as exc:
        raise _translate(action, exc, opening) from exc


def _translate(action: str, exc: sqlite3.Error, opening: bool) -> TransportError:
    text = str(exc)
    if opening:
        return BrokerUnavailableError(f"cannot open the SQLite bus ({action}): {text}")
    if "too big" in text:
        return MessageTooLargeError(f"SQLite refused a record ({action}): {text}")
    if "locked" in text or "busy" in text:
        return TransportError(
            f"SQLite {action} failed: the database stayed locked by another connection "
            f"beyond busy_timeout ({text})"
        )
    if isinstance(exc, sqlite3.OperationalError):
        return TransportError(f"SQLite {action} failed: {text}")
    return TransportError(f"SQLite {action} failed ({type(exc).__name__}): {text}")
