"""tidings.testing.TestBus: apps on a fresh memory broker, what they published, idle
without sleeps, and a fake clock that skips retry backoffs and delayed deliveries."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from pydantic import BaseModel

from tidings import App, ConfigurationError, Message, RetryPolicy
from tidings.testing import TestBus


class OrderPlaced(BaseModel):
    order_id: int
    total: int


def billing_app(failures: int = 0, backoff: float = 0.1) -> tuple[App, list[int]]:
    """An app that invoices each order, failing the first ``failures`` attempts."""
    app = App("billing", retry=RetryPolicy(max_attempts=5, backoff=backoff, jitter=0))
    attempts: list[int] = []

    @app.subscriber("orders")
    async def invoice(order: OrderPlaced, message: Message) -> None:
        attempts.append(message.attempt)
        if message.attempt <= failures:
            raise RuntimeError("ledger busy")
        await app.publish("invoices", {"order_id": order.order_id, "amount": order.total},
                          key=str(order.order_id))

    return app, attempts


def test_records_what_was_published_with_the_envelope() -> None:
    async def scenario() -> None:
        app, _ = billing_app()
        async with TestBus(app) as bus:
            placed = await app.publish("orders", {"order_id": 7, "total": 30}, key="7")
            await bus.idle()
            [invoice] = bus.assert_published("invoices", {"order_id": 7}, key="7", count=1)
            assert bus.payloads("invoices") == [{"order_id": 7, "amount": 30}]
            assert invoice.correlation_id == placed.id and invoice.causation_id == placed.id
            assert bus.topics() == ["invoices", "orders"]
            bus.assert_not_published("refunds")
            assert bus.pending() == []

    asyncio.run(scenario())


def test_idle_waits_for_retries_and_the_fake_clock_skips_their_backoff() -> None:
    async def scenario() -> float:
        app, attempts = billing_app(failures=3, backoff=20)
        async with TestBus(app, clock=True) as bus:
            started = time.monotonic()
            await app.publish("orders", {"order_id": 1, "total": 5})
            await bus.idle()
            assert attempts == [1, 2, 3, 4]
            bus.assert_published("invoices", {"order_id": 1}, count=1)
            return time.monotonic() - started

    # 20 + 40 + 80 s of backoff, skipped.
    assert asyncio.run(scenario()) < 5


def test_without_the_fake_clock_idle_says_what_is_pending() -> None:
    async def scenario() -> None:
        app, attempts = billing_app(failures=1, backoff=60)
        async with TestBus(app) as bus:
            await app.publish("orders", {"order_id": 1, "total": 5})
            with pytest.raises(TimeoutError, match="group billing has 1 unhandled on orders"):
                await bus.idle(timeout=0.5)
            assert attempts == [1]

    asyncio.run(scenario())


def test_the_fake_clock_delivers_delayed_messages_now() -> None:
    async def scenario() -> None:
        app, _ = billing_app()
        async with TestBus(app, clock=True) as bus:
            await app.publish("orders", {"order_id": 2, "total": 9}, delay=3600)
            assert bus.pending() == ["1 delayed message(s) not yet due"]
            await bus.idle(timeout=5)
            bus.assert_published("invoices", {"order_id": 2, "amount": 9})

    asyncio.run(scenario())


def test_dead_letters_and_idle_after_giving_up() -> None:
    async def scenario() -> None:
        app, attempts = billing_app(failures=99, backoff=1)
        async with TestBus(app, clock=True) as bus:
            await app.publish("orders", {"order_id": 3, "total": 1})
            await app.publish("orders", {"order_id": "not a number"})
            await bus.idle()
            assert attempts.count(1) == 1 and len(attempts) == 5  # the bad one never ran
            letters = bus.dead_letters("orders")
            assert sorted(d.error_type.rsplit(".", 1)[-1] for d in letters) == \
                ["DecodeError", "RuntimeError"]
            bus.assert_not_published("invoices")

    asyncio.run(scenario())


def test_assertions_fail_with_what_was_there() -> None:
    async def scenario() -> None:
        app, _ = billing_app()
        async with TestBus(app) as bus:
            await app.publish("orders", {"order_id": 4, "total": 2})
            await bus.idle()
            with pytest.raises(AssertionError, match=r"found 0 of 1.*'order_id': 4"):
                bus.assert_published("invoices", {"order_id": 5})
            with pytest.raises(AssertionError, match="found 1 of 1"):
                bus.assert_published("invoices", count=2)
            with pytest.raises(AssertionError, match="expected nothing on 'invoices'"):
                bus.assert_not_published("invoices")

    asyncio.run(scenario())


def test_apps_move_to_the_memory_bus_and_a_running_app_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # an App's default broker is sqlite:///.tidings/bus.db here

    async def scenario() -> None:
        responder = App("greeter")

        @responder.responder("greet")
        async def greet(body: dict) -> dict:
            return {"hello": body["name"]}

        client = App("client")
        async with TestBus(responder, client) as bus:
            assert responder.broker == client.broker == bus.url
            assert await client.request("greet", {"name": "Bob"}, timeout=5) == {"hello": "Bob"}
            await bus.idle()
            with pytest.raises(ConfigurationError, match="is running"):
                await TestBus(client).__aenter__()

    asyncio.run(scenario())
    assert not (tmp_path / ".tidings").exists()
