"""Each service's own SQLite database: the toolkit's :func:`~tidings.sqlalchemy.sqlite_engine`
and its :class:`~tidings.sqlalchemy.GroupCommit`, as any user of tidings would set them up."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TypeVar

from sqlalchemy import MetaData
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tidings.sqlalchemy import GroupCommit, sqlite_engine

__all__ = ["Database"]

T = TypeVar("T")


class Database:
    """A service's database: one writer at a time (SQLite allows no more), many readers.

    Writes go through the engine's group commit (:meth:`run`, or :meth:`write` for a
    transaction of its own), so a transaction never waits on a lock another of our own
    coroutines holds; the toolkit's outbox relay, inbox and saga store write through it
    too.
    """

    def __init__(self, path: Path, metadata: MetaData) -> None:
        self.path = path
        self.metadata = metadata
        self.engine: AsyncEngine = sqlite_engine(path)
        self.commits = GroupCommit.of(self.engine)
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
        """A write transaction of its own: committed when the block exits, rolled back on
        error."""
        async with self.commits.transaction() as conn:
            yield conn

    async def run(self, work: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        """Run ``work(conn)`` in a write transaction shared with the other units of work
        waiting meanwhile (group commit); its result once committed."""
        return await self.commits.run(work)

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        """A read-only connection (sees the last committed state)."""
        async with self.engine.connect() as conn:
            yield conn

    async def close(self) -> None:
        """Close every pooled connection."""
        await self.engine.dispose()
