"""Orchestrated sagas: steps run in order, compensations in reverse, timeouts and retries
count, a compensation that keeps failing parks the saga, and a crash resumes it."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncSession

from tidings import App, RetryPolicy, testing
from tidings.cli import cli
from tidings.saga import (
    Command,
    Direction,
    MemorySagaStore,
    Saga,
    SagaDefinitionError,
    SagaEngine,
    SagaRecord,
    SagaStatus,
    StepEvent,
)
from tidings.saga import Step as S
from tidings.sqlalchemy import GroupCommit, SqlSagaStore, sagas_table

from .conftest import Stack, database
from .services import Trip, count_effects, create_test_tables, effects, flights_responder, trip_saga

NEVER = RetryPolicy.never()


class Empty(BaseModel):
    """A state with nothing in it."""


async def nothing(state: Empty) -> None:
    return None


def test_bad_definitions_fail_when_built() -> None:
    with pytest.raises(SagaDefinitionError, match=r"'a' needs a compensation.*'b'"):
        Saga("s", Empty, [S("a", nothing), S("b", nothing)])
    with pytest.raises(SagaDefinitionError, match="duplicate step names"):
        Saga("s", Empty, [S("a", nothing, compensation=nothing), S("a", nothing)])
    with pytest.raises(SagaDefinitionError, match="no steps"):
        Saga("s", Empty, [])
    with pytest.raises(SagaDefinitionError, match="pydantic model"):
        Saga("s", dict, [S("a", nothing)])  # type: ignore[type-var]
    with pytest.raises(SagaDefinitionError, match="must be retriable too"):
        Saga("s", Empty, [S("a", nothing, retriable=True), S("b", nothing)])
    with pytest.raises(SagaDefinitionError, match="timeout"):
        S("a", nothing, timeout=0)
    with pytest.raises(SagaDefinitionError, match="async callable or a Command"):
        S("a", "not callable")  # type: ignore[arg-type]
    with pytest.raises(SagaDefinitionError, match="invalid command topic"):
        Command("no spaces allowed", lambda s: {})
    # The point of no return: a step without compensation followed by retriable steps.
    Saga("s", Empty, [S("a", nothing, compensation=nothing), S("pivot", nothing),
                      S("after", nothing, retriable=True)])


def _store(db_url: str | None, engine: Any) -> Any:
    return MemorySagaStore() if db_url is None else SqlSagaStore(engine)


def test_saga_completes_with_a_command_over_the_bus(stack: Stack) -> None:
    async def main() -> None:
        async with database(stack.db) as engine:
            await create_test_tables(engine)
            app = App("trips", broker=stack.bus)
            flights_responder(app)
            effects_seen: list[str] = []

            async def effect(name: str, trip: Trip) -> None:
                effects_seen.append(name)

            saga = trip_saga(effect)
            engine_ = SagaEngine(app, SqlSagaStore(engine), [saga], poll_interval=0.05)
            async with app:
                saga_id = await engine_.start(saga, Trip(trip="t1"))
                record = await engine_.wait(saga_id, 20)
                history = await engine_.history(saga_id)
            assert record.status is SagaStatus.COMPLETED, record.error
            state = Trip.model_validate_json(record.state)
            assert state.done == ["hotel", "flight", "car", "pay"] and state.flight == "FL-t1"
            assert effects_seen == ["hotel", "car", "pay"]
            steps = [(e.step, e.outcome) for e in history if e.phase == "action"]
            assert steps == [(n, o) for n in ("hotel", "flight", "car", "pay")
                             for o in ("started", "succeeded")]
            assert history[-1].outcome == "COMPLETED"

    asyncio.run(main())


@pytest.mark.parametrize("fail_at", ["pay", "flight"])
def test_failure_compensates_completed_steps_in_reverse(db_url: str, fail_at: str) -> None:
    async def main() -> None:
        async with database(db_url) as engine:
            app = App("trips", broker=testing.memory_url())
            flights_responder(app)
            done: list[str] = []

            async def effect(name: str, trip: Trip) -> None:
                done.append(name)

            saga = trip_saga(effect)
            engine_ = SagaEngine(app, SqlSagaStore(engine), [saga], poll_interval=0.05)
            async with app:
                saga_id = await engine_.start(saga, Trip(trip="t2", fail_at=fail_at))
                record = await engine_.wait(saga_id, 20)
                history = await engine_.history(saga_id)
            assert record.status is SagaStatus.COMPENSATED
            state = Trip.model_validate_json(record.state)
            if fail_at == "pay":
                assert state.undone == ["car", "flight", "hotel"]
                assert done == ["hotel", "car", "undo-car", "undo-flight", "undo-hotel"]
                assert "RuntimeError: pay is not available" in (record.error or "")
            else:  # the responder raised: RemoteError, retried, then compensated
                assert state.undone == ["hotel"] and done == ["hotel", "undo-hotel"]
                assert "no seats left" in (record.error or "")
            failed = [e for e in history if e.outcome == "failed"]
            assert [e.attempt for e in failed] == [1, 2]  # retry=max_attempts 2

    asyncio.run(main())


def test_a_timed_out_step_is_retried_then_compensated_too() -> None:
    class Box(BaseModel):
        log: list[str] = []

    calls: list[str] = []

    async def slow(box: Box) -> Box:
        calls.append("slow")
        await asyncio.sleep(1)
        return box

    async def undo_slow(box: Box) -> Box:
        calls.append("undo-slow")
        return box

    saga = Saga("slow", Box, [
        S("slow", slow, compensation=undo_slow, timeout=0.05,
          retry=RetryPolicy(max_attempts=3, backoff=0.01, jitter=0)),
        S("never", nothing),  # type: ignore[arg-type]
    ])

    async def main() -> None:
        app = App("svc", broker=testing.memory_url())
        engine = SagaEngine(app, MemorySagaStore(), [saga], poll_interval=0.05)
        async with app:
            saga_id = await engine.start(saga, Box())
            record = await engine.wait(saga_id, 10)
            history = await engine.history(saga_id)
        assert record.status is SagaStatus.COMPENSATED
        assert calls == ["slow", "slow", "slow", "undo-slow"]
        assert [e.outcome for e in history if e.outcome == "timed_out"] == ["timed_out"] * 3
        assert "timed out after 0.05 s" in (record.error or "")

    asyncio.run(main())


def test_a_compensation_that_keeps_failing_parks_and_can_be_retried_by_hand(
        db_url: str) -> None:
    class Order(BaseModel):
        refund_works: bool = False

    broken = {"refund": True}

    async def charge(order: Order) -> None:
        return None

    async def refund(order: Order) -> None:
        if broken["refund"]:
            raise ConnectionError("the payment service is down")

    async def ship(order: Order) -> None:
        raise RuntimeError("out of stock")

    saga = Saga("order", Order, [
        S("charge", charge, compensation=refund,
          compensation_retry=RetryPolicy(max_attempts=3, backoff=0.01, jitter=0)),
        S("ship", ship, retry=NEVER),
    ])

    async def park() -> str:
        async with database(db_url) as engine:
            app = App("orders", broker=testing.memory_url())
            saga_engine = SagaEngine(app, SqlSagaStore(engine), [saga], poll_interval=0.05)
            async with app:
                saga_id = await saga_engine.start(saga, Order())
                record = await saga_engine.wait(saga_id, 10)
                assert record.status is SagaStatus.FAILED_COMPENSATION
                assert "ConnectionError: the payment service is down" in (record.error or "")
                await asyncio.sleep(0.3)  # parked: nothing loops
                history = await saga_engine.history(saga_id)
                assert len([e for e in history if e.phase == "compensation"]) == 6
            return saga_id

    async def resume(saga_id: str) -> SagaRecord:
        async with database(db_url) as engine:
            app = App("orders", broker=testing.memory_url())
            saga_engine = SagaEngine(app, SqlSagaStore(engine), [saga], poll_interval=0.05)
            async with app:
                return await saga_engine.wait(saga_id, 10)

    saga_id = asyncio.run(park())
    broken["refund"] = False
    result = CliRunner().invoke(cli, ["sagas", "--db", db_url, "retry", saga_id])
    assert result.exit_code == 0, result.output
    assert "COMPENSATING again" in result.output
    assert asyncio.run(resume(saga_id)).status is SagaStatus.COMPENSATED
    _check_cli(db_url, saga_id)


def _check_cli(db_url: str, saga_id: str) -> None:
    runner = CliRunner()
    listed = runner.invoke(cli, ["--json", "sagas", "--db", db_url, "list"])
    assert listed.exit_code == 0, listed.output
    assert [s["status"] for s in json.loads(listed.output)] == ["COMPENSATED"]
    table = runner.invoke(cli, ["sagas", "--db", db_url, "list", "--status", "compensated"])
    assert saga_id in table.output and "COMPENSATED" in table.output
    shown = runner.invoke(cli, ["--json", "sagas", "--db", db_url, "show", saga_id])
    history = json.loads(shown.output)["history"]
    assert [h["outcome"] for h in history if h["phase"] == "saga"] == [
        "RUNNING", "COMPENSATING", "FAILED_COMPENSATION", "COMPENSATING", "COMPENSATED"]
    assert "retry requested by hand" in shown.output
    text = runner.invoke(cli, ["sagas", "--db", db_url, "show", saga_id])
    assert "FAILED_COMPENSATION" in text.output and "compensation" in text.output
    missing = runner.invoke(cli, ["sagas", "--db", db_url, "show", "nope"])
    assert missing.exit_code == 1 and "no saga with id 'nope'" in missing.output
    again = runner.invoke(cli, ["sagas", "--db", db_url, "retry", saga_id])
    assert again.exit_code == 1 and "not parked" in again.output
    assert runner.invoke(cli, ["sagas", "list"], env={"TIDINGS_DB": ""}).exit_code == 2


def test_a_state_that_no_longer_validates_is_parked(db_url: str) -> None:
    class V2(BaseModel):
        amount: int

    async def step(state: V2) -> None:
        return None

    saga = Saga("versioned", V2, [S("only", step)])

    async def main() -> None:
        async with database(db_url) as engine:
            store = SqlSagaStore(engine)
            old = SagaRecord("old-1", "versioned", SagaStatus.RUNNING, Direction.FORWARD,
                             json.dumps({"amount": "not a number"}))
            await store.create(old, [StepEvent("old-1", "", "saga", "RUNNING")])
            app = App("svc", broker=testing.memory_url())
            saga_engine = SagaEngine(app, store, [saga], poll_interval=0.05)
            async with app:
                record = await saga_engine.wait("old-1", 10)
            assert record.status is SagaStatus.PARKED
            assert "does not validate against V2" in (record.error or "")
            assert "amount" in (record.error or "")

    asyncio.run(main())


def test_a_retriable_step_parks_instead_of_compensating() -> None:
    class Box(BaseModel):
        pass

    async def flaky(box: Box) -> None:
        raise ConnectionError("down")

    saga = Saga("r", Box, [S("a", nothing, compensation=nothing),  # type: ignore[arg-type]
                           S("b", flaky, retriable=True, retry=NEVER)])

    async def main() -> None:
        app = App("svc", broker=testing.memory_url())
        engine = SagaEngine(app, MemorySagaStore(), [saga])
        async with app:
            record = await engine.wait(await engine.start(saga, Box()), 10)
        assert record.status is SagaStatus.PARKED and record.direction is Direction.FORWARD

    asyncio.run(main())


class _SlowRenewal(MemorySagaStore):
    """A store whose lease renewal waits, once armed, until the test lets it go on."""

    def __init__(self) -> None:
        super().__init__()
        self.hold = False
        self.renewing = asyncio.Event()
        self.go = asyncio.Event()

    async def renew(self, owner: str, saga_ids: Any, lease: float) -> set[str]:
        held = await super().renew(owner, saga_ids, lease)
        if self.hold:
            self.hold = False
            self.renewing.set()
            await self.go.wait()
        return held


def test_a_saga_started_while_leases_are_renewed_keeps_running() -> None:
    """A saga spawned while the engine renewed the others' leases was not in that
    renewal: it is not taken for one whose lease was lost (it was cancelled, and only
    resumed once its lease expired: the shop's 10 s p99)."""
    class Box(BaseModel):
        pass

    gates: dict[str, asyncio.Event] = {}

    async def wait_for_gate(box: Box) -> None:
        await gates[asyncio.current_task().get_name()].wait()  # type: ignore[union-attr]

    saga = Saga("held", Box, [S("a", wait_for_gate)])  # type: ignore[arg-type]

    async def main() -> None:
        app = App("svc", broker=testing.memory_url())
        store = _SlowRenewal()
        engine = SagaEngine(app, store, [saga], lease=30, poll_interval=0.05)
        async with app:
            gates["tidings-saga-first"] = asyncio.Event()
            gates["tidings-saga-second"] = asyncio.Event()
            await engine.start(saga, Box(), saga_id="first")
            store.hold = True
            await asyncio.wait_for(store.renewing.wait(), 10)
            await engine.start(saga, Box(), saga_id="second")  # while renewing
            store.go.set()
            for _ in range(5):  # a few more polls, renewals included
                await asyncio.sleep(0.05)
            for gate in gates.values():
                gate.set()
            first = await engine.wait("first", 5)
            second = await engine.wait("second", 5)
        assert first.status is SagaStatus.COMPLETED
        assert second.status is SagaStatus.COMPLETED

    asyncio.run(main())


def test_a_saga_started_in_a_transaction_exists_iff_it_commits(db_url: str) -> None:
    async def main() -> None:
        async with database(db_url) as engine:
            await create_test_tables(engine)
            app = App("trips", broker=testing.memory_url())
            flights_responder(app)

            async def effect(name: str, trip: Trip) -> None: ...

            saga = trip_saga(effect)
            saga_engine = SagaEngine(app, SqlSagaStore(engine), [saga], poll_interval=0.05)
            async with app:
                async def rolled_back() -> None:
                    async with AsyncSession(engine) as session, session.begin():
                        await session.execute(effects.insert().values(source="order", n=1))
                        await saga_engine.start(saga, Trip(trip="x"), saga_id="gone",
                                                within=session)
                        raise RuntimeError("rolled back")

                with pytest.raises(RuntimeError, match="rolled back"):
                    await rolled_back()
                async with AsyncSession(engine) as session, session.begin():
                    with contextlib.suppress(RuntimeError):
                        async with session.begin_nested():
                            await saga_engine.start(saga, Trip(trip="n"), saga_id="nested",
                                                    within=session)
                            raise RuntimeError("the nested transaction rolls back")
                async with AsyncSession(engine) as session, session.begin():
                    await session.execute(effects.insert().values(source="order", n=2))
                    await saga_engine.start(saga, Trip(trip="y"), saga_id="kept",
                                            within=session)
                record = await saga_engine.wait("kept", 10)
                assert record.status is SagaStatus.COMPLETED
                assert await saga_engine.store.get("gone") is None
                assert await saga_engine.store.get("nested") is None
                with pytest.raises(Exception, match="inside a transaction"):
                    async with AsyncSession(engine) as session:
                        await saga_engine.start(saga, Trip(trip="z"), within=session)
            assert await count_effects(engine) == {2: 1}

    asyncio.run(main())


def test_a_saga_started_in_a_group_commit_unit_that_fails_never_runs(db_url: str) -> None:
    """A unit of work of a GroupCommit starts a saga, then raises: its savepoint rolls back,
    the group commits the others, and the saga's first step never runs."""
    ran: list[str] = []

    async def first(state: Empty) -> None:
        ran.append("first")

    saga = Saga("unit", Empty, [S("first", first)])

    async def main() -> None:
        async with database(db_url) as engine:
            app = App("units", broker=testing.memory_url())
            sagas = SagaEngine(app, SqlSagaStore(engine), [saga], poll_interval=0.05)
            commits = GroupCommit.of(engine)

            def unit(saga_id: str, fail: bool) -> Any:
                async def work(conn: Any) -> str:
                    await sagas.start(saga, Empty(), saga_id=saga_id, within=conn)
                    if fail:
                        raise RuntimeError("rolled back")
                    return saga_id
                return work

            async with app:
                results = await asyncio.gather(commits.run(unit("kept", False)),
                                               commits.run(unit("gone", True)),
                                               return_exceptions=True)
                assert results[0] == "kept" and isinstance(results[1], RuntimeError)
                assert (await sagas.wait("kept", 10)).status is SagaStatus.COMPLETED
                await asyncio.sleep(0.3)
                assert await sagas.store.get("gone") is None
        assert ran == ["first"]  # the kept saga's, once; none for the rolled-back one

    asyncio.run(main())


def test_sigkill_during_a_compensation_resumes_it(shared_stack: Stack, spawn: Any) -> None:
    """The process dies in the middle of compensating 'car'; a new instance resumes after
    the lease expires, runs that compensation again (at least once) and finishes."""
    async def main() -> None:
        async with database(shared_stack.db) as engine:
            await create_test_tables(engine)
            first = spawn("saga", shared_stack.db, shared_stack.bus, "start")
            started = await first.wait_for("started")
            await first.wait_for("effect")  # hotel
            assert await first.exit_code(30) == -9
            store = SqlSagaStore(engine)
            record = await store.get(started["saga_id"])
            assert record is not None and record.status is SagaStatus.COMPENSATING
            second = spawn("saga", shared_stack.db, shared_stack.bus, "resume")
            await second.wait_for("ready")
            for _ in range(200):
                record = await store.get(started["saga_id"])
                assert record is not None
                if record.status is SagaStatus.COMPENSATED:
                    break
                await asyncio.sleep(0.05)
            assert record.status is SagaStatus.COMPENSATED, record
            assert Trip.model_validate_json(record.state).undone == ["car", "flight", "hotel"]
            async with engine.connect() as conn:
                rows = (await conn.execute(sa.select(effects.c.source))).scalars().all()
            assert sorted(rows) == sorted(["hotel", "car", "undo-car", "undo-car",
                                           "undo-flight", "undo-hotel"])

    asyncio.run(main())


def test_a_compensation_that_kills_its_process_every_time_ends_parked(
        tmp_path: Any, spawn: Any) -> None:
    db = f"sqlite+aiosqlite:///{tmp_path}/service.db"
    bus = f"sqlite:///{tmp_path}/bus.db?session_timeout=1.5"

    async def main() -> None:
        async with database(db) as engine:
            await create_test_tables(engine)
            first = spawn("saga", db, bus, "start")
            saga_id = (await first.wait_for("started"))["saga_id"]
            assert await first.exit_code(30) == -9
            second = spawn("saga", db, bus, "always-die")
            assert await second.exit_code(30) == -9  # died in attempt 2 of 2
            third = spawn("saga", db, bus, "resume")
            await third.wait_for("ready")
            store = SqlSagaStore(engine)
            for _ in range(200):
                record = await store.get(saga_id)
                if record is not None and record.status is SagaStatus.FAILED_COMPENSATION:
                    break
                await asyncio.sleep(0.05)
            assert record is not None and record.status is SagaStatus.FAILED_COMPENSATION
            assert "did not finish" in (record.error or "")
            async with engine.connect() as conn:
                parked = (await conn.execute(sa.select(sagas_table.c.status))).scalars().all()
            assert parked == ["FAILED_COMPENSATION"]

    asyncio.run(main())
