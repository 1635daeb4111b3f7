"""Durable saga timers: a retry backoff, a Sleep step and an attempt's deadline are stored,
so a SIGKILLed service's successor goes on at the stored time: not at once, not a full
wait later, and not from attempt 1."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from pydantic import BaseModel

from tidings import App, RetryPolicy, testing
from tidings.saga import (
    Command,
    Direction,
    Saga,
    SagaEngine,
    SagaRecord,
    SagaStatus,
    Sleep,
    Step,
    StepEvent,
)
from tidings.sqlalchemy import SqlSagaStore, sagas_table

from .conftest import Stack, database


async def _until(store: SqlSagaStore, saga_id: str, done: Any, timeout: float = 30) -> None:
    """Wait until ``done(history)``."""
    deadline = time.monotonic() + timeout
    while not done(await store.history(saga_id)):
        assert time.monotonic() < deadline, await store.history(saga_id)
        await asyncio.sleep(0.05)


def _at(history: list[StepEvent], step: str, outcome: str, attempt: int | None = None) -> float:
    return next(e.at for e in history if e.step == step and e.outcome == outcome
                and (attempt is None or e.attempt == attempt))


def test_sigkill_during_a_backoff_and_a_sleep_resumes_at_the_stored_times(
        shared_stack: Stack, spawn: Any) -> None:
    db, bus = shared_stack.db, shared_stack.bus

    async def main() -> None:
        async with database(db) as engine:
            store = SqlSagaStore(engine)
            first = spawn("timers", db, bus, "start")
            saga_id = (await first.wait_for("started"))["saga_id"]
            # Attempt 1 failed and its backoff (4 s) is stored: kill the process.
            await _until(store, saga_id, lambda h: any(e.outcome == "failed" for e in h))
            first.proc.kill()
            assert await first.exit_code() == -9
            second = spawn("timers", db, bus, "resume")
            await second.wait_for("ready")
            # Now asleep (4 s, stored): kill this one too.
            await _until(store, saga_id, lambda h: any(e.outcome == "sleeping" for e in h))
            second.proc.kill()
            assert await second.exit_code() == -9
            third = spawn("timers", db, bus, "resume")
            await third.wait_for("ready")
            await _until(store, saga_id, lambda h: h[-1].outcome == "COMPLETED")
            history = await store.history(saga_id)
        attempts = [(e.attempt, e.outcome) for e in history if e.step == "flaky"]
        assert attempts == [(1, "started"), (1, "failed"), (2, "started"), (2, "succeeded")]
        backoff = _at(history, "flaky", "started", 2) - _at(history, "flaky", "failed", 1)
        slept = _at(history, "cool-off", "succeeded") - _at(history, "cool-off", "sleeping")
        # At the stored time: not at once after the restart, not a full wait after it.
        assert 3.9 <= backoff <= 5.5, backoff
        assert 3.9 <= slept <= 5.5, slept

    asyncio.run(main())


class Order(BaseModel):
    id: str = "o-1"


def test_an_attempt_cut_short_times_out_at_its_stored_deadline(db_url: str) -> None:
    """A command attempt that was running when its process died (attempts=1, no wake-up
    time, a deadline) counts as timed out at its deadline: the next attempt waits for it
    (the participant may still act on the first) and is attempt 2."""
    asked: list[float] = []

    async def main() -> None:
        async with database(db_url) as engine:
            app = App("orders", broker=testing.memory_url())

            @app.responder("stock")
            async def reserve(payload: dict[str, str]) -> dict[str, str]:
                asked.append(time.time())
                return {"ok": "yes"}

            saga = Saga("cut", Order, [
                Step("reserve", Command("stock", lambda o: {"id": o.id}),
                     compensation=Command("stock", lambda o: {"id": o.id}), timeout=2.0,
                     retry=RetryPolicy(max_attempts=3, backoff=0.0, jitter=0)),
                Step("end", _nothing),
            ])
            store = SqlSagaStore(engine)
            died_at = time.time()
            await store.create(SagaRecord(
                "cut-1", "cut", SagaStatus.RUNNING, Direction.FORWARD, Order().model_dump_json(),
                attempts=1, owner="dead-instance", lease_until=died_at - 1,
                deadline=died_at + 2.0), [StepEvent("cut-1", "reserve", "action", "started", 1)])
            sagas = SagaEngine(app, store, [saga], poll_interval=0.05)
            async with app:
                record = await sagas.wait("cut-1", 20)
            history = await store.history("cut-1")
        assert record.status is SagaStatus.COMPLETED, record.error
        assert [(e.attempt, e.outcome) for e in history if e.step == "reserve"] == \
            [(1, "started"), (1, "timed_out"), (2, "started"), (2, "succeeded")]
        assert len(asked) == 1 and asked[0] >= died_at + 1.95  # at the stored deadline

    asyncio.run(main())


async def _nothing(order: Order) -> None:
    return None


def test_a_sleep_until_a_deadline_kept_in_the_state(db_url: str) -> None:
    class Offer(BaseModel):
        expires: float

    async def main() -> None:
        async with database(db_url) as engine:
            app = App("offers", broker=testing.memory_url())
            saga = Saga("offer", Offer, [Sleep("until-expiry", until=lambda o: o.expires),
                                         Step("expire", _nothing)])  # type: ignore[arg-type]
            sagas = SagaEngine(app, SqlSagaStore(engine), [saga], poll_interval=0.05)
            async with app:
                began = time.time()
                saga_id = await sagas.start(saga, Offer(expires=began + 0.5))
                record = await sagas.wait(saga_id, 10)
            assert record.status is SagaStatus.COMPLETED
            assert time.time() - began >= 0.5

    asyncio.run(main())


def test_a_timer_whose_saga_was_deleted_is_dropped_with_a_warning(
        db_url: str, caplog: Any) -> None:
    async def main() -> None:
        async with database(db_url) as engine:
            app = App("offers", broker=testing.memory_url())
            saga = Saga("nap", Order, [Sleep("nap", seconds=0.5), Step("end", _nothing)])
            store = SqlSagaStore(engine)
            sagas = SagaEngine(app, store, [saga], poll_interval=0.05)
            async with app:
                saga_id = await sagas.start(saga, Order())
                await _until(store, saga_id, lambda h: any(e.outcome == "sleeping" for e in h))
                async with engine.begin() as conn:
                    await conn.execute(sagas_table.delete())
                await asyncio.sleep(1.0)
                assert not sagas._tasks  # the run ended, nothing claims it again
        assert f"saga {saga_id} was deleted" in caplog.text

    asyncio.run(main())
