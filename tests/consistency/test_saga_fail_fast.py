"""Steps that fail for good at once (StepFailedError, with the state the compensations
see), and steps that only hold a compensation (reaching them costs no write)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest
from pydantic import BaseModel

from tidings import App, RetryPolicy, testing
from tidings.saga import (
    Command,
    Parallel,
    Saga,
    SagaDefinitionError,
    SagaEngine,
    SagaRecord,
    SagaStatus,
    StepEvent,
    StepFailedError,
)
from tidings.saga import Step as S
from tidings.sqlalchemy import SqlSagaStore

from .conftest import database

#: Plenty of attempts left: a StepFailedError must not use them.
PATIENT = RetryPolicy(max_attempts=5, backoff=0.01)


class Order(BaseModel):
    """A state with a reason to give when the order is cancelled."""

    order: str
    reserved: bool = False
    charged: bool = False
    failure: str | None = None


class CountingStore(SqlSagaStore):
    """The SQL saga store, counting its writes of a running saga (and keeping what each
    wrote: the status and the history lines)."""

    saves = 0

    def __init__(self, engine: Any) -> None:
        super().__init__(engine)
        self.writes: list[tuple[SagaStatus, list[tuple[str, str]]]] = []

    async def save(self, record: SagaRecord, events: Sequence[StepEvent], lease: float, *,
                   release: bool = False) -> SagaRecord:
        self.saves += 1
        self.writes.append((record.status, [(e.step, e.outcome) for e in events]))
        return await super().save(record, events, lease, release=release)


async def _run(engine: Any, saga: Saga[Order], state: Order, app: App | None = None,
               ) -> tuple[SagaRecord, list[StepEvent], int]:
    app = app or App("shop", broker=testing.memory_url())
    store = CountingStore(engine)
    sagas = SagaEngine(app, store, [saga], poll_interval=0.05)
    async with app:
        saga_id = await sagas.start(saga, state)
        record = await sagas.wait(saga_id, 20)
        history = await sagas.history(saga_id)
    return record, history, store.saves


def test_a_step_without_an_action_needs_a_compensation_and_no_retries() -> None:
    async def undo(state: Order) -> None:
        return None

    with pytest.raises(SagaDefinitionError, match="no action"):
        S("open")
    with pytest.raises(SagaDefinitionError, match="no action"):
        S("open", compensation=undo, retriable=True)
    with pytest.raises(SagaDefinitionError, match="every branch needs an action"):
        Parallel("both", (S("a", undo, compensation=undo), S("b", compensation=undo)))
    # It can fail nothing, so the step before it needs no compensation for its sake.
    Saga("s", Order, [S("a", undo), S("open", compensation=undo)])


def test_a_step_without_an_action_costs_no_write_and_still_compensates(db_url: str) -> None:
    calls: list[str] = []

    async def reserve(state: Order) -> Order:
        calls.append("reserve")
        state.reserved = True
        return state

    async def cancel(state: Order) -> None:
        calls.append("cancel")

    async def release(state: Order) -> None:
        calls.append("release")

    async def charge(state: Order) -> Order:
        if state.order == "bad":
            raise StepFailedError("card declined")
        calls.append("charge")
        return state

    saga = Saga("order", Order, [
        S("open", compensation=cancel),
        S("reserve", reserve, compensation=release),
        S("mark", compensation=cancel),  # in the middle: passed without a write too
        S("charge", charge, retry=PATIENT),
    ])

    async def main() -> None:
        async with database(db_url) as engine:
            record, history, saves = await _run(engine, saga, Order(order="ok"))
            assert record.status is SagaStatus.COMPLETED, record.error
            # create (reserve's first attempt armed), reserve -> charge, charge -> done;
            # with "open" and "mark" written as steps of their own it would be 4.
            assert saves == 2
            assert [(e.step, e.outcome) for e in history if e.phase == "action"] == [
                ("reserve", "started"), ("reserve", "succeeded"),
                ("charge", "started"), ("charge", "succeeded")]
            assert calls == ["reserve", "charge"]

            calls.clear()
            record, history, _ = await _run(engine, saga, Order(order="bad"))
            assert record.status is SagaStatus.COMPENSATED, record.error
            # Backward, the steps without an action compensate like any other.
            assert calls == ["reserve", "cancel", "release", "cancel"]
            assert [e.step for e in history if e.phase == "compensation"
                    and e.outcome == "succeeded"] == ["mark", "reserve", "open"]

    asyncio.run(main())


def test_step_failed_error_fails_at_once_and_the_compensations_see_its_state(
        db_url: str) -> None:
    seen: list[str | None] = []

    async def reserve(state: Order) -> Order:
        state.reserved = True
        return state

    async def release(state: Order) -> None:
        seen.append(state.failure)

    async def charge(state: Order) -> Order:
        state.failure = "card declined"
        state.charged = True  # changed before failing: kept, as the step said so
        raise StepFailedError("declined by the bank", state=state)

    async def refund(state: Order) -> None:
        seen.append("refund")  # never: a step that failed for good is not compensated

    saga = Saga("order", Order, [
        S("reserve", reserve, compensation=release),
        S("charge", charge, compensation=refund, retry=PATIENT),
    ])

    async def main() -> None:
        async with database(db_url) as engine:
            record, history, _ = await _run(engine, saga, Order(order="o-1"))
        assert record.status is SagaStatus.COMPENSATED
        assert record.error == "step 'charge': declined by the bank"
        assert seen == ["card declined"]
        final = Order.model_validate_json(record.state)
        assert final.failure == "card declined" and final.reserved and final.charged
        charge_lines = [(e.outcome, e.attempt, e.error) for e in history
                        if e.step == "charge"]
        assert charge_lines == [("started", 1, None), ("failed", 1, "declined by the bank")]

    asyncio.run(main())


def test_step_failed_error_from_a_commands_reply(db_url: str) -> None:
    """A participant's refusal (a reply, not an error) fails the step for good."""
    app = App("shop", broker=testing.memory_url())
    asked: list[str] = []

    @app.responder("payments.charge")
    async def charge(request: dict[str, Any]) -> dict[str, str]:
        asked.append(request["order"])
        return {"type": "DECLINED", "reason": "insufficient funds"}

    def on_reply(state: Order, reply: dict[str, str]) -> Order:
        if reply["type"] == "DECLINED":
            state.failure = reply["reason"]
            raise StepFailedError(reply["reason"], state=state)
        return state

    cancelled: list[str | None] = []

    async def cancel(state: Order) -> None:
        cancelled.append(state.failure)

    saga = Saga("order", Order, [
        S("open", compensation=cancel),
        S("charge", Command("payments.charge", lambda s: {"order": s.order}, on_reply),
          retry=PATIENT, timeout=5),
    ])

    async def main() -> None:
        async with database(db_url) as engine:
            record, _, _ = await _run(engine, saga, Order(order="o-2"), app)
        assert record.status is SagaStatus.COMPENSATED
        assert asked == ["o-2"]  # asked once: a refusal is not retried
        assert cancelled == ["insufficient funds"]

    asyncio.run(main())


