"""An async engine for a service's own SQLite file, whose calls run in the loop's thread.

aiosqlite hands every call (cursor, execute, fetch, close, commit) to a worker thread
and back: four thread switches per statement, which cost more CPU than the statement
itself on a small machine. A service's database is a local WAL file that one process
writes, where a call takes microseconds and a commit does not sync
(``synchronous=NORMAL``), so :func:`sqlite_engine` runs the calls inline instead. Its
writes must then go through the engine's :class:`~tidings.sqlalchemy.GroupCommit`
(the toolkit's own writes do): a transaction that waited on SQLite's lock would wait in
the event loop's thread.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosqlite
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from .._errors import ConfigurationError
from .._private import private_file

__all__ = ["driver_sqlite", "execute_dml", "read_only_db_url", "sqlite_engine"]


class _InlineConnection(aiosqlite.Connection):
    """An aiosqlite connection that runs each call in the event loop's thread; its
    worker thread still opens and closes the connection.

    aiosqlite routes every call through ``_execute``; tests/consistency pin that, so an
    aiosqlite that changes it fails the suite instead of silently going slow.
    """

    async def _execute(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if not self._running or not self._connection:
            raise ValueError("Connection closed")
        return fn(*args, **kwargs)


def _creator(path: Path) -> Callable[[], Awaitable[aiosqlite.Connection]]:
    def connector() -> sqlite3.Connection:
        return sqlite3.connect(str(path), check_same_thread=False)

    async def create() -> aiosqlite.Connection:
        connection = _InlineConnection(connector, 64)
        connection._thread.daemon = True
        return await connection

    return create


def _pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets readers run beside the writer; NORMAL is durable across a process kill.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def sqlite_engine(path: str | Path, *, pool_size: int = 4, max_overflow: int = 4,
                  **kwargs: Any) -> AsyncEngine:
    """An :class:`~sqlalchemy.ext.asyncio.AsyncEngine` on the SQLite file ``path`` for one
    process's service database: WAL, ``synchronous=NORMAL`` (durable across a process
    kill), foreign keys on, and each call run in the event loop's thread. A new file is
    created readable by its owner only (0600, its folders 0700).

    Write through :meth:`GroupCommit.of(engine) <tidings.sqlalchemy.GroupCommit.of>`
    (``run`` or ``transaction``); reads may use the engine directly. ``kwargs`` go to
    :func:`~sqlalchemy.ext.asyncio.create_async_engine`.
    """
    path = Path(path)
    private_file(path)  # 0600 (and so its -wal and -shm) in a 0700 folder
    engine = create_async_engine(f"sqlite+aiosqlite:///{path}", async_creator=_creator(path),
                                 pool_size=pool_size, max_overflow=max_overflow, **kwargs)
    event.listen(engine.sync_engine, "connect", _pragmas)
    return engine


async def driver_sqlite(conn: AsyncConnection) -> sqlite3.Connection | None:
    """The sqlite3 connection under ``conn`` if it is a :func:`sqlite_engine`'s, else None."""
    if conn.dialect.name != "sqlite":
        return None
    sync = conn.sync_connection
    try:  # the pooled connection, held already: no need to go through a greenlet
        fairy = sync.connection if sync is not None else await conn.get_raw_connection()
    except Exception:  # invalidated: let SQLAlchemy reconnect it
        fairy = await conn.get_raw_connection()
    driver = fairy.driver_connection
    if not isinstance(driver, _InlineConnection) or driver._connection is None:
        return None
    return driver._connection


@dataclass(frozen=True, slots=True)
class _Compiled:
    """A statement compiled once for SQLite."""

    sql: str
    names: tuple[str, ...]  #: the bind names, in order
    #: The values of the binds the statement fixed itself (``status == "PENDING"``).
    fixed: dict[str, Any]
    #: The Python-side ``default`` (INSERT) or ``onupdate`` (UPDATE) of each column the
    #: values leave out, computed per row as SQLAlchemy does.
    defaults: tuple[tuple[str, Any], ...]

    def params(self, row: dict[str, Any]) -> list[Any]:
        """The positional parameters for ``row``."""
        if self.fixed or self.defaults:
            row = {**self.fixed, **row}  # a copy: the caller's row stays as it is
            for name, default in self.defaults:
                if name not in row:
                    row[name] = default.arg if default.is_scalar else \
                        default.arg(_DefaultContext(row))
        return [row[n] for n in self.names]


class _DefaultContext:
    """What a context-sensitive default function gets here: the row's parameters."""

    def __init__(self, row: dict[str, Any]) -> None:
        self.current_parameters = row

    def get_current_parameters(self, isolate_multiinsert_groups: bool = True) -> dict[str, Any]:
        return self.current_parameters


