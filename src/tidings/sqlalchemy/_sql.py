"""Small SQL helpers shared by the outbox, inbox, leases and saga store."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from .._errors import ConfigurationError

__all__ = [
    "Executor", "OutsideTransactionError", "dialect_of", "in_transaction", "insert_if_absent",
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
