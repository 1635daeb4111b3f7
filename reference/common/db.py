"""Each service's own SQLite database, through SQLAlchemy's async engine (aiosqlite)."""

from __future__ import annotations

import asyncio
import contextvars
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite
from sqlalchemy import MetaData, event
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

__all__ = ["MAX_BATCH", "Database", "InlineConnection", "refuse_nesting"]

T = TypeVar("T")

#: The most units of work one group commit holds.
MAX_BATCH = 200

Work = Callable[[AsyncConnection], Awaitable[Any]]
Unit = tuple[Work, "asyncio.Future[Any]", contextvars.Context]

#: The flusher tasks running a unit of work of :meth:`Database.run` now (tasks a unit
#: starts are not in it: they run outside the unit, later).
_units: set[asyncio.Task[Any]] = set()


def refuse_nesting(what: str) -> None:
    """RuntimeError inside a unit of work of :meth:`Database.run`: a write of its own
    would wait for the transaction the unit runs in (a deadlock)."""
    if asyncio.current_task() in _units:
        raise RuntimeError(f"{what} inside a unit of work of Database.run would wait for "
                           "its own transaction: use the connection it was given")


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

    Writes go through :meth:`run` (group commit) or :meth:`write`, which serialise them
    inside the process, so a transaction never fails on a lock another of our own
    coroutines holds.
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
        self._queue: list[Unit] = []
        self._flusher: asyncio.Task[None] | None = None
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
        refuse_nesting("Database.write()")
        async with self.write_lock, self.engine.begin() as conn:
            yield conn

    async def run(self, work: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        """Run ``work(conn)`` in a write transaction and return its result once committed.

        Group commit: the units of work of every caller waiting meanwhile share one
        transaction and one COMMIT, each in its own savepoint, so one that raises rolls
        back only its own writes and raises to its own caller. Each runs with its
        caller's context variables (the handled message, for correlation ids). A unit of
        work must not wait on anything but its statements (the transaction stays open
        until it returns, and a writer outside the lock would block the loop in SQLite's
        busy handler) and must not start another write (RuntimeError: it would wait for
        itself). Cancelling the caller may still let its work commit. After-commit
        hooks registered by a unit whose savepoint rolled back still run when the group
        commits (here they only wake pollers).
        """
        refuse_nesting("Database.run()")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.append((work, future, contextvars.copy_context()))
        if self._flusher is None:
            # An empty context: each unit gets its caller's variables set around it.
            self._flusher = asyncio.create_task(self._flush(), name=f"commit {self.path.name}",
                                                context=contextvars.Context())
        return await future

    async def _flush(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
                try:
                    async with self.write_lock:
                        await self._commit(batch)
                except Exception as exc:  # nothing committed: every caller gets the error
                    for _, future, _ in batch:
                        if not future.done():
                            future.set_exception(exc)
                except BaseException:  # the flusher itself was cancelled
                    for _, future, _ in batch:
                        future.cancel()
                    raise
        finally:
            self._flusher = None
            if self._queue:  # cancelled with callers waiting: they must not hang
                for _, future, _ in self._queue:
                    future.cancel()
                self._queue.clear()

    async def _commit(self, batch: list[Unit]) -> None:
        results: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
        flusher = asyncio.current_task()
        assert flusher is not None
        async with self.engine.begin() as conn:
            raw = await _sqlite(conn)
            raw.execute("BEGIN IMMEDIATE")  # the driver would begin at the first write
            for work, future, context in batch:
                if future.done():  # its caller was cancelled before it ran
                    continue
                raw.execute("SAVEPOINT work")
                # Inline, never yielding to the loop with the transaction open: writers
                # outside our lock (the outbox relay) would then wait in SQLite's busy
                # handler, which blocks the loop. In the caller's context variables.
                tokens = [var.set(value) for var, value in context.items()]
                _units.add(flusher)
                try:
                    result = await work(conn)
                except Exception as exc:
                    raw.execute("ROLLBACK TO work")
                    results.append((future, None, exc))
                else:
                    results.append((future, result, None))
                finally:
                    _units.discard(flusher)
                    for token in reversed(tokens):
                        token.var.reset(token)
                raw.execute("RELEASE work")
        for future, result, error in results:  # committed: answer every caller
            if future.done():
                continue
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        """A read-only connection (sees the last committed state)."""
        async with self.engine.connect() as conn:
            yield conn

    async def close(self) -> None:
        """Close every pooled connection."""
        await self.engine.dispose()


async def _sqlite(conn: AsyncConnection) -> sqlite3.Connection:
    """The sqlite3 connection under ``conn`` (an :class:`InlineConnection`'s), for the
    savepoints of a group commit: cheap statements SQLAlchemy need not know about."""
    fairy = await conn.get_raw_connection()
    driver = fairy.driver_connection
    assert isinstance(driver, InlineConnection)
    assert driver._connection is not None
    return driver._connection
