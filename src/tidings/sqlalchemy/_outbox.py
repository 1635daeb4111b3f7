"""The transactional outbox: events recorded in the service's own database transaction.

``await outbox.publish(session, topic, payload)`` inserts a row into ``tidings_outbox``
through the caller's open transaction, so the event exists iff the caller's writes
commit. A relay (:meth:`Outbox.relay`) later appends the rows to the bus and deletes
them: at least once, in order per key, each with the message id it got when recorded.
An event larger than the bus accepts is refused when recorded (``MessageTooLargeError``,
in the caller's transaction, which then rolls back), not found out by the relay later.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from .._message import Headers
from .._outgoing import Delay, make_record
from .._records import OutRecord, check_record_bytes
from ._outbox_dead import OutboxDeadLetters
from ._schema import outbox_table
from ._sql import Executor, in_transaction
from ._sqlite import execute_dml

if TYPE_CHECKING:
    from .._app import App
    from ._relay import OutboxRelay

__all__ = ["Outbox"]



class Outbox:
    """Events to publish, recorded in the same transaction as the service's writes.

    ``engine`` is the service's database; the ``tidings_outbox`` and
    ``tidings_outbox_dead`` tables must exist (:func:`~tidings.sqlalchemy.create_tables`
    or your migrations). ``max_record_bytes`` is the largest event :meth:`publish`
    records; by default the relaying app's bus's limit
    (:attr:`~tidings.ports.Transport.max_record_bytes`), once :meth:`relay` was called.
    """

    def __init__(self, engine: AsyncEngine, *, max_record_bytes: int | None = None) -> None:
        self.engine = engine
        self.max_record_bytes = max_record_bytes
        self._wake: asyncio.Event | None = None
        self._app: App | None = None  # the relaying app, whose middleware stamps rows
        # Once per engine, not per transaction: adding a listener is costly. A commit on
        # a connection that recorded an event wakes the relay; a rollback forgets it.
        self._flag = f"tidings.outbox.{id(self)}"
        event.listen(engine.sync_engine, "commit", self._committed)
        event.listen(engine.sync_engine, "rollback", self._rolled_back)

    async def publish(
        self,
        transaction: AsyncSession | Executor,
        topic: str,
        payload: Any,
        *,
        key: str | None = None,
        headers: Mapping[str, str] | None = None,
        delay: Delay = None,
    ) -> str:
        """Record an event in ``transaction`` (an ``AsyncSession`` or ``AsyncConnection``
        inside a transaction on this outbox's database); return its message id.

        Nothing is sent now: the relay publishes it after the transaction commits, and
        never if it rolls back. Bad input (no open transaction, an invalid topic, a
        payload JSON cannot hold, a header in the reserved ``tidings-`` namespace, an
        event over ``max_record_bytes``: ``MessageTooLargeError``) raises here, before
        anything is written; the caller's transaction then rolls back.
        """
        return await self._record(transaction, topic, payload, key=key, headers=headers,
                                  delay=delay)

    async def _record(
        self, transaction: AsyncSession | Executor, topic: str, payload: Any, *,
        key: str | None = None, headers: Mapping[str, str] | None = None,
        reserved: Mapping[str, str] | None = None, delay: Delay = None,
    ) -> str:
        """``publish`` with the runtime's own ``reserved`` headers (an event store's
        event id and stream, a rule's name), which a caller's ``headers`` may not hold."""
        executor = in_transaction(transaction, self.engine, "outbox.publish")
        # Built now, in the caller's transaction, so the handled message's correlation
        # and causation ids (and, through the relaying app's middleware, the caller's
        # trace context) are kept although the relay publishes it later.
        record = make_record(topic, payload, key, headers, delay, None, reserved)
        if self._app is not None:
            await self._app._stamp([record])
        limit = self.max_record_bytes or (
            self._app.transport.max_record_bytes if self._app is not None else None)
        if limit is not None:
            check_record_bytes([record], limit, "the outbox's bus")
        row = _row(record)
        connection = await executor.connection() if isinstance(executor, AsyncSession) \
            else executor
        await execute_dml(connection, _INSERT, row)  # on sqlite_engine: the sqlite3 connection
        if connection.sync_connection is not None:
            connection.sync_connection.info[self._flag] = True
        return str(row["message_id"])

    def relay(self, app: App, *, interval: float = 0.05, batch: int = 200,
              lease: float = 5.0) -> OutboxRelay:
        """Relay this outbox to the bus through ``app`` while ``app`` runs.

        One relay per database is active at a time (it holds a lease of ``lease``
        seconds); the others stand by and take over when it stops or dies. It looks for
        new rows every ``interval`` seconds, at once after a commit in this process.
        """
        from ._relay import OutboxRelay

        relay = OutboxRelay(self, app, interval=interval, batch=batch, lease=lease)
        self._app = app
        app.on_startup(relay.start)
        app.on_shutdown(relay.stop)
        return relay

    def dead_letters(self) -> OutboxDeadLetters:
        """The rows the relay could never send (see ``tidings outbox dead``)."""
        return OutboxDeadLetters(self.engine)

    async def pending(self) -> int:
        """How many recorded events the relay has not published yet."""
        async with self.engine.connect() as conn:
            count = await conn.scalar(sa.select(sa.func.count()).select_from(outbox_table))
        return int(count or 0)

    async def oldest_age(self) -> float | None:
        """Seconds since the oldest unpublished event was recorded, or None."""
        query = sa.select(sa.func.min(outbox_table.c.created_at))
        async with self.engine.connect() as conn:
            oldest = await conn.scalar(query)
        return None if oldest is None else max(time.time() - float(oldest), 0.0)

    def _committed(self, connection: sa.Connection) -> None:
        if connection.info.pop(self._flag, None) and self._wake is not None:
            self._wake.set()

    def _rolled_back(self, connection: sa.Connection) -> None:
        connection.info.pop(self._flag, None)


#: Built once; executed with each row's parameters (its compiled form is cached).
_INSERT = sa.insert(outbox_table)


def _row(record: OutRecord) -> dict[str, Any]:
    return {"message_id": record.headers[Headers.ID], "topic": record.topic, "key": record.key,
            "value": record.value, "headers": json.dumps(dict(record.headers)),
            "deliver_at": record.deliver_at, "created_at": time.time()}
