"""Tests of the billing service on the in-memory bus: no broker to start, no sleeps."""

import asyncio

import pytest

from tidings.testing import TestBus

from .billing import app, ledger


def test_an_order_is_invoiced_and_reminded_a_day_later() -> None:
    async def scenario() -> None:
        async with TestBus(app, clock=True) as bus:  # clock: delays are skipped
            placed = await app.publish(
                "orders", {"order_id": 1, "customer": "ana@example.com", "total": 30}, key="1")
            await bus.idle()  # every message handled, the day-long delay included
            [invoice] = bus.assert_published("invoices", {"order_id": 1, "amount": 30})
            assert invoice.key == "1"
            assert invoice.correlation_id == placed.id
            bus.assert_published("emails", {"to": "ana@example.com"}, count=1)

    asyncio.run(scenario())


def test_a_busy_ledger_is_retried_then_dead_lettered() -> None:
    async def scenario() -> None:
        async with TestBus(app, clock=True) as bus:
            ledger.busy = {2: 2, 3: 99}  # order 2: two failures, then it works
            await app.publish("orders", {"order_id": 2, "customer": "bo@example.com",
                                         "total": 5})
            await app.publish("orders", {"order_id": 3, "customer": "cy@example.com",
                                         "total": 7})
            await bus.idle()  # 30 s, 60 s, 120 s of backoff: skipped
            bus.assert_published("invoices", {"order_id": 2}, count=1)
            bus.assert_published("invoices", {"order_id": 3}, count=0)
            [dead] = bus.dead_letters("orders")
            assert dead.error_type == "builtins.ConnectionError"
            assert dead.attempts == 4

    asyncio.run(scenario())


def test_bad_input_is_dead_lettered_at_once() -> None:
    async def scenario() -> None:
        async with TestBus(app) as bus:
            await app.publish("orders", {"order_id": "four"})
            await bus.idle()
            assert [d.attempts for d in bus.dead_letters("orders")] == [1]
            bus.assert_not_published("invoices")

    asyncio.run(scenario())


@pytest.fixture(autouse=True)
def _ledger_reset() -> None:
    ledger.busy.clear()
    ledger.entries.clear()