def test_step_failed_error_in_a_parallel_branch_compensates_its_sibling(db_url: str) -> None:
    undone: list[str] = []
    reasons: list[str | None] = []

    async def reserve(state: Order) -> Order:
        state.reserved = True
        return state

    async def release(state: Order) -> None:
        undone.append("release")
        reasons.append(state.failure)

    async def charge(state: Order) -> Order:
        await asyncio.sleep(0.05)  # fails after its sibling succeeded
        state.failure = "card declined"
        raise StepFailedError("declined", state=state)

    async def refund(state: Order) -> None:
        undone.append("refund")

    async def cancel(state: Order) -> None:
        undone.append("cancel")

    saga = Saga("order", Order, [
        S("open", compensation=cancel),
        Parallel("both", (S("reserve", reserve, compensation=release),
                          S("charge", charge, compensation=refund, retry=PATIENT))),
    ])

    async def main() -> None:
        async with database(db_url) as engine:
            record, history, _ = await _run(engine, saga, Order(order="o-3"))
        assert record.status is SagaStatus.COMPENSATED
        assert undone == ["release", "cancel"]
        assert reasons == ["card declined"]  # the failed branch's change was merged
        final = Order.model_validate_json(record.state)
        assert final.reserved and final.failure == "card declined"
        assert [e.attempt for e in history if e.step == "charge" and e.outcome == "failed"] \
            == [1]

    asyncio.run(main())


