"""docs/consistency.md as one program: the guide's snippets, verbatim and in order,
with what they leave out (models, a payments client, the inventory responders) in
between. ``python examples/guides/consistency.py`` (in an empty folder: it makes app.db)"""

import asyncio

from pydantic import BaseModel as Event
from sqlalchemy import String, func, select
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from tidings.sqlalchemy import create_tables

from sqlalchemy import event
from sqlalchemy.ext.asyncio import create_async_engine

engine = create_async_engine("sqlite+aiosqlite:///app.db", connect_args={"timeout": 30})

@event.listens_for(engine.sync_engine, "connect")
def _wal(dbapi_connection, _):
    dbapi_connection.cursor().execute("PRAGMA journal_mode=WAL")


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100))


class Account(Base):
    __tablename__ = "accounts"
    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int]


class OrderRow(Base):
    __tablename__ = "orders"
    id: Mapped[str] = mapped_column(primary_key=True)
    status: Mapped[str]


class UserRegistered(Event):
    type: str
    userId: int
    username: str


sessions = async_sessionmaker(engine)

from tidings import App
from tidings.sqlalchemy import Outbox

app = App("users")
outbox = Outbox(engine)
outbox.relay(app)                      # publishes recorded events while the app runs

async def register(name: str) -> int:
    async with sessions() as session, session.begin():
        user = User(name=name)
        session.add(user)
        await session.flush()           # the id is allocated inside this transaction
        await outbox.publish(session, "users",
                             {"type": "USER_REGISTERED", "userId": user.id, "username": name},
                             key=f"user-{user.id}")
        user_id = user.id               # (read before the commit expires the object)
    return user_id                      # the row and the event committed together


from sqlalchemy.ext.asyncio import AsyncSession
from tidings.sqlalchemy import Inbox

inbox = Inbox(engine, consumer="billing")

@app.subscriber("users")
@inbox.idempotent
async def open_account(event: UserRegistered, session: AsyncSession) -> None:
    session.add(Account(user_id=event.userId))          # committed with the inbox row
    await outbox.publish(session, "accounts",           # choreography: same transaction
                         {"type": "ACCOUNT_OPENED", "userId": event.userId})


class CardDeclined(Exception):
    pass


class Payments:
    """Stands for a payment provider's client."""

    def __init__(self) -> None:
        self.charged: dict[str, int] = {}

    async def charge(self, order_id: str, amount: int) -> str:
        self.charged[order_id] = amount
        return f"pay-{order_id}"

    async def refund(self, payment_id: str | None) -> None:
        self.charged.pop((payment_id or "").removeprefix("pay-"), None)


payments = Payments()
reserved_orders: set[str] = set()


@app.responder("inventory.reserve")
async def reserve(body: dict) -> dict:
    reserved_orders.add(body["order"])
    return {"reserved": True}


@app.responder("inventory.release")
async def release(body: dict) -> dict:
    reserved_orders.discard(body["order"])
    return {"released": True}


async def confirm(order: "Order") -> None:
    async with sessions() as session, session.begin():
        row = await session.get(OrderRow, order.order_id)
        assert row is not None
        row.status = "CONFIRMED"

from pydantic import BaseModel
from tidings import RetryPolicy
from tidings.saga import Command, Saga, SagaEngine, Step
from tidings.sqlalchemy import SqlSagaStore

class Order(BaseModel):
    order_id: str
    amount: int
    payment_id: str | None = None

async def charge(order: Order) -> Order:
    order.payment_id = await payments.charge(order.order_id, order.amount)
    return order

async def refund(order: Order) -> None:
    await payments.refund(order.payment_id)

def reserved(order: Order, reply: dict) -> Order:
    return order

place_order = Saga("place-order", Order, [
    Step("reserve", Command("inventory.reserve", lambda o: {"order": o.order_id},
                            on_reply=reserved),
         compensation=Command("inventory.release", lambda o: {"order": o.order_id})),
    Step("charge", charge, compensation=refund, timeout=5,
         retry=RetryPolicy(max_attempts=3, give_up_on=(CardDeclined,))),
    Step("confirm", confirm, retriable=True),       # after the point of no return
])

sagas = SagaEngine(app, SqlSagaStore(engine), [place_order])   # engine: your AsyncEngine

async def place(order_id: str, amount: int) -> str:
    async with sessions() as session, session.begin():
        session.add(OrderRow(id=order_id, status="PENDING"))
        return await sagas.start(place_order, Order(order_id=order_id, amount=amount),
                                 within=session)


@app.responder("payments.authorize")
async def authorize(body: dict) -> dict:
    if body["amount"] > 1000:
        return {"approved": False, "reason": "over the card's limit"}
    return {"approved": True}


from tidings.saga import StepFailedError

class Checkout(BaseModel):
    order_id: str
    amount: int
    failure: str | None = None

def refused(checkout: Checkout, reply: dict) -> Checkout:
    if not reply["approved"]:
        checkout.failure = reply["reason"]
        raise StepFailedError(reply["reason"], state=checkout)
    return checkout

async def cancel(checkout: Checkout) -> None:        # sees checkout.failure
    async with sessions() as session, session.begin():
        row = await session.get(OrderRow, checkout.order_id)
        row.status = f"CANCELLED: {checkout.failure}"

checkout = Saga("checkout", Checkout, [
    Step("open-order", compensation=cancel),         # no action: costs no write
    Step("authorize", Command("payments.authorize",
                              lambda c: {"order": c.order_id, "amount": c.amount},
                              on_reply=refused), timeout=5),
    Step("confirm", confirm, retriable=True),
])


async def check_out(order_id: str, amount: int) -> str:
    async with sessions() as session, session.begin():
        session.add(OrderRow(id=order_id, status="PENDING"))
        return await sagas.start(checkout, Checkout(order_id=order_id, amount=amount),
                                 within=session)


from datetime import datetime

@app.cron("*/5 * * * *", catch_up="latest")   # or: tidings.cron(app, "*/5 * * * *")
async def rollup(tick: datetime) -> None:   # or: async def rollup() -> None
    ...


async def main() -> None:
    await create_tables(engine)
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    async with app:
        user_id = await register("Alice")
        await _account_opened(user_id)  # by the inbox handler, once
        saga_id = await place("o-1", 30)
        record = await sagas.wait(saga_id)
        assert str(record.status) == "COMPLETED", record
        assert payments.charged == {"o-1": 30}
        assert reserved_orders == {"o-1"}
        record = await sagas.wait(await check_out("o-2", 5000))
        assert str(record.status) == "COMPENSATED", record
        async with sessions() as session:
            row = await session.get(OrderRow, "o-2")
            assert row is not None
            assert row.status == "CANCELLED: over the card's limit", row.status
    await engine.dispose()
    print("consistency guide: all ran")


async def _account_opened(user_id: int) -> None:
    query = select(func.count()).select_from(Account).where(Account.user_id == user_id)
    async with asyncio.timeout(30):
        while True:
            async with sessions() as session:
                if await session.scalar(query) == 1:
                    return
            await asyncio.sleep(0.05)


if __name__ == "__main__":
    asyncio.run(main())
