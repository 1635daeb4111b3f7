"""Parallel saga steps: branches run at once and join; their state changes merge; when
one fails for good the others' completed work is compensated; a definition whose
branches lack a needed compensation is refused when built."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from pydantic import BaseModel

from tidings import App, RetryPolicy, testing
from tidings.saga import (
    Direction,
    MemorySagaStore,
    Parallel,
    Saga,
    SagaDefinitionError,
    SagaEngine,
    SagaRecord,
    SagaStatus,
    Step,
    StepEvent,
)
from tidings.saga._parallel import arm_branches
from tidings.sqlalchemy import SqlSagaStore

from .conftest import database

NEVER = RetryPolicy.never()


class Order(BaseModel):
    reserved: bool = False
    paid: bool = False
    log: list[str] = []


async def nothing(order: Order) -> None:
    return None


def test_branches_without_a_needed_compensation_are_refused() -> None:
    with pytest.raises(SagaDefinitionError, match=r"parallel branch 'a' needs a comp.*'b'"):
        Saga("s", Order, [Parallel("both", (Step("a", nothing), Step("b", nothing)))])
    with pytest.raises(SagaDefinitionError, match=r"parallel branch 'b' needs a comp.*'a'"):
        Saga("s", Order, [Parallel("both", (Step("a", nothing, compensation=nothing),
                                            Step("b", nothing))), Step("c", nothing)])
    with pytest.raises(SagaDefinitionError, match="all retriable or none"):
        Parallel("both", (Step("a", nothing, retriable=True), Step("b", nothing)))
    with pytest.raises(SagaDefinitionError, match="two or more"):
        Parallel("one", (Step("a", nothing),))
    with pytest.raises(SagaDefinitionError, match="duplicate step names"):
        Saga("s", Order, [Step("a", nothing, compensation=nothing),
                          Parallel("p", (Step("a", nothing), Step("b", nothing)))])
    # Fine: each branch can be undone, and retriable branches past the point of no return.
    Saga("s", Order, [Parallel("both", (Step("a", nothing, compensation=nothing),
                                        Step("b", nothing, compensation=nothing))),
                      Step("c", nothing)])
    Saga("s", Order, [Step("a", nothing), Parallel("after", (
        Step("b", nothing, retriable=True), Step("c", nothing, retriable=True)))])


def _saga(calls: list[str], fail_payment: bool, fail_after: bool = False) -> Saga[Order]:
    async def reserve(order: Order) -> Order:
        calls.append("reserve")
        await asyncio.sleep(0.5)
        order.reserved = True
        return order

    async def release(order: Order) -> Order:
        calls.append("release")
        order.reserved = False
        return order

    async def pay(order: Order) -> Order:
        calls.append("pay")
        await asyncio.sleep(0.5)
        if fail_payment:
            raise RuntimeError("card declined")
        order.paid = True
        return order

    async def refund(order: Order) -> Order:
        calls.append("refund")
        return order

    async def open_order(order: Order) -> Order:
        calls.append("open")
        return order

    async def cancel(order: Order) -> Order:
        calls.append("cancel")
        return order

    async def confirm(order: Order) -> None:
        if fail_after:
            raise RuntimeError("cannot confirm")

    return Saga("order", Order, [
        Step("open", open_order, compensation=cancel),
        Parallel("reserve-and-pay", (
            Step("reserve", reserve, compensation=release),
            Step("pay", pay, compensation=refund, retry=NEVER),
        )),
        Step("confirm", confirm, retry=NEVER),
    ])


async def _run(db_url: str, calls: list[str], fail_payment: bool = False,
               fail_after: bool = False) -> tuple[SagaRecord, list[StepEvent], float]:
    """Run the order saga once; its last record, its history and how long it took."""
    async with database(db_url) as engine:
        app = App("orders", broker=testing.memory_url())
        saga = _saga(calls, fail_payment, fail_after)
        sagas = SagaEngine(app, SqlSagaStore(engine), [saga], poll_interval=0.05)
        async with app:
            began = time.monotonic()
            record = await sagas.wait(await sagas.start(saga, Order()), 10)
            took = time.monotonic() - began
            return record, await sagas.history(record.id), took


def test_branches_run_at_once_and_their_changes_merge(db_url: str) -> None:
    calls: list[str] = []
    record, history, took = asyncio.run(_run(db_url, calls))
    assert record.status is SagaStatus.COMPLETED, record.error
    state = Order.model_validate_json(record.state)
    assert state.reserved and state.paid  # both branches' changes kept
    assert took < 0.95  # 0.5 s each: at once, not one after the other (1 s)
    assert sorted(calls) == ["open", "pay", "reserve"]
    done = [e.step for e in history if e.outcome == "succeeded"]
    assert sorted(done) == ["confirm", "open", "pay", "reserve", "reserve-and-pay"]
    assert record.branches is None


def test_a_branch_failing_after_the_other_succeeded_compensates_it(db_url: str) -> None:
    calls: list[str] = []
    record, history, _ = asyncio.run(_run(db_url, calls, fail_payment=True))
    assert record.status is SagaStatus.COMPENSATED, record
    assert "card declined" in (record.error or "")
    # The reservation that succeeded is released, then the order cancelled; the failed
    # payment is not refunded (it did not take effect).
    assert calls[-2:] == ["release", "cancel"] and "refund" not in calls
    assert not Order.model_validate_json(record.state).reserved
    undone = [e.step for e in history if e.phase == "compensation" and e.outcome == "succeeded"]
    assert undone == ["reserve", "reserve-and-pay", "open"]  # the branch, the group, the step


def test_a_step_failing_after_the_group_compensates_every_branch(db_url: str) -> None:
    calls: list[str] = []
    record, _, _ = asyncio.run(_run(db_url, calls, fail_after=True))
    assert record.status is SagaStatus.COMPENSATED, record
    assert calls[-3:] == ["refund", "release", "cancel"]  # last branch first


def test_a_branch_that_timed_out_is_compensated_too(db_url: str) -> None:
    """A branch whose attempt timed out may have taken effect: when its group fails, it
    is compensated with the ones that succeeded."""
    calls: list[str] = []

    def noted(name: str, wait: float = 0.0, fail: bool = False) -> Any:
        async def step(order: Order) -> Order:
            calls.append(name)
            await asyncio.sleep(wait)
            if fail:
                raise RuntimeError(name)
            return order
        return step

    saga = Saga("timing", Order, [Parallel("both", (
        Step("slow", noted("slow", wait=1), compensation=noted("undo-slow"), timeout=0.1,
             retry=NEVER),
        Step("fail", noted("fail", fail=True), compensation=nothing, retry=NEVER),
    ))])

    async def main() -> SagaRecord:
        async with database(db_url) as engine:
            app = App("orders", broker=testing.memory_url())
            sagas = SagaEngine(app, SqlSagaStore(engine), [saga], poll_interval=0.05)
            async with app:
                return await sagas.wait(await sagas.start(saga, Order()), 10)

    record = asyncio.run(main())
    assert record.status is SagaStatus.COMPENSATED, record
    assert calls.count("undo-slow") == 1


class _CountingStore(MemorySagaStore):
    """Counts the writes of saga steps."""

    def __init__(self) -> None:
        super().__init__()
        self.saves = 0

    async def save(self, record: SagaRecord, events: Any, lease: float, *,
                   release: bool = False) -> SagaRecord:
        self.saves += 1
        return await super().save(record, events, lease, release=release)


def test_a_parallel_step_costs_one_write_per_branch() -> None:
    """The write that reaches a parallel step records the start of every branch's first
    attempt, and the last branch's success is written with the step's: two branches,
    two writes (not five: each start, each success, then the step)."""
    calls: list[str] = []
    saga = _saga(calls, fail_payment=False)
    store = _CountingStore()

    async def main() -> tuple[SagaRecord, list[StepEvent]]:
        app = App("orders", broker=testing.memory_url())
        sagas = SagaEngine(app, store, [saga], poll_interval=0.05)
        async with app:
            record = await sagas.wait(await sagas.start(saga, Order()), 10)
            return record, await sagas.history(record.id)

    record, history = asyncio.run(main())
    assert record.status is SagaStatus.COMPLETED, record.error
    # open's success (and both branches' starts), the first branch's success, the last
    # branch's with the group's (and confirm's start), confirm's with the end.
    assert store.saves == 4
    lines = [(e.step, e.outcome) for e in history if e.phase == "action"]
    assert lines[:4] == [("open", "started"), ("open", "succeeded"),
                         ("reserve", "started"), ("pay", "started")]
    assert sorted(lines[4:6]) == [("pay", "succeeded"), ("reserve", "succeeded")]
    assert lines[6:] == [("reserve-and-pay", "succeeded"), ("confirm", "started"),
                         ("confirm", "succeeded")]


def test_branches_whose_start_was_written_count_it_after_a_crash() -> None:
    """A process that died after the write that started the branches: the next owner
    counts each started attempt as used (pay, allowed one, gives up; reserve runs
    again), then compensates the group."""
    calls: list[str] = []
    saga = _saga(calls, fail_payment=False)
    store = MemorySagaStore()

    async def main() -> tuple[SagaRecord, list[StepEvent]]:
        record = SagaRecord("s1", "order", SagaStatus.RUNNING, Direction.FORWARD,
                            Order().model_dump_json(), step=1, owner="dead",
                            lease_until=time.time() - 1)
        branches, events = arm_branches("s1", saga.steps[1])  # type: ignore[arg-type]
        await store.create(record.replace(branches=branches), events)
        app = App("orders", broker=testing.memory_url())
        sagas = SagaEngine(app, store, [saga], poll_interval=0.05)
        async with app:
            return await sagas.wait("s1", 10), await sagas.history("s1")

    record, history = asyncio.run(main())
    assert record.status is SagaStatus.COMPENSATED, record
    assert "pay" not in calls and calls[0] == "reserve"
    assert calls[-2:] == ["release", "cancel"]
    reserve = [(e.attempt, e.outcome) for e in history
               if e.step == "reserve" and e.phase == "action"]
    assert reserve == [(1, "started"), (1, "timed_out"), (2, "started"), (2, "succeeded")]
