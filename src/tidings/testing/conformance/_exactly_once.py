"""Exactly-once subscribers: what a handler publishes is committed with the offset it
consumed, in one transaction, or the backend refuses them at start (memory and SQLite
cannot; the inbox of ``tidings.sqlalchemy`` gives exactly-once effects there)."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from ... import Message, Published, RetryPolicy
from ...ports import Capability
from ._backend import Backend
from ._requires import requires
from ._util import Names, eventually

FAST = RetryPolicy(max_attempts=3, backoff=0.02, jitter=0)


@requires(Capability.EXACTLY_ONCE, Capability.ORDER_PER_KEY)
def test_outputs_commit_with_the_offset_or_the_backend_refuses(
        backend: Backend, names: Names) -> None:
    source, sink = names("orders"), names("invoices")

    async def main() -> None:
        app = backend.app("billing")
        attempts: Counter[int] = Counter()
        returned: list[Published] = []

        @app.subscriber(source, exactly_once=True, retry=FAST, concurrency=2)
        async def bill(payload: dict[str, Any], message: Message) -> None:
            attempts[payload["n"]] += 1
            returned.append(await app.publish(sink, {"n": payload["n"], "try": message.attempt},
                                              key=message.key))
            if payload["n"] == 4 or (payload["n"] == 2 and message.attempt == 1):
                raise ConnectionError("this attempt's invoice must never appear")

        auditor = backend.app("auditor")
        seen: list[dict[str, Any]] = []

        @auditor.subscriber(sink)
        async def audit(invoice: dict[str, Any]) -> None:
            seen.append(invoice)

        async with auditor, app:
            for n in range(6):
                await app.publish(source, {"n": n}, key=f"order-{n}")
            await eventually(lambda: len(seen) >= 5, 20, "the invoices")
            await asyncio.sleep(0.5)  # nothing more may come
            letters = await app.dead_letters(source).pending()
        assert sorted(i["n"] for i in seen) == [0, 1, 2, 3, 5]
        assert next(i for i in seen if i["n"] == 2)["try"] == 2
        assert attempts[2] == 2 and attempts[4] == 3
        assert [letter.record.value for letter in letters] == [b'{"n":4}']
        assert all(p.offset is None for p in returned), "held until the commit"

    asyncio.run(main())


@requires(Capability.EXACTLY_ONCE)
def test_an_exactly_once_handler_can_make_requests(backend: Backend, names: Names) -> None:
    """A request is sent at once (its handler waits for the reply), not held for the
    commit like what the handler publishes."""
    source, ask = names("orders"), names("ask")

    async def main() -> None:
        app = backend.app("billing")
        answers: list[int] = []

        @app.responder(ask)
        async def answer(body: dict[str, Any]) -> int:
            return int(body["n"]) * 10

        @app.subscriber(source, exactly_once=True)
        async def bill(payload: dict[str, Any]) -> None:
            answers.append(await app.request(ask, payload, timeout=10))

        async with app:
            await app.publish(source, {"n": 4})
            await eventually(lambda: answers == [40], 20, "the answer")

    asyncio.run(main())


@requires(Capability.EXACTLY_ONCE)
def test_readers_of_transactional_output_reach_lag_0_when_idle(
        backend: Backend, names: Names) -> None:
    """Each transaction leaves a marker after its records that no reader ever gets: an
    idle reader still commits past it (Kafka's consumer position), so its lag is 0."""
    source, sink = names("orders"), names("invoices")

    async def main() -> None:
        app, auditor = backend.app("billing"), backend.app("auditor")
        seen: list[dict[str, Any]] = []

        @app.subscriber(source, exactly_once=True)
        async def bill(payload: dict[str, Any]) -> None:
            await app.publish(sink, payload, key=f"k{payload['n'] % 2}")

        @auditor.subscriber(sink)
        async def audit(invoice: dict[str, Any]) -> None:
            seen.append(invoice)

        async with auditor, app:
            for n in range(6):
                await app.publish(source, {"n": n})
            await eventually(lambda: len(seen) == 6, 20, "the invoices")
            await asyncio.sleep(2.0)  # idle
            lags = await auditor.lag()
        assert lags and {p.lag for p in lags} == {0}, lags

    asyncio.run(main())