#: Statements compiled once for SQLite (None: one with a default computed in SQL before
#: it runs, left to ``conn.execute``).
_COMPILED: dict[Any, _Compiled | None] = {}
_UNCOMPILED = object()  # not in _COMPILED (None is a value there)
#: More than this many means statements are built per call: start the cache afresh
#: rather than let it grow (they still run, compiled each time).
_MAX_COMPILED = 1000


def _compiled(statement: Any, conn: AsyncConnection, keys: tuple[str, ...]) -> _Compiled | None:
    key = (statement, keys)
    cached = _COMPILED.get(key, _UNCOMPILED)
    if cached is not _UNCOMPILED:
        return cached  # type: ignore[return-value]
    if len(_COMPILED) >= _MAX_COMPILED:
        _COMPILED.clear()
    # An INSERT names the columns it is given; an UPDATE has its bind parameters.
    columns = list(keys) if statement.is_insert else None
    compiled = statement.compile(dialect=conn.dialect, column_keys=columns)
    names = tuple(compiled.positiontup or ())
    defaults: list[tuple[str, Any]] = []
    found: _Compiled | None = None
    for column in [*compiled.insert_prefetch, *compiled.update_prefetch]:
        default = column.default if statement.is_insert else column.onupdate
        if default is None or not (default.is_scalar or default.is_callable):
            break  # a SQL expression or a sequence to run first: SQLAlchemy's path
        defaults.append((column.key, default))
    else:
        binds = compiled.binds
        computed = {name for name, _ in defaults}
        fixed = {name: binds[name].effective_value for name in names
                 if name not in keys and name not in computed and name in binds
                 and not binds[name].required}
        found = _Compiled(str(compiled), names, fixed, tuple(defaults))
    _COMPILED[key] = found
    return found


async def execute_dml(conn: AsyncConnection, statement: Any,
                      values: dict[str, Any] | list[dict[str, Any]]) -> int:
    """Execute an INSERT, UPDATE or DELETE ``statement`` with ``values`` (a list: one
    execution per row); return the number of rows it changed (for a list, -1 where the
    driver does not count them: asyncpg).

    For a service's hot paths: build the statement once, at import or in ``__init__``
    (its bind parameters named with :func:`~sqlalchemy.bindparam`, none expanding), and
    run it with new values each time::

        _finish = update(orders).where(orders.c.id == bindparam("oid"),
                                       orders.c.status == "PENDING"
                                       ).values(status=bindparam("new_status"))

        async def finish(conn: AsyncConnection, order_id: str) -> bool:
            return await execute_dml(conn, _finish, {"oid": order_id,
                                                     "new_status": "DONE"}) == 1

    On a :func:`sqlite_engine` connection it runs on the sqlite3 connection itself, the
    statement compiled once per set of value names: SQLAlchemy's execution machinery
    costs several times the statement there. On any other connection it is an ordinary
    ``conn.execute(statement, values)``. It joins the transaction of ``conn`` either way
    (a :class:`GroupCommit` unit's, say). Python-side ``default``/``onupdate`` values of
    the columns ``values`` leave out are computed per row on both paths; a statement
    with a default SQL computes before it runs goes through ``conn.execute``.
    """
    raw = await driver_sqlite(conn)
    compiled = None if raw is None else _compiled(
        statement, conn, tuple(values[0] if isinstance(values, list) else values))
    if raw is None or compiled is None:
        return int((await conn.execute(statement, values)).rowcount)
    if isinstance(values, list):
        return raw.executemany(compiled.sql, [compiled.params(row) for row in values]).rowcount
    return raw.execute(compiled.sql, compiled.params(values)).rowcount


async def insert_returning(conn: AsyncConnection, statement: Any,
                           rows: list[dict[str, Any]]) -> list[Any]:
    """Execute an ``INSERT … RETURNING <one column>`` built once for each of ``rows``;
    the returned values in the rows' order.

    On a :func:`sqlite_engine` connection each row runs on the sqlite3 connection itself
    (compiled once, as :func:`execute_dml`); elsewhere it is one ``conn.execute`` of them all,
    whose RETURNING must then keep the rows' order (``sort_by_parameter_order``).
    """
    raw = await driver_sqlite(conn)
    compiled = None if raw is None else _compiled(statement, conn, tuple(rows[0]))
    if raw is None or compiled is None:
        return list((await conn.execute(statement, rows)).scalars())
    return [raw.execute(compiled.sql, compiled.params(row)).fetchone()[0] for row in rows]


def read_only_db_url(url: str) -> str:
    """A SQLite database ``url`` as SQLite's read-only URI (``mode=ro``: nothing is
    created or written; a missing file is a :class:`~tidings.ConfigurationError`), for
    looking only. Other databases are unchanged."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return url
    path = Path(str(parsed.database)).expanduser().absolute()
    if not path.is_file():
        raise ConfigurationError(f"no database at {path} (inspecting creates none)")
    return parsed.set(database=f"file:{path}", query={"mode": "ro", "uri": "true"}
                      ).render_as_string(hide_password=False)
