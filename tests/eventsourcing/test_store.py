"""The event store on real databases: save and load, optimistic concurrency with
concurrent writers, snapshots, upcasting of old shapes, publishing through the outbox."""

from __future__ import annotations

import asyncio
import json
import random
import time
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa
from pydantic import BaseModel

from tidings import App, Message, testing
from tidings.eventsourcing import (
    AggregateNotFoundError,
    ConcurrencyConflictError,
    UnknownEventTypeError,
    UpcastError,
)
from tidings.eventsourcing.sqlalchemy import (
    EventHeaders,
    EventStore,
    events_table,
    snapshots_table,
)
from tidings.sqlalchemy import Outbox, outbox_table

from .conftest import database
from .domain import ItemAdded, Order, OrderPlaced, events


def test_save_load_and_history(db_url: str) -> None:
    async def main() -> None:
        async with database(db_url) as engine:
            store = EventStore(engine, events)
            order = Order.place("o-1", "alice", "10")
            order.add("sku-1", "2.50")
            recorded = await store.save(order)
            assert [r.version for r in recorded] == [1, 2]
            assert recorded[0].position < recorded[1].position
            assert order.pending_events == [] and order.version == 2
            loaded = await store.load(Order, "o-1")
            assert (loaded.customer, loaded.total, loaded.items) == ("alice", Decimal("12.50"),
                                                                     ["sku-1"])
            assert loaded.version == 2
            first = await store.load(Order, "o-1", version=1)
            assert first.total == Decimal(10) and first.items == []
            history = await store.history("o-1")
            assert [type(r.event) for r in history] == [OrderPlaced, ItemAdded]
            assert history[1].stream_type == "Order" and history[1].event_type == "ItemAdded"
            assert await store.save(loaded) == []  # nothing new: nothing written
            with pytest.raises(AggregateNotFoundError, match="o-2"):
                await store.load(Order, "o-2")

    asyncio.run(main())


def test_stale_writer_gets_a_conflict_and_stores_nothing(db_url: str) -> None:
    async def main() -> None:
        async with database(db_url) as engine:
            store = EventStore(engine, events)
            await store.save(Order.place("o-1", "alice"))
            first, second = await store.load(Order, "o-1"), await store.load(Order, "o-1")
            first.add("a", "1")
            await store.save(first)
            second.add("b", "1")
            second.add("c", "1")
            with pytest.raises(ConcurrencyConflictError, match="loaded at version 1") as info:
                await store.save(second)
            assert info.value.stream_id == "o-1" and info.value.expected_version == 1
            assert second.pending_events  # still there: the caller may inspect or retry
            assert (await store.load(Order, "o-1")).items == ["a"]
            with pytest.raises(ConcurrencyConflictError):  # creating an existing stream
                await store.save(Order.place("o-1", "bob"))

    asyncio.run(main())


def test_concurrent_writers_on_one_aggregate_lose_no_update(db_url: str) -> None:
    """Writers on separate connections load, change and save one order; every conflict
    is retried, so every item lands exactly once and versions have no holes."""
    writers, per_writer = 6, 8

    async def writer(store: EventStore, n: int) -> int:
        conflicts = 0
        for i in range(per_writer):
            while True:
                order = await store.load(Order, "o-1")
                order.add(f"w{n}-{i}", "1")
                await asyncio.sleep(random.random() / 500)  # widen the race window
                try:
                    await store.save(order)
                    break
                except ConcurrencyConflictError:
                    conflicts += 1
        return conflicts

    async def main() -> None:
        async with database(db_url) as engine:
            store = EventStore(engine, events)
            await store.save(Order.place("o-1", "alice"))
            conflicts = await asyncio.gather(*(writer(store, n) for n in range(writers)))
            order = await store.load(Order, "o-1")
            assert order.version == 1 + writers * per_writer
            assert sorted(order.items) == sorted(
                f"w{n}-{i}" for n in range(writers) for i in range(per_writer))
            assert sum(conflicts) > 0  # the race really happened
            versions = [r.version for r in await store.history("o-1")]
            assert versions == list(range(1, order.version + 1))

    asyncio.run(main())


