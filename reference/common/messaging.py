"""Exactly-once effects with the consistency toolkit (``tidings.sqlalchemy``).

A handler's domain writes, the inbox row of the message it handles and the outbox rows
of the messages it emits commit in one SQLite transaction. A redelivered message is
skipped by the :class:`~tidings.sqlalchemy.Inbox`; an emitted message reaches the bus
through the :class:`~tidings.sqlalchemy.Outbox` relay only once its transaction has
committed, under an id fixed when it was recorded, so a relay that dies between publish
and delete re-publishes a copy the consumer's inbox drops.

SQLite has one writer. Every write goes through the database's
:class:`~tidings.sqlalchemy.GroupCommit`, so writes queue in asyncio instead of spinning
in SQLite's busy handler, and units of work arriving together (concurrent requests, a
consumer's concurrent handlers) share one transaction, each in its own savepoint, and
one COMMIT.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TypeVar

from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from tidings import App, Message
from tidings.sqlalchemy import Inbox, Outbox, create_tables, inbox_table

from .db import Database

__all__ = ["Tx", "UnitOfWork"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Tx:
    """One unit of work: its connection, and the outbox its messages go to."""

    conn: AsyncConnection
    outbox: Outbox

    async def emit(self, topic: str, event: BaseModel, *, key: str | None) -> None:
        """Publish ``event`` if, and only if, this transaction commits."""
        await self.outbox.publish(self.conn, topic, event, key=key)


class UnitOfWork:
    """Transactions with the toolkit's outbox and inboxes, on one service database."""

    def __init__(self, db: Database, bus: App) -> None:
        self.db = db
        self.outbox = Outbox(db.engine)
        self.outbox.relay(bus, interval=0.2, batch=500)
        self._inboxes: dict[str, Inbox] = {}
        db.on_create(create_tables)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Tx]:
        """A write transaction whose emitted messages join the outbox in the same commit
        (a transaction of its own: :meth:`run` is cheaper)."""
        async with self.db.write() as conn:
            yield Tx(conn, self.outbox)

    async def run(self, work: Callable[[Tx], Awaitable[T]]) -> T:
        """Run ``work`` in a write transaction (group-committed with others); its result
        once committed. Its emitted messages join the outbox in the same commit."""
        outbox = self.outbox
        return await self.db.run(lambda conn: work(Tx(conn, outbox)))

    def inbox(self, consumer: str) -> Inbox:
        """The inbox of ``consumer`` (one per subscription that handles messages once)."""
        inbox = self._inboxes.get(consumer)
        if inbox is None:
            inbox = self._inboxes[consumer] = Inbox(self.db.engine, consumer)
        return inbox

    async def prune_inboxes(self, older_than: float) -> int:
        """Forget, in every consumer's inbox, the messages handled more than
        ``older_than`` seconds ago; how many rows went."""
        async with self.db.read() as conn:
            consumers = (await conn.scalars(select(inbox_table.c.consumer).distinct())).all()
        return sum([await self.inbox(c).prune(older_than) for c in consumers])

    async def handle(self, message: Message, consumer: str,
                     work: Callable[[Tx], Awaitable[T]]) -> T | None:
        """Run ``work`` for ``message`` once per ``consumer``, in one transaction with the
        inbox row; return its result, or None if ``consumer`` handled it before."""
        inbox = self.inbox(consumer)
        outbox = self.outbox
        # A plain connection, not an ORM session per message: far less CPU.
        return await inbox.handle(message, lambda conn: work(Tx(conn, outbox)))
