"""Each service's own SQLite database, through SQLAlchemy's async engine (aiosqlite)."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiosqlite
from sqlalchemy import MetaData, event
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

__all__ = ["Database", "InlineConnection"]


class InlineConnection(aiosqlite.Connection):
    """An aiosqlite connection that runs each SQLite call in the event loop's thread.

    aiosqlite hands every call (cursor, execute, fetch, close, commit) to a worker
    thread and back: four thread switches per statement, which cost more CPU than the
    statement itself on a small machine. A service's database is a local WAL file that
    only this process opens, where a call takes microseconds and a commit does not sync
    (``synchronous=NORMAL``), so running the calls inline is cheaper and, since no
    transaction ever yields to the loop midway, never waits on a lock we hold ourselves.
    The worker thread still opens and closes the connection.
    """

    async def _execute(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if not self._running or not self._connection:
            raise ValueError("Connection closed")
        return fn(*args, **kwargs)


def _inline_creator(path: Path) -> Callable[[], Awaitable[aiosqlite.Connection]]:
    def connector() -> sqlite3.Connection:
        return sqlite3.connect(str(path), check_same_thread=False)

    async def create() -> aiosqlite.Connection:
        connection = InlineConnection(connector, 64)
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


class Database:
    """A service's database: one writer at a time (SQLite allows no more), many readers.

    Writes go through :meth:`write`, which serialises them inside the process, so a
    transaction never fails on a lock another of our own coroutines holds.
    """

    def __init__(self, path: Path, metadata: MetaData) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.metadata = metadata
        self.engine: AsyncEngine = create_async_engine(
            f"sqlite+aiosqlite:///{path}", async_creator=_inline_creator(path),
            pool_size=4, max_overflow=4,
        )
        event.listen(self.engine.sync_engine, "connect", _pragmas)
        self.write_lock = asyncio.Lock()
        self._on_create: list[Callable[[AsyncEngine], Awaitable[None]]] = []

    def on_create(self, hook: Callable[[AsyncEngine], Awaitable[None]]) -> None:
        """Also run ``hook(engine)`` when the tables are created (other packages' tables)."""
        self._on_create.append(hook)

    async def create(self) -> None:
        """Create the tables that do not exist yet."""
        async with self.engine.begin() as conn:
            await conn.run_sync(self.metadata.create_all)
        for hook in self._on_create:
            await hook(self.engine)

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """A write transaction: committed when the block exits, rolled back on error."""
        async with self.write_lock, self.engine.begin() as conn:
            yield conn

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        """A read-only connection (sees the last committed state)."""
        async with self.engine.connect() as conn:
            yield conn

    async def close(self) -> None:
        """Close every pooled connection."""
        await self.engine.dispose()
