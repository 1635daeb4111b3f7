"""Group commit: units of work arriving together share one transaction and one COMMIT.

A service's writes are small and many (a handler's inbox row, domain row and outbox row;
a saga's step), and a database spends most of a short transaction on its COMMIT (a WAL
append and, with PostgreSQL, a round trip and an fsync). :class:`GroupCommit` queues the
units of work of concurrent callers and runs every unit waiting meanwhile in one
transaction, each in its own savepoint, answering each caller once the COMMIT is done::

    commits = GroupCommit.of(engine)

    async def place(conn: AsyncConnection) -> str:
        await conn.execute(orders.insert().values(id="o-1"))
        return await outbox.publish(conn, "orders", {"id": "o-1"})

    message_id = await commits.run(place)   # committed when it returns

The outbox relay, the inbox, the saga store and the event store write through their
engine's group commit too, so on SQLite (one writer) every write of the process queues
in asyncio instead of spinning in SQLite's busy handler.
"""

from __future__ import annotations

import asyncio
import contextvars
import sqlite3
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from .._errors import ConfigurationError
from ._sql import AFTER_COMMIT
from ._sqlite import driver_sqlite

__all__ = ["GroupCommit"]

T = TypeVar("T")

Work = Callable[[AsyncConnection], Awaitable[Any]]
#: Writes many items of one kind at once: a result per item, in order (an exception
#: instance is raised to that item's caller).
BatchWrite = Callable[[AsyncConnection, list[Any]], Awaitable[list[Any]]]


@dataclass(frozen=True, slots=True)
class _Item:
    """A unit of work that is one item of a :data:`BatchWrite`."""

    write: BatchWrite
    item: Any


_Unit = tuple["Work | _Item", "asyncio.Future[Any]", contextvars.Context]

#: Each engine's one group commit (two would be two writers racing for SQLite's lock).
_OF: weakref.WeakKeyDictionary[sa.Engine, GroupCommit] = weakref.WeakKeyDictionary()


class GroupCommit:
    """The writer of one database: concurrent units of work share a transaction.

    Get an engine's with :meth:`of` (the toolkit's own writes use the same one). A unit
    of work is ``async def work(conn) -> result``; it runs with its caller's context
    variables, in a savepoint of its own, so one that raises rolls back only its writes
    and raises to its caller. It must wait on nothing but its statements (the shared
    transaction stays open until it returns) and must not start another write of this
    database (:class:`ConfigurationError`: it would wait for itself). At most
    ``max_batch`` units share one transaction.
    """

    def __init__(self, engine: AsyncEngine, *, max_batch: int = 200) -> None:
        if max_batch < 1:
            raise ConfigurationError("GroupCommit needs max_batch >= 1")
        self.engine = engine
        self.max_batch = max_batch
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = asyncio.Lock()
        self._queue: list[_Unit] = []
        self._flusher: asyncio.Task[None] | None = None
        self._in_unit = False
        self.commits = 0  #: transactions committed (groups, not units): for tests and metrics

    @classmethod
    def of(cls, engine: AsyncEngine) -> GroupCommit:
        """``engine``'s group commit, made on first use and shared by every caller."""
        commits = _OF.get(engine.sync_engine)
        if commits is None:
            commits = _OF[engine.sync_engine] = cls(engine)
        return commits

    def refuse_nesting(self, what: str) -> None:
        """Raise :class:`ConfigurationError` if called from inside a unit of work of this
        group commit: a write of its own would wait for the transaction it runs in."""
        if self._in_unit and asyncio.current_task() is self._flusher:
            raise ConfigurationError(
                f"{what} inside a unit of work of GroupCommit.run would wait for its own "
                "transaction: use the connection the unit was given")

    async def run(self, work: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        """Run ``work(conn)`` in a transaction shared with the units of work of other
        callers waiting meanwhile; return its result once that transaction committed.

        Cancelling the caller may still let its work commit. The toolkit's after-commit
        hooks a unit registered (a saga started ``within`` it) are dropped with its
        savepoint when it raises.
        """
        self.refuse_nesting("GroupCommit.run()")
        result: T = await self._enqueue(work)
        return result

    async def run_batched(self, write: BatchWrite, item: Any) -> Any:
        """Like :meth:`run`, for writes of one kind that cost less done together (one
        statement for many rows): every item of ``write`` waiting in a group is handed
        to one call ``write(conn, items)``, in one savepoint, which returns a result per
        item in order (an exception instance in it is raised to that item's caller; an
        exception raised by ``write`` goes to every caller of the call). ``write``
        must be the same object for items meant to share a call."""
        self.refuse_nesting("GroupCommit.run_batched()")
        return await self._enqueue(_Item(write, item))

    async def _enqueue(self, work: Work | _Item) -> Any:
        self._bind()
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append((work, future, contextvars.copy_context()))
        if self._flusher is None:
            # An empty context: each unit gets its caller's variables set around it.
            self._flusher = asyncio.create_task(self._flush(), name="tidings-group-commit",
                                                context=contextvars.Context())
        return await future

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        """A transaction of its own, between groups (for work that must wait on more than
        its statements): committed when the block exits, rolled back on error."""
        self.refuse_nesting("GroupCommit.transaction()")
        self._bind()
        async with self._lock, self.engine.begin() as conn:
            yield conn

    def _bind(self) -> None:
        # An engine may outlive an event loop (tests, a CLI): start afresh on a new one.
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            if self._flusher is not None or self._lock.locked():
                raise ConfigurationError("GroupCommit used from two event loops at once")
            self._loop, self._lock = loop, asyncio.Lock()

    async def _flush(self) -> None:
        try:
            while self._queue:
                batch = self._queue[:self.max_batch]
                del self._queue[:self.max_batch]
                try:
                    async with self._lock:
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
            for _, future, _ in self._queue:  # cancelled with callers waiting: no hang
                future.cancel()
            self._queue.clear()

    async def _commit(self, batch: list[_Unit]) -> None:
        results: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
        batched: dict[BatchWrite, list[tuple[Any, asyncio.Future[Any]]]] = {}
        async with self.engine.begin() as conn:
            savepoint = await _Savepoints.open(conn)
            for work, future, context in batch:
                if future.done():  # its caller was cancelled before it ran
                    continue
                if isinstance(work, _Item):
                    batched.setdefault(work.write, []).append((work.item, future))
                    continue
                results.append((future, *await self._unit(conn, savepoint, work, context)))
            for write, items in batched.items():
                results += await self._batch(conn, savepoint, write, items)
        self.commits += 1
        for future, result, error in results:  # committed: answer every caller
            if future.done():
                continue
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)

    async def _batch(self, conn: AsyncConnection, savepoint: _Savepoints, write: BatchWrite,
                     items: list[tuple[Any, asyncio.Future[Any]]],
                     ) -> list[tuple[asyncio.Future[Any], Any, BaseException | None]]:
        """One call of ``write`` for ``items``, in a savepoint: a result per caller."""
        futures = [future for _, future in items]
        await savepoint.begin()
        self._in_unit = True
        try:
            out = await write(conn, [item for item, _ in items])
            if len(out) != len(items):
                raise RuntimeError(f"{write!r} returned {len(out)} results for "
                                   f"{len(items)} items")
        except Exception as exc:
            await savepoint.rollback()
            return [(future, None, exc) for future in futures]
        finally:
            self._in_unit = False
        await savepoint.release()
        return [(future, None, result) if isinstance(result, BaseException)
                else (future, result, None) for future, result in zip(futures, out, strict=True)]

    async def _unit(self, conn: AsyncConnection, savepoint: _Savepoints, work: Work,
                    context: contextvars.Context) -> tuple[Any, BaseException | None]:
        await savepoint.begin()
        tokens = [var.set(value) for var, value in context.items()]
        hooks = conn.sync_connection.info.get(AFTER_COMMIT) if conn.sync_connection else None
        mark = len(hooks) if hooks is not None else 0
        self._in_unit = True
        try:
            result = await work(conn)
        except Exception as exc:
            await savepoint.rollback()
            hooks = conn.sync_connection.info.get(AFTER_COMMIT) if conn.sync_connection \
                else None
            if hooks:  # what the unit meant to do after the commit goes with its writes
                del hooks[mark:]
            return None, exc
        finally:
            self._in_unit = False
            for token in reversed(tokens):
                token.var.reset(token)
        await savepoint.release()
        return result, None


