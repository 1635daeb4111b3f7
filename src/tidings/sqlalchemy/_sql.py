"""Small SQL helpers shared by the outbox, inbox, leases and saga store."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from .._errors import ConfigurationError

__all__ = [
    "AFTER_COMMIT", "Executor", "OutsideTransactionError", "after_commit", "dialect_of",
    "in_transaction", "insert_if_absent",
]

Executor = AsyncSession | AsyncConnection


class OutsideTransactionError(ConfigurationError):
    """The outbox, inbox or saga store was given a session or connection with no open
    transaction (or one on another database), so its write could never commit with
    the caller's."""


def in_transaction(executor: object, engine: AsyncEngine, what: str) -> Executor:
    """Check that ``executor`` is an AsyncSession or AsyncConnection inside a transaction
    on ``engine``'s database; return it."""
    if not isinstance(executor, AsyncSession | AsyncConnection):
        raise OutsideTransactionError(
            f"{what} needs an AsyncSession or AsyncConnection, not {type(executor).__name__}"
        )
    if not executor.in_transaction():
        raise OutsideTransactionError(
            f"{what} must run inside a transaction, so it commits with your writes: "
            "use 'async with session.begin():' (or 'async with engine.begin() as conn:')"
        )
    bind = executor.bind if isinstance(executor, AsyncSession) else executor.engine
    if isinstance(bind, AsyncConnection):
        bind = bind.engine
    if bind is not None and bind.url != engine.url:
        raise OutsideTransactionError(
            f"{what} got a transaction on {bind.url!r}, but its tables are in "
            f"{engine.url!r}: the write would not commit with yours"
        )
    return executor


def dialect_of(executor: Executor) -> str:
    """The SQL dialect's name (``sqlite``, ``postgresql``, ...)."""
    if isinstance(executor, AsyncConnection):
        return executor.dialect.name
    return executor.get_bind().dialect.name


async def insert_if_absent(executor: Executor, table: sa.Table,
                           values: Mapping[str, Any]) -> bool:
    """INSERT a row unless its primary key exists; return whether it was inserted.

    A concurrent insert of the same key waits for the other transaction (PostgreSQL
    locks the index entry; SQLite has one writer), so exactly one of them inserts.
    """
    dialect = dialect_of(executor)
    if dialect not in _UPSERTS:
        return await _insert_with_savepoint(executor, table, values)
    # One statement per (dialect, table), executed with new parameters: building it
    # again for every row costs more than the INSERT itself.
    statement = _IF_ABSENT.get((dialect, table))
    if statement is None:
        statement = _IF_ABSENT[dialect, table] = \
            _UPSERTS[dialect](table).on_conflict_do_nothing()
    result = await executor.execute(statement, dict(values))
    return bool(getattr(result, "rowcount", 0) == 1)


_UPSERTS: dict[str, Any] = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}
_IF_ABSENT: dict[tuple[str, sa.Table], Any] = {}


async def _insert_with_savepoint(executor: Executor, table: sa.Table,
                                 values: Mapping[str, Any]) -> bool:
    try:
        async with executor.begin_nested():
            await executor.execute(sa.insert(table).values(**values))
    except sa.exc.IntegrityError:
        return False
    return True


#: A connection's callbacks to run once its transaction commits (in ``info``): dropped on
#: a rollback, and by :class:`GroupCommit` when the unit that added them rolls back.
AFTER_COMMIT = "tidings.after_commit"


async def after_commit(executor: Executor, callback: Callable[[], None]) -> None:
    """Call ``callback`` once ``executor``'s transaction commits; never if it rolls back.
    One listener per engine, not one per transaction: adding a listener is costly."""
    conn = await executor.connection() if isinstance(executor, AsyncSession) else executor
    sync = conn.sync_connection
    if sync is None:
        return
    engine = sync.engine
    if not event.contains(engine, "commit", _committed):
        event.listen(engine, "commit", _committed)
        event.listen(engine, "rollback", _rolled_back)
        event.listen(engine, "savepoint", _savepoint)
        event.listen(engine, "rollback_savepoint", _rollback_savepoint)
    sync.info.setdefault(AFTER_COMMIT, []).append(callback)


def _committed(connection: sa.Connection) -> None:
    connection.info.pop(_MARKS, None)
    for callback in connection.info.pop(AFTER_COMMIT, ()):
        callback()


def _rolled_back(connection: sa.Connection) -> None:
    connection.info.pop(AFTER_COMMIT, None)
    connection.info.pop(_MARKS, None)


#: The number of callbacks when each SAVEPOINT (``begin_nested``) began, by name.
_MARKS = "tidings.after_commit.marks"


def _savepoint(connection: sa.Connection, name: str) -> None:
    connection.info.setdefault(_MARKS, {})[name] = len(connection.info.get(AFTER_COMMIT, ()))


def _rollback_savepoint(connection: sa.Connection, name: str, _context: object) -> None:
    # A nested transaction rolled back: so do the callbacks added inside it.
    mark = connection.info.get(_MARKS, {}).get(name)
    hooks = connection.info.get(AFTER_COMMIT)
    if mark is not None and hooks:
        del hooks[mark:]
