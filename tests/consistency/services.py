"""Small services used by the consistency tests, in-process and in child processes."""

from __future__ import annotations

import os
import signal
from collections.abc import Awaitable, Callable
from typing import Any

import sqlalchemy as sa
from pydantic import BaseModel
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine

from tidings import App, Message, RetryPolicy
from tidings.saga import Command, Saga, Step
from tidings.sqlalchemy import Inbox, Outbox

test_metadata = sa.MetaData()

users = sa.Table(
    "users", test_metadata,
    sa.Column("id", sa.Integer().with_variant(sa.Integer(), "sqlite"), primary_key=True,
              autoincrement=True),
    sa.Column("name", sa.String(100), nullable=False),
)

#: Effects of handlers, without a unique key, so a second effect would show.
effects = sa.Table(
    "effects", test_metadata,
    sa.Column("seq", sa.Integer(), primary_key=True, autoincrement=True),
    sa.Column("source", sa.String(200), nullable=False),
    sa.Column("n", sa.Integer(), nullable=False),
)

FAST = RetryPolicy(max_attempts=5, backoff=0.02, jitter=0)


def make_engine(url: str) -> AsyncEngine:
    """An async engine as a service would configure it: SQLite in WAL mode (readers and
    the writer do not block each other) waiting up to 30 s for the writer lock."""
    if not url.startswith("sqlite"):
        return create_async_engine(url, pool_size=10, max_overflow=20)
    engine = create_async_engine(url, connect_args={"timeout": 30})

    @event.listens_for(engine.sync_engine, "connect")
    def wal(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.close()

    return engine


async def create_test_tables(engine: AsyncEngine) -> None:
    """The tables of these test services."""
    async with engine.begin() as conn:
        await conn.run_sync(test_metadata.create_all)


async def count_effects(engine: AsyncEngine, source: str | None = None) -> dict[int, int]:
    """How many effects per ``n`` (optionally of one source)."""
    query = sa.select(effects.c.n, sa.func.count()).group_by(effects.c.n)
    if source is not None:
        query = query.where(effects.c.source == source)
    async with engine.connect() as conn:
        return {n: c for n, c in (await conn.execute(query)).all()}


async def register_user(engine: AsyncEngine, outbox: Outbox, name: str, *,
                        fail: bool = False) -> int:
    """The article's case: insert the user, allocate its id, record the event; one
    transaction."""
    async with AsyncSession(engine) as session, session.begin():
        result = await session.execute(sa.insert(users).values(name=name))
        user_id = int(result.inserted_primary_key[0])  # type: ignore[index]
        await outbox.publish(session, "users", {"type": "USER_REGISTERED", "userId": user_id,
                                                "username": name}, key=f"user-{user_id}")
        if fail:
            raise RuntimeError("the transaction fails after recording the event")
    return user_id


def counting_consumer(app: App, engine: AsyncEngine, topic: str, consumer: str,
                      after_commit: Callable[[dict[str, Any]], Awaitable[None]] | None = None,
                      ) -> Inbox:
    """Subscribe ``app`` to ``topic`` with an inbox-guarded handler that writes one effect
    per message (``n`` from the payload); ``after_commit`` runs after the handler's
    transaction committed, before the offset is."""
    inbox = Inbox(engine, consumer)

    @inbox.idempotent
    async def record(payload: dict[str, Any], session: AsyncSession) -> None:
        await session.execute(sa.insert(effects).values(source=consumer, n=payload["n"]))

    @app.subscriber(topic, retry=FAST)
    async def handle(payload: dict[str, Any], message: Message) -> None:
        await record(payload, message)
        if after_commit is not None:
            await after_commit(payload)

    return inbox


def die() -> None:
    """SIGKILL this process: no cleanup, no commit, no goodbye."""
    os.kill(os.getpid(), signal.SIGKILL)


# -- a saga used in-process and in the crash tests --------------------------------------


class Trip(BaseModel):
    """State of the trip-booking saga."""

    trip: str
    fail_at: str | None = None
    done: list[str] = []
    undone: list[str] = []
    flight: str | None = None


def trip_saga(effect: Callable[[str, Trip], Awaitable[None]],
              compensation_retry: RetryPolicy | None = None) -> Saga[Trip]:
    """hotel -> flight (a command over the bus) -> car -> pay; each step records its
    effect through ``effect(name, state)`` and fails when ``state.fail_at`` names it."""

    def act(name: str) -> Callable[[Trip], Awaitable[Trip]]:
        async def run(trip: Trip) -> Trip:
            if trip.fail_at == name:
                raise RuntimeError(f"{name} is not available")
            await effect(name, trip)
            trip.done.append(name)
            return trip
        return run

    def undo(name: str) -> Callable[[Trip], Awaitable[Trip]]:
        async def run(trip: Trip) -> Trip:
            await effect(f"undo-{name}", trip)
            trip.undone.append(name)
            return trip
        return run

    def booked(trip: Trip, reply: dict[str, str]) -> Trip:
        trip.flight = reply["flight"]
        trip.done.append("flight")
        return trip

    retry = compensation_retry or RetryPolicy(max_attempts=3, backoff=0.01, jitter=0)
    quick = RetryPolicy(max_attempts=2, backoff=0.01, jitter=0)
    return Saga("trip", Trip, [
        Step("hotel", act("hotel"), compensation=undo("hotel"), retry=quick,
             compensation_retry=retry),
        Step("flight", Command("flights.book", lambda t: {"trip": t.trip, "fail": t.fail_at},
                               on_reply=booked),
             compensation=undo("flight"), timeout=5, retry=quick, compensation_retry=retry),
        Step("car", act("car"), compensation=undo("car"), retry=quick,
             compensation_retry=retry),
        Step("pay", act("pay"), retry=quick),
    ])


def flights_responder(app: App) -> None:
    """The flights service: books a flight, or refuses when asked to."""

    @app.responder("flights.book")
    async def book(request: dict[str, Any]) -> dict[str, str]:
        if request.get("fail") == "flight":
            raise RuntimeError("no seats left")
        return {"flight": f"FL-{request['trip']}"}