def test_snapshots_every_n_events(db_url: str) -> None:
    async def main() -> None:
        async with database(db_url) as engine:
            store = EventStore(engine, events, snapshot_every=3)
            order = Order.place("o-1", "alice")
            for n in range(6):
                order.add(f"s{n}", "1")
            await store.save(order)  # versions 1..7: the snapshot is taken at 7
            async with engine.connect() as conn:
                snap = (await conn.execute(sa.select(snapshots_table))).one()
            assert snap.version == 7 and json.loads(snap.state)["total"] == "6"
            loaded = await store.load(Order, "o-1")
            assert loaded.version == 7 and len(loaded.items) == 6
            loaded.add("s6", "1")
            await store.save(loaded)  # version 8: same third, no new snapshot
            async with engine.begin() as conn:
                assert (await conn.scalar(sa.select(snapshots_table.c.version))) == 7
                # Prove loading starts from the snapshot: mark it, and see the mark.
                state = {**json.loads(snap.state), "customer": "from-snapshot"}
                await conn.execute(sa.update(snapshots_table).values(state=json.dumps(state)))
            again = await store.load(Order, "o-1")
            assert again.customer == "from-snapshot" and again.version == 8
            assert again.items[-1] == "s6"
            old = await store.load(Order, "o-1", version=2)  # before the snapshot: replayed
            assert old.customer == "alice" and old.version == 2

    asyncio.run(main())


def test_a_snapshot_of_an_older_shape_is_ignored(db_url: str) -> None:
    async def main() -> None:
        async with database(db_url) as engine:
            store = EventStore(engine, events, snapshot_every=2)
            order = Order.place("o-1", "alice")
            order.add("a", "1")
            await store.save(order)
            async with engine.begin() as conn:
                await conn.execute(sa.update(snapshots_table).values(
                    state=json.dumps({"customer": "x", "renamed_field": 1})))
            loaded = await store.load(Order, "o-1")
            assert loaded.customer == "alice" and loaded.items == ["a"]

    asyncio.run(main())


async def _store_raw(engine: Any, event_type: str, schema_version: int, data: Any,
                     version: int = 1) -> None:
    async with engine.begin() as conn:
        await conn.execute(sa.insert(events_table).values(
            stream_id="o-old", stream_type="Order", version=version, event_type=event_type,
            schema_version=schema_version, event_id=f"e{version}", data=json.dumps(data),
            meta="{}", recorded_at=time.time()))


def test_events_stored_in_an_older_shape_are_upcast(db_url: str) -> None:
    async def main() -> None:
        async with database(db_url) as engine:
            store = EventStore(engine, events)
            await _store_raw(engine, "OrderPlaced", 1, {"customer": "zoe", "total": "5"})
            order = await store.load(Order, "o-old")
            assert order.customer == "zoe" and order.total == Decimal(5)
            history = await store.history("o-old")
            assert history[0].event == OrderPlaced(customer="zoe", total=Decimal(5),
                                                   currency="EUR")

    asyncio.run(main())


@pytest.mark.parametrize(("event_type", "schema_version", "data", "reason"), [
    ("OrderShipped", 1, {}, "no event class is registered"),
    ("ItemAdded", 0, {"sku": "a", "price": "1"}, "no upcaster from v0 to v1"),
    ("ItemAdded", 3, {"sku": "a", "price": "1"}, "newer than the registered class"),
    ("OrderPlaced", 1, {"customer": "zoe"}, "total: Field required"),
])
def test_an_event_no_upcaster_can_read_names_its_stream_and_version(
        tmp_path: Any, event_type: str, schema_version: int, data: Any, reason: str) -> None:
    async def main() -> None:
        async with database(f"sqlite+aiosqlite:///{tmp_path}/s.db") as engine:
            store = EventStore(engine, events)
            await _store_raw(engine, "OrderPlaced", 2,
                             {"customer": "z", "total": "1", "currency": "EUR"})
            await _store_raw(engine, event_type, schema_version, data, version=2)
            with pytest.raises(UpcastError, match=reason) as info:
                await store.load(Order, "o-old")
            error = info.value
            assert (error.stream_id, error.version, error.event_type) == ("o-old", 2, event_type)
            assert "version 2 of stream 'o-old'" in str(error)

    asyncio.run(main())


def test_an_unregistered_event_class_is_refused_at_save(tmp_path: Any) -> None:
    class Stray(BaseModel):
        n: int

    async def main() -> None:
        async with database(f"sqlite+aiosqlite:///{tmp_path}/s.db") as engine:
            order = Order.place("o-1", "alice")
            order.record(Stray(n=1))  # apply() ignores it; the store must not
            with pytest.raises(UnknownEventTypeError, match="Stray"):
                await EventStore(engine, events).save(order)

    asyncio.run(main())