def test_step_failed_error_with_a_state_of_another_kind_is_a_plain_failure(
        db_url: str) -> None:
    """A wrong ``state`` is the step's bug: a TypeError, retried like any error."""
    attempts: list[int] = []

    class Other(BaseModel):
        x: int = 1

    async def charge(state: Order) -> Order:
        attempts.append(1)
        raise StepFailedError("declined", state=Other())

    async def cancel(state: Order) -> None:
        return None

    saga = Saga("order", Order, [
        S("open", compensation=cancel),
        S("charge", charge, retry=RetryPolicy(max_attempts=3, backoff=0.01)),
    ])

    async def main() -> None:
        async with database(db_url) as engine:
            record, _, _ = await _run(engine, saga, Order(order="o-4"))
        assert record.status is SagaStatus.COMPENSATED
        assert len(attempts) == 3
        assert record.error is not None and "TypeError" in record.error

    asyncio.run(main())


def test_step_failed_error_in_a_compensation_parks_the_saga_at_once(db_url: str) -> None:
    """A compensation that cannot undo, for good (the refund was refused), parks the
    saga in FAILED_COMPENSATION at once, its state kept, for a person to look at."""
    tries: list[int] = []

    async def charge(state: Order) -> Order:
        state.charged = True
        return state

    async def refund(state: Order) -> None:
        tries.append(1)
        state.failure = "refund refused: account closed"
        raise StepFailedError("refund refused", state=state)

    async def ship(state: Order) -> None:
        raise StepFailedError("nothing to ship")

    saga = Saga("order", Order, [
        S("charge", charge, compensation=refund, compensation_retry=PATIENT),
        S("ship", ship),
    ])

    async def main() -> None:
        async with database(db_url) as engine:
            record, _, _ = await _run(engine, saga, Order(order="o-5"))
        assert record.status is SagaStatus.FAILED_COMPENSATION
        assert len(tries) == 1
        assert record.error == "compensation of step 'charge': refund refused"
        assert Order.model_validate_json(record.state).failure == \
            "refund refused: account closed"

    asyncio.run(main())


@pytest.mark.parametrize("how", ["step-failed", "retries-exhausted", "retriable-parks"])
def test_a_final_failure_is_written_with_what_follows_it(db_url: str, how: str) -> None:
    """One write records a step's final failure and the saga turning back (or parking):
    a crash between two writes would have left the failure recorded and the saga still
    going forward, and the step would have run again on resume."""
    async def reserve(state: Order) -> Order:
        state.reserved = True
        return state

    async def release(state: Order) -> None: ...

    async def charge(state: Order) -> Order:
        if how == "step-failed":
            raise StepFailedError("declined")
        raise ConnectionError("bank down")

    saga = Saga("order", Order, [
        S("reserve", reserve, compensation=release),
        S("charge", charge, retry=RetryPolicy(max_attempts=2, backoff=0.01),
          retriable=how == "retriable-parks"),
    ])

    async def main() -> None:
        async with database(db_url) as engine:
            app = App("shop", broker=testing.memory_url())
            store = CountingStore(engine)
            sagas = SagaEngine(app, store, [saga], poll_interval=0.05)
            async with app:
                saga_id = await sagas.start(saga, Order(order="o-9"))
                record = await sagas.wait(saga_id, 20)
        expected = SagaStatus.PARKED if how == "retriable-parks" else SagaStatus.COMPENSATED
        assert record.status is expected
        turned = SagaStatus.PARKED if how == "retriable-parks" else SagaStatus.COMPENSATING
        [write] = [w for w in store.writes if ("charge", "failed") in w[1]
                   and w[0] is turned]
        assert write[1][-2:] == [("charge", "failed"), ("", str(turned))]
        failures = [w for w in store.writes if ("charge", "failed") in w[1]]
        # The last attempt's failure is not written alone (an earlier one that is
        # retried is, with its next attempt's time).
        assert len(failures) == (1 if how == "step-failed" else 2), store.writes

    asyncio.run(main())
