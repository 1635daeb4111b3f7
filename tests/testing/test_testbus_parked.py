"""TestBus with non-blocking retries: a parked message keeps the bus from being idle,
and the fake clock skips its backoff (due times are wall-clock; the wait is not)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from tidings import App, Message, RetryPolicy
from tidings.testing import TestBus


def test_idle_waits_for_a_parked_retry_and_the_fake_clock_skips_its_backoff() -> None:
    asyncio.run(_scenario())


async def _scenario() -> None:
    app = App("billing")
    attempts: list[int] = []

    @app.subscriber("payments", retry=RetryPolicy(backoff=60, max_backoff=60, jitter=0,
                                                  blocking=False))
    async def charge(payload: dict[str, Any], message: Message) -> None:
        attempts.append(message.attempt)
        if message.attempt == 1:
            raise ConnectionError("gateway down")

    started = time.monotonic()
    async with TestBus(app, clock=True) as bus:
        await app.publish("payments", {"n": 1}, key="order-1")
        await bus.idle()
        assert attempts == [1, 2]
        assert bus.topics() == ["payments"]  # the park log is tidings' own
    assert time.monotonic() - started < 20, "the backoff was waited for in real time"