def test_new_events_go_through_the_outbox_in_the_same_transaction(db_url: str) -> None:
    async def main() -> None:
        async with database(db_url) as engine:
            outbox = Outbox(engine)
            store = EventStore(engine, events, outbox=outbox)
            order = Order.place("o-1", "alice", "3")
            order.add("a", "1")
            async with engine.begin() as conn:
                await store.save(order, session=conn)
                assert await _count(conn, outbox_table) == 2
                await conn.rollback()  # the caller's transaction fails: nothing stays
            async with engine.connect() as conn:
                assert await _count(conn, outbox_table) == 0
                assert await _count(conn, events_table) == 0
            order = Order.place("o-1", "alice", "3")
            order.add("a", "1")
            recorded = await store.save(order)
            async with engine.connect() as conn:
                rows = (await conn.execute(sa.select(outbox_table)
                                           .order_by(outbox_table.c.seq))).all()
            assert [r.message_id for r in rows] == [r.event_id for r in recorded]
            assert {r.key for r in rows} == {"o-1"} and {r.topic for r in rows} == {"orders"}
            headers = json.loads(rows[1].headers)
            assert headers[EventHeaders.EVENT_TYPE] == "ItemAdded"
            assert headers[EventHeaders.STREAM_VERSION] == "2"

    asyncio.run(main())


async def _count(conn: Any, table: sa.Table) -> int:
    return int(await conn.scalar(sa.select(sa.func.count()).select_from(table)) or 0)


def test_published_events_reach_typed_subscribers(tmp_path: Any) -> None:
    async def main() -> None:
        async with database(f"sqlite+aiosqlite:///{tmp_path}/s.db") as engine:
            outbox = Outbox(engine)
            store = EventStore(engine, events, outbox=outbox)
            app = App("orders-service", broker=testing.memory_url())
            outbox.relay(app, interval=0.02)
            got: asyncio.Queue[tuple[OrderPlaced, Message]] = asyncio.Queue()

            @app.subscriber("orders")
            async def on_order(event: OrderPlaced, message: Message) -> None:
                await got.put((event, message))

            async with app:
                recorded = await store.save(Order.place("o-9", "bob", "7"))
                event, message = await asyncio.wait_for(got.get(), 10)
            assert event == recorded[0].event and message.id == recorded[0].event_id
            assert message.key == "o-9"
            assert message.headers[EventHeaders.STREAM_TYPE] == "Order"

    asyncio.run(main())


def test_on_the_toolkits_sqlite_engine_rows_go_in_directly_with_positions_and_conflicts(
        tmp_path: Any) -> None:
    """On :func:`sqlite_engine` the store inserts on the sqlite3 connection itself: the
    positions still come back in the events' order, a stale writer still gets
    ConcurrencyConflictError (not sqlite3's IntegrityError) and the outbox row commits."""
    from tidings.eventsourcing.sqlalchemy import create_tables as create_event_tables
    from tidings.sqlalchemy import create_tables as create_outbox_tables
    from tidings.sqlalchemy import sqlite_engine

    async def main() -> None:
        engine = sqlite_engine(tmp_path / "es.db")
        try:
            await create_event_tables(engine)
            await create_outbox_tables(engine)
            store = EventStore(engine, events, outbox=Outbox(engine))
            order = Order.place("o-1", "alice")
            order.add("a", "1")
            order.add("b", "2")
            recorded = await store.save(order)
            assert [r.version for r in recorded] == [1, 2, 3]
            assert [r.position for r in recorded] == [r.position for r in await store.read()]
            assert recorded[0].position < recorded[1].position < recorded[2].position
            assert len({r.event_id for r in recorded}) == 3
            first, second = await store.load(Order, "o-1"), await store.load(Order, "o-1")
            first.add("c", "1")
            await store.save(first)
            second.add("d", "1")
            with pytest.raises(ConcurrencyConflictError, match="loaded at version 3"):
                await store.save(second)
            assert (await store.load(Order, "o-1")).items == ["a", "b", "c"]
            async with engine.connect() as conn:
                assert await conn.scalar(sa.select(sa.func.count()).select_from(
                    outbox_table)) == 4
        finally:
            await engine.dispose()

    asyncio.run(main())
