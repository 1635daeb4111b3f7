"""A backend's fetch that raises something other than a ``TransportError`` (a defect,
or an error it misclassified) must not end the subscriber quietly: the consumer logs it
with its traceback and fetches again, and nothing published is lost.

Before, the fetch task died with the exception unseen, and the subscriber handled
nothing more (only ``App.health()`` said "1 of 1 subscribers are not running").
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from tidings import App
from tidings.backends.memory import MemoryBroker, MemoryTransport


def test_an_unexpected_fetch_error_is_logged_and_the_subscriber_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    transport = MemoryTransport(MemoryBroker())
    real_subscribe = transport.subscribe
    failures_left = 2

    def subscribe(*args: Any, **kwargs: Any) -> Any:
        subscription = real_subscribe(*args, **kwargs)
        real_fetch = subscription.fetch

        async def fetch(*a: Any, **k: Any) -> Any:
            nonlocal failures_left
            if failures_left:
                failures_left -= 1
                raise RuntimeError("a defect in the backend")
            return await real_fetch(*a, **k)

        subscription.fetch = fetch  # type: ignore[method-assign]
        return subscription

    transport.subscribe = subscribe  # type: ignore[method-assign]
    app = App("ledger", broker=transport)
    seen: list[int] = []

    @app.subscriber("entries")
    async def handle(n: int) -> None:
        seen.append(n)

    async def main() -> None:
        async with app:
            for n in range(5):
                await app.publish("entries", n)
            for _ in range(500):
                if len(seen) == 5:
                    break
                await asyncio.sleep(0.02)
            health = await app.health()
        assert sorted(seen) == list(range(5))
        assert health.ready, health.reasons

    with caplog.at_level(logging.ERROR, logger="tidings.consumer"):
        asyncio.run(main())
    failed = [r for r in caplog.records if "failed unexpectedly" in r.getMessage()]
    assert len(failed) == 2
    assert failed[0].exc_info is not None
    assert "a defect in the backend" in str(failed[0].exc_info[1])