class _Savepoints:
    """SAVEPOINT / ROLLBACK TO / RELEASE around each unit: on the sqlite3 connection
    itself when the engine is a :func:`sqlite_engine` (three statements SQLAlchemy need
    not know about, at a microsecond each), straight on asyncpg for PostgreSQL, else
    through SQLAlchemy.

    On asyncpg a round trip costs far more than the statement, so the statements are
    sent together: a unit's RELEASE waits to go with the next unit's SAVEPOINT (the
    COMMIT releases the last one), and a rollback is one message too; the first
    SAVEPOINT goes through SQLAlchemy, which begins the transaction with it.
    """

    _UNIT = "SAVEPOINT tidings_unit"
    _RELEASE = "RELEASE SAVEPOINT tidings_unit"
    _ROLLBACK = "ROLLBACK TO SAVEPOINT tidings_unit"

    def __init__(self, conn: AsyncConnection, raw: sqlite3.Connection | None) -> None:
        self._conn = conn
        self._raw = raw
        self._asyncpg = conn.dialect.driver == "asyncpg"
        self._pg: Any = None  # the asyncpg connection, once the transaction has begun
        self._released = False  # a RELEASE not sent yet (asyncpg)

    @classmethod
    async def open(cls, conn: AsyncConnection) -> _Savepoints:
        raw = await driver_sqlite(conn)
        savepoints = cls(conn, raw)
        if conn.dialect.name == "sqlite":
            # Take the write lock now: a deferred transaction that upgrades later can
            # fail with SQLITE_BUSY midway through the group.
            await savepoints._execute("BEGIN IMMEDIATE")
        return savepoints

    async def _execute(self, sql: str) -> None:
        if self._raw is not None:
            self._raw.execute(sql)
        elif self._pg is not None:
            await self._pg.execute(sql)
        else:
            await self._conn.exec_driver_sql(sql)

    async def begin(self) -> None:
        if not self._asyncpg:
            await self._execute(self._UNIT)
        elif self._pg is None:
            # SQLAlchemy begins the transaction with it; asyncpg straight from then on
            # (a third of SQLAlchemy's cost per round trip).
            await self._conn.exec_driver_sql(self._UNIT)
            self._pg = (await self._conn.get_raw_connection()).driver_connection
        elif self._released:
            await self._execute(f"{self._RELEASE}; {self._UNIT}")
        else:
            await self._execute(self._UNIT)
        self._released = False

    async def rollback(self) -> None:
        if self._asyncpg:
            await self._execute(f"{self._ROLLBACK}; {self._RELEASE}")
            return
        await self._execute(self._ROLLBACK)
        await self._execute(self._RELEASE)

    async def release(self) -> None:
        if self._asyncpg:
            self._released = True  # sent with the next SAVEPOINT, or by the COMMIT
            return
        await self._execute(self._RELEASE)
