"""docs/eventsourcing.md as one program: the guide's snippets, verbatim and in order,
with the app and the read-model tables in between.
``python examples/guides/eventsourcing.py`` (in an empty folder: it makes orders.db)"""

import asyncio

from sqlalchemy import Numeric, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from tidings import App

from decimal import Decimal
from pydantic import BaseModel
from tidings.eventsourcing import Aggregate, EventRegistry

class OrderPlaced(BaseModel):
    customer: str
    total: Decimal

class OrderCancelled(BaseModel):
    reason: str

events = EventRegistry(OrderPlaced, OrderCancelled)

class Order(Aggregate):
    topic = "orders"            # new events are published here (None: not published)
    customer: str               # annotated attributes are what snapshots keep
    status: str
    total: Decimal

    def __init__(self, id: str) -> None:
        super().__init__(id)
        self.customer, self.status, self.total = "", "new", Decimal(0)

    @classmethod
    def place(cls, id: str, customer: str, total: Decimal) -> "Order":
        order = cls(id)
        order.record(OrderPlaced(customer=customer, total=total))
        return order

    def cancel(self, reason: str) -> None:
        if self.status == "cancelled":
            raise ValueError("already cancelled")     # decide first, then record
        self.record(OrderCancelled(reason=reason))

    def apply(self, event: BaseModel) -> None:         # pure: it also runs on every load
        match event:
            case OrderPlaced(customer=customer, total=total):
                self.customer, self.status, self.total = customer, "placed", total
            case OrderCancelled():
                self.status = "cancelled"


app = App("orders")


class Base(DeclarativeBase):
    pass


class OrderRow(Base):
    __tablename__ = "order_totals"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    total: Mapped[Decimal] = mapped_column(Numeric(12, 2))


class FastRow(Base):
    __tablename__ = "order_totals_fast"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    total: Mapped[Decimal] = mapped_column(Numeric(12, 2))


order_rows = FastRow.__table__

from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from tidings.eventsourcing.sqlalchemy import EventStore, create_tables
from tidings.sqlalchemy import Outbox

engine = create_async_engine("sqlite+aiosqlite:///orders.db")   # or postgresql+asyncpg://...
sessions = async_sessionmaker(engine)
outbox = Outbox(engine)
outbox.relay(app)                    # publishes recorded messages while app runs
store = EventStore(engine, events, outbox=outbox, snapshot_every=100)

async def create_schema() -> None:     # at startup, before the app runs
    await create_tables(engine)          # the event store's tables and the outbox's

async def order_lifecycle() -> Order:
    order = Order.place("o-1", "alice", Decimal("9.90"))
    await store.save(order)                          # its own transaction
    order = await store.load(Order, "o-1")           # AggregateNotFoundError if none
    old = await store.load(Order, "o-1", version=1)  # as it was
    history = await store.history("o-1")             # [Recorded(event, version, recorded_at, ...)]
    print(old.status, [type(r.event).__name__ for r in history])

    async with sessions() as session, session.begin():   # or with your other writes
        order.cancel("customer asked")
        await store.save(order, session=session)
    return order


from typing import Any

from tidings.eventsourcing import EventRegistry

class OrderPlacedV2(BaseModel):          # today's OrderPlaced: v2 added `currency`
    customer: str
    total: Decimal
    currency: str

class OrderShipped(BaseModel):           # stored as "OrderSent" before a rename
    carrier: str

registry = EventRegistry()
registry.add(OrderPlacedV2, name="OrderPlaced", version=2)

@registry.upcaster("OrderPlaced", from_version=1)
def add_currency(data: dict[str, Any]) -> dict[str, Any]:
    return {**data, "currency": "EUR"}

registry.add(OrderShipped, name="OrderShipped", aliases=("OrderSent",))   # a renamed type

old_event = registry.decode("OrderPlaced", 1, '{"customer": "bo", "total": "5"}',
                            stream_id="o-2", version=1)
assert old_event == OrderPlacedV2(customer="bo", total=Decimal(5), currency="EUR")


from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncSession
from tidings.eventsourcing import Projection, Recorded
from tidings.eventsourcing.sqlalchemy import Projections

totals = Projection("order-totals")

@totals.on(OrderPlaced)
async def placed(recorded: Recorded[OrderPlaced], session: AsyncSession) -> None:
    session.add(OrderRow(id=recorded.stream_id, total=recorded.event.total))

@totals.on(OrderCancelled)
async def cancelled(recorded: Recorded[OrderCancelled], session: AsyncSession) -> None:
    await session.execute(delete(OrderRow).where(OrderRow.id == recorded.stream_id))

@totals.on_reset                          # clears the read model before a rebuild
async def clear(session: AsyncSession) -> None:
    await session.execute(delete(OrderRow))

projections = Projections(store, totals, batch=500).attach(app)   # follows while app runs


from sqlalchemy import insert

fast_totals = Projection("order-totals-fast")

@fast_totals.on(OrderPlaced)
async def gather(recorded: Recorded[OrderPlaced], session: AsyncSession) -> None:
    session.info.setdefault("totals", {})[recorded.stream_id] = recorded.event.total

@fast_totals.before_commit
async def write(session: AsyncSession) -> None:
    rows = [{"id": k, "total": v} for k, v in session.info.get("totals", {}).items()]
    if rows:
        await session.execute(insert(order_rows), rows)


async def main() -> None:
    await create_schema()
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    async with app:
        order = await order_lifecycle()
        assert order.status == "cancelled"
        both = Projections(store, fast_totals)
        await both.catch_up("order-totals-fast")
        await projections.catch_up("order-totals")
        async with sessions() as session:
            assert await session.get(OrderRow, "o-1") is None  # placed, then cancelled
            fast = await session.get(FastRow, "o-1")
            assert fast is not None
            assert fast.total == Decimal("9.90")
    await engine.dispose()
    print("event sourcing guide: all ran")


if __name__ == "__main__":
    asyncio.run(main())
