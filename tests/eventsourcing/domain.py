"""A small event-sourced domain for the tests: orders, their events, two projections."""

from __future__ import annotations

import os
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from pydantic import BaseModel
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine

from tidings.eventsourcing import Aggregate, EventRegistry, Projection, Recorded
from tidings.eventsourcing.sqlalchemy import EventStore, Projections


class OrderPlaced(BaseModel):
    customer: str
    total: Decimal
    currency: str  # added in schema version 2


class ItemAdded(BaseModel):
    sku: str
    price: Decimal


class OrderCancelled(BaseModel):
    reason: str


events = EventRegistry()
events.add(OrderPlaced, version=2)
events.add(ItemAdded)
events.add(OrderCancelled)


@events.upcaster("OrderPlaced", from_version=1)
def _v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    return {**data, "currency": "EUR"}


class Order(Aggregate):
    topic = "orders"
    customer: str
    status: str
    total: Decimal
    items: list[str]

    def __init__(self, id: str) -> None:
        super().__init__(id)
        self.customer, self.status, self.total, self.items = "", "new", Decimal(0), []

    @classmethod
    def place(cls, id: str, customer: str, total: str = "0") -> Order:
        order = cls(id)
        order.record(OrderPlaced(customer=customer, total=Decimal(total), currency="EUR"))
        return order

    def add(self, sku: str, price: str) -> None:
        if self.status == "cancelled":
            raise ValueError("cancelled")
        self.record(ItemAdded(sku=sku, price=Decimal(price)))

    def cancel(self, reason: str) -> None:
        self.record(OrderCancelled(reason=reason))

    def apply(self, event: BaseModel) -> None:
        match event:
            case OrderPlaced(customer=customer, total=total):
                self.customer, self.status, self.total = customer, "placed", total
            case ItemAdded(sku=sku, price=price):
                self.items.append(sku)
                self.total += price
            case OrderCancelled():
                self.status = "cancelled"


read_metadata = sa.MetaData()

#: One row per stream: how many events the projection counted for it (no unique
#: guard against double counting: a second count would show).
counts = sa.Table(
    "test_counts", read_metadata,
    sa.Column("stream_id", sa.String(200), primary_key=True),
    sa.Column("n", sa.Integer(), nullable=False),
)

counter = Projection("event-counts")


@counter.on(OrderPlaced, ItemAdded, OrderCancelled)
async def count(recorded: Recorded[Any], session: AsyncSession) -> None:
    result = await session.execute(sa.update(counts).where(
        counts.c.stream_id == recorded.stream_id).values(n=counts.c.n + 1))
    if result.rowcount == 0:  # type: ignore[attr-defined]
        await session.execute(sa.insert(counts).values(stream_id=recorded.stream_id, n=1))


@counter.on_reset
async def clear(session: AsyncSession) -> None:
    await session.execute(sa.delete(counts))


def make_engine(url: str) -> AsyncEngine:
    """SQLite in WAL mode, waiting up to 30 s for the writer lock; PostgreSQL pooled."""
    if not url.startswith("sqlite"):
        return create_async_engine(url, pool_size=10, max_overflow=20)
    engine = create_async_engine(url, connect_args={"timeout": 30})

    @event.listens_for(engine.sync_engine, "connect")
    def wal(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.close()

    return engine


def registry() -> Projections:
    """The projections of ``$TIDINGS_TEST_DB`` (for the CLI and child processes)."""
    engine = make_engine(os.environ["TIDINGS_TEST_DB"])
    return Projections(EventStore(engine, events), counter, batch=int(
        os.environ.get("TIDINGS_TEST_BATCH", "100")))
