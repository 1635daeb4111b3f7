"""Child processes for the SIGKILL tests: each scenario dies at one dangerous point.

Usage: python child.py SCENARIO DB_URL BUS_URL [ARGS...]; prints JSON lines
(``{"event": ...}``) so the test knows how far it got.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from pydantic import BaseModel
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncSession

sys.path.insert(0, str(Path(__file__).resolve().parent))

from services import (
    Trip,
    counting_consumer,
    die,
    effects,
    flights_responder,
    make_engine,
    register_user,
    trip_saga,
)

from tidings import App, RetryPolicy
from tidings.saga import Saga, SagaEngine, Sleep, Step
from tidings.sqlalchemy import Outbox, SqlSagaStore


def say(event_name: str, **data: Any) -> None:
    print(json.dumps({"event": event_name, **data}), flush=True)


def engine_for(url: str) -> Any:
    return make_engine(url)


async def commit_then_die(db: str, bus: str, count: str) -> None:
    """Record events, commit, and die inside the commit hook: after the DB commit, before
    any relay could publish."""
    engine = engine_for(db)
    outbox = Outbox(engine)
    for n in range(int(count) - 1):
        await register_user(engine, outbox, f"user-{n}")
    async with AsyncSession(engine) as session, session.begin():
        await outbox.publish(session, "users", {"type": "LAST", "n": int(count) - 1}, key="k")
        event.listen(session.sync_session, "after_commit", lambda _s: die())
        say("committing")
    say("unreachable")


async def relay_dies_after_publish(db: str, bus: str, after: str) -> None:
    """Run the relay in batches of ``after`` events; die right after the first batch
    was appended to the bus, before the relay deleted its rows."""
    app = App("users-svc", broker=bus)
    outbox = Outbox(engine_for(db))
    outbox.relay(app, interval=0.01, batch=int(after), lease=1.0)
    published = 0
    real_appending = app._appending  # every publish hands its records over here

    def appending(outs: list[Any], *kind: Any) -> Any:
        waiting, count = real_appending(outs, *kind), len(outs)

        async def appended() -> Any:
            nonlocal published
            result = await waiting
            published += count
            if published >= int(after):
                die()
            return result

        return appended()

    app._appending = appending  # type: ignore[method-assign]
    async with app:
        say("relaying")
        await asyncio.sleep(30)


async def consumer(db: str, bus: str, topic: str, kill_at: str) -> None:
    """Consume with the inbox; die after the handler's commit of message ``kill_at``,
    before its offset is committed (-1: never)."""
    engine = engine_for(db)
    app = App("billing", broker=bus, shutdown_timeout=5)

    async def after_commit(payload: dict[str, Any]) -> None:
        say("handled", n=payload["n"])
        if payload["n"] == int(kill_at):
            die()

    counting_consumer(app, engine, topic, "billing", after_commit)
    async with app:
        await app.wait_until_assigned(20)
        say("ready")
        await asyncio.sleep(60)


async def saga_runner(db: str, bus: str, mode: str) -> None:
    """Run the trip saga engine. ``start``: start a saga that fails at 'pay' and die
    during the first compensation of 'car'; ``resume``: just run; ``always-die``: die in
    every compensation of 'car'."""
    engine = engine_for(db)
    app = App("trips", broker=bus, shutdown_timeout=5)
    flights_responder(app)

    async def effect(name: str, trip: Trip) -> None:
        async with engine.begin() as conn:
            await conn.execute(sa.insert(effects).values(source=name, n=0))
        say("effect", name=name)
        if name == "undo-car" and mode in ("start", "always-die"):
            die()

    saga = trip_saga(effect, RetryPolicy(max_attempts=2, backoff=0.01, jitter=0))
    saga_engine = SagaEngine(app, SqlSagaStore(engine), [saga], lease=1.0, poll_interval=0.1)
    async with app:
        await app.wait_until_assigned(20)
        if mode == "start":
            saga_id = await saga_engine.start(saga, Trip(trip="t1", fail_at="pay"))
            say("started", saga_id=saga_id)
        say("ready")
        await asyncio.sleep(60)


class Ticket(BaseModel):
    """The state of the timers saga."""

    n: int = 0


async def timers_runner(db: str, bus: str, mode: str) -> None:
    """A saga whose first step fails its first attempt (backoff 4 s), then sleeps 4 s,
    then ends. ``start`` starts it; ``resume`` just runs (the test SIGKILLs each)."""
    engine = engine_for(db)
    app = App("timers", broker=bus, shutdown_timeout=5)

    async def flaky(ticket: Ticket) -> Ticket:
        ticket.n += 1
        if ticket.n == 1 and mode == "start":
            say("failing")
            raise RuntimeError("first attempt fails")
        return ticket

    async def nothing(ticket: Ticket) -> None:
        return None

    saga = Saga("timers", Ticket, [
        Step("flaky", flaky, compensation=nothing,
             retry=RetryPolicy(max_attempts=3, backoff=4.0, jitter=0)),
        Sleep("cool-off", seconds=4.0),
        Step("end", nothing),
    ])
    saga_engine = SagaEngine(app, SqlSagaStore(engine), [saga], lease=1.0, poll_interval=0.1)
    async with app:
        if mode == "start":
            say("started", saga_id=await saga_engine.start(saga, Ticket()))
        say("ready")
        await asyncio.sleep(60)


SCENARIOS = {
    "commit-then-die": commit_then_die,
    "relay-dies-after-publish": relay_dies_after_publish,
    "consumer": consumer,
    "saga": saga_runner,
    "timers": timers_runner,
}

if __name__ == "__main__":
    scenario, *args = sys.argv[1:]
    asyncio.run(SCENARIOS[scenario](*args))  # type: ignore[operator]
