"""The event store on SQLAlchemy (async): SQLite and PostgreSQL.

Saving appends an aggregate's new events with their stream versions; a unique
(stream, version) constraint turns a stale writer into :class:`ConcurrencyConflictError`.
In the same transaction it publishes them through the outbox (when the aggregate has a
``topic``) and, every ``snapshot_every`` events, replaces the stream's snapshot.

Projections follow the global ``position``. A sequence hands positions out in the
order transactions *start* writing, not the order they commit, so a reader could see
position 12 before a slower writer commits 11, move past it and never see it. On
PostgreSQL, writers therefore take a transaction-scoped advisory lock just before they
insert (as the eventsourcing library locks its table), so positions become visible in
order; SQLite has one writer at a time anyway. Rolled-back writes leave gaps, which are
harmless: readers ask for "after my position", never for "position + 1".
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Sequence
from typing import Any, TypeVar

import pydantic
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ..._codec import JSON
from ..._errors import ConfigurationError
from ..._ids import new_id
from ..._message import Headers, current_message
from ...sqlalchemy import GroupCommit, Outbox
from ...sqlalchemy._sql import Executor, dialect_of, in_transaction
from ...sqlalchemy._sqlite import insert_returning
from .._aggregate import Aggregate
from .._errors import AggregateNotFoundError, ConcurrencyConflictError
from .._events import EventRegistry, Recorded
from ._schema import events_table, snapshots_table

__all__ = ["EventHeaders", "EventStore"]

log = logging.getLogger("tidings.eventsourcing")

A = TypeVar("A", bound=Aggregate)
_LOCK_KEY = 0x7469_6469_6E67  # "tiding": one advisory lock for every event writer
# Built once: building the statement cost more than running it.
_APPEND = sa.insert(events_table).returning(events_table.c.position,
                                            sort_by_parameter_order=True)


class EventHeaders:
    """Headers of the bus messages the store publishes (the body is the event's JSON)."""

    EVENT_TYPE = "tidings-event-type"
    STREAM_ID = "tidings-stream-id"
    STREAM_TYPE = "tidings-stream-type"
    STREAM_VERSION = "tidings-stream-version"
    POSITION = "tidings-event-position"


class EventStore:
    """Aggregates' events in the service's database (``create_tables`` makes the tables).

    ``events`` knows the event classes and upcasters; ``outbox`` (on the same database)
    publishes new events of aggregates that have a ``topic``; ``snapshot_every`` N events
    a stream's snapshot is replaced, so loading replays at most N - 1 events.
    """

    def __init__(self, engine: AsyncEngine, events: EventRegistry, *,
                 outbox: Outbox | None = None, snapshot_every: int | None = None) -> None:
        if snapshot_every is not None and snapshot_every < 1:
            raise ConfigurationError(f"snapshot_every is >= 1 or None, not {snapshot_every}")
        if outbox is not None and outbox.engine.url != engine.url:
            raise ConfigurationError("the outbox must be on the event store's database, so "
                                     "events and their messages commit together")
        self.engine = engine
        self.events = events
        self.outbox = outbox
        self.snapshot_every = snapshot_every

    # -- writing -----------------------------------------------------------------------

    async def save(self, aggregate: Aggregate, *,
                   session: Executor | None = None) -> list[Recorded[Any]]:
        """Append the aggregate's new events (and publish them, and maybe snapshot it) in
        one transaction: ``session``'s (an AsyncSession or AsyncConnection inside a
        transaction, with your other writes) or a unit of work of the engine's
        :class:`~tidings.sqlalchemy.GroupCommit`. Raises
        :class:`ConcurrencyConflictError` if the stream moved on since it was loaded."""
        pending = aggregate.pending_events
        if not pending:
            return []
        loaded = aggregate.version - len(pending)
        rows = [self._row(aggregate, loaded + n, event) for n, event in enumerate(pending, 1)]

        async def write(executor: Executor) -> list[Recorded[Any]]:
            recorded = await self._append(executor, aggregate, rows, pending)
            await self._maybe_snapshot(executor, aggregate, loaded)
            return recorded

        try:
            if session is not None:
                recorded = await write(in_transaction(session, self.engine, "EventStore.save"))
            else:
                recorded = await GroupCommit.of(self.engine).run(write)
        except (sa.exc.IntegrityError, sqlite3.IntegrityError) as exc:
            # sqlite3's own when the row went in on the sqlite3 connection directly
            if "version" not in str(getattr(exc, "orig", exc)):
                raise
            raise ConcurrencyConflictError(aggregate.id, loaded) from None
        aggregate._mark_saved()
        return recorded

    def _row(self, aggregate: Aggregate, version: int,
             event: pydantic.BaseModel) -> dict[str, Any]:
        entry, data = self.events.encode(event)
        return {"stream_id": aggregate.id, "stream_type": aggregate.stream_type(),
                "version": version, "event_type": entry.name,
                "schema_version": entry.version, "event_id": new_id(), "data": data,
                "meta": json.dumps(_metadata()), "recorded_at": time.time()}

    async def _append(self, executor: Executor, aggregate: Aggregate,
                      rows: list[dict[str, Any]],
                      events: Sequence[pydantic.BaseModel]) -> list[Recorded[Any]]:
        if dialect_of(executor) == "postgresql":
            await executor.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"),
                                   {"key": _LOCK_KEY})
        if isinstance(executor, AsyncConnection):
            positions = await insert_returning(executor, _APPEND, rows)
        else:
            positions = list((await executor.execute(_APPEND, rows)).scalars())
        recorded = [_recorded(row, event, position)
                    for row, event, position in zip(rows, events, positions, strict=True)]
        if self.outbox is not None and aggregate.topic is not None:
            for item in recorded:
                await self.outbox._record(executor, aggregate.topic, item.event.model_dump_json(
                    by_alias=True).encode(), key=item.stream_id, reserved=_headers(item))
        return recorded

    async def _maybe_snapshot(self, executor: Executor, aggregate: Aggregate,
                              loaded: int) -> None:
        every = self.snapshot_every
        if every is None or aggregate.version // every == loaded // every:
            return
        state = json.dumps(aggregate.snapshot_state())
        table = snapshots_table
        await executor.execute(sa.delete(table).where(table.c.stream_id == aggregate.id))
        await executor.execute(sa.insert(table).values(
            stream_id=aggregate.id, stream_type=aggregate.stream_type(),
            version=aggregate.version, state=state, taken_at=time.time()))

    # -- reading -----------------------------------------------------------------------

    async def load(self, cls: type[A], stream_id: str, *, version: int | None = None) -> A:
        """Rebuild the aggregate from its snapshot and the events after it (up to
        ``version``). Raises :class:`AggregateNotFoundError` if the stream is empty, and
        :class:`~tidings.eventsourcing.UpcastError` for an event it cannot read."""
        async with self.engine.connect() as conn:
            aggregate = await self._from_snapshot(conn, cls, stream_id, version)
            rows = await self._stream_rows(conn, stream_id, aggregate.version, version)
        for row in rows:
            if row.stream_type != cls.stream_type():
                raise AggregateNotFoundError(
                    f"stream {stream_id!r} holds a {row.stream_type}, not a {cls.__name__}")
            aggregate.apply(self._decode(row))
            aggregate.version = row.version
        if aggregate.version == 0:
            raise AggregateNotFoundError(f"no {cls.__name__} {stream_id!r} is stored")
        return aggregate

    async def _from_snapshot(self, conn: AsyncConnection, cls: type[A], stream_id: str,
                             version: int | None) -> A:
        aggregate = cls(stream_id)
        if self.snapshot_every is None:
            return aggregate
        table = snapshots_table
        snap = (await conn.execute(sa.select(table).where(
            table.c.stream_id == stream_id))).first()
        if snap is None or (version is not None and snap.version > version):
            return aggregate
        try:
            aggregate.restore_state(json.loads(snap.state))
        except (pydantic.ValidationError, ConfigurationError, ValueError) as exc:
            # A snapshot is a cache: one of an older shape is ignored, never trusted.
            log.warning("ignoring the snapshot of %s at version %d: %s",
                        stream_id, snap.version, exc)
            return cls(stream_id)
        aggregate.version = snap.version
        return aggregate

    async def _stream_rows(self, conn: AsyncConnection, stream_id: str, after: int,
                           upto: int | None) -> Sequence[Any]:
        table = events_table
        query = sa.select(table).where(table.c.stream_id == stream_id, table.c.version > after)
        if upto is not None:
            query = query.where(table.c.version <= upto)
        return (await conn.execute(query.order_by(table.c.version))).all()

    async def history(self, stream_id: str) -> list[Recorded[Any]]:
        """Every stored event of a stream, oldest first (empty for an unknown stream)."""
        async with self.engine.connect() as conn:
            rows = await self._stream_rows(conn, stream_id, 0, None)
        return [self.recorded(row) for row in rows]

    async def read(self, *, after: int = 0, limit: int = 1000) -> list[Recorded[Any]]:
        """Stored events of every stream in global order, after position ``after``."""
        table = events_table
        async with self.engine.connect() as conn:
            rows = (await conn.execute(sa.select(table).where(table.c.position > after)
                                       .order_by(table.c.position).limit(limit))).all()
        return [self.recorded(row) for row in rows]

    async def head(self) -> int:
        """The position of the newest stored event (0 if there is none)."""
        async with self.engine.connect() as conn:
            value = await conn.scalar(sa.select(sa.func.max(events_table.c.position)))
        return int(value or 0)

    def recorded(self, row: Any) -> Recorded[Any]:
        """A row of ``tidings_events`` as a :class:`Recorded` with its event decoded."""
        return _recorded(row._mapping, self._decode(row), row.position)

    def _decode(self, row: Any) -> pydantic.BaseModel:
        return self.events.decode(row.event_type, row.schema_version, row.data,
                                  stream_id=row.stream_id, version=row.version)


def _recorded(row: Any, event: pydantic.BaseModel, position: int) -> Recorded[Any]:
    return Recorded(event=event, stream_id=row["stream_id"], stream_type=row["stream_type"],
                    version=row["version"], position=position, event_id=row["event_id"],
                    event_type=row["event_type"], recorded_at=row["recorded_at"],
                    metadata=json.loads(row["meta"]))


def _metadata() -> dict[str, str]:
    parent = current_message.ids()
    if parent is None:
        return {}
    return {"correlation_id": parent[1], "causation_id": parent[0]}


def _headers(item: Recorded[Any]) -> dict[str, str]:
    return {Headers.ID: item.event_id, Headers.CONTENT_TYPE: JSON,
            EventHeaders.EVENT_TYPE: item.event_type,
            EventHeaders.STREAM_ID: item.stream_id, EventHeaders.STREAM_TYPE: item.stream_type,
            EventHeaders.STREAM_VERSION: str(item.version),
            EventHeaders.POSITION: str(item.position)}
