"""Batch subscribers: lists of typed payloads, per-partition order, poison records alone
to the dead letters, a failing batch retried whole and then dead-lettered record by record."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import BaseModel

from ... import ConfigurationError, DecodeError, Message, RetryPolicy
from ...ports import Capability
from ._backend import Backend
from ._requires import requires
from ._util import Names, eventually, watch_letters

FAST = RetryPolicy(max_attempts=3, backoff=0.02, jitter=0)


class Order(BaseModel):
    n: int
    user: str


@requires(Capability.GROUPS)
def test_batches_of_typed_payloads_in_per_key_order(backend: Backend, names: Names) -> None:
    topic = names("batched")

    async def main() -> None:
        app = backend.app("svc")
        batches: list[list[Order]] = []
        envelopes: list[Message] = []

        @app.subscriber(topic, batch=True, max_batch=50)
        async def handle(orders: list[Order], messages: list[Message]) -> None:
            assert len(orders) == len(messages)
            batches.append(orders)
            envelopes.extend(messages)

        async with app:
            await app.publish_many(topic, [{"n": n, "user": f"u{n % 7}"} for n in range(300)],
                                   key=lambda p: p["user"])
            await eventually(lambda: sum(map(len, batches)) >= 300)
            await asyncio.sleep(0.2)
        handled = [order for batch in batches for order in batch]
        assert sorted(o.n for o in handled) == list(range(300)), "each message exactly once"
        assert all(isinstance(o, Order) for o in handled)
        assert max(map(len, batches)) <= 50
        assert len(batches) < 300, "messages fetched together run together"
        for user in {o.user for o in handled}:
            ns = [o.n for o in handled if o.user == user]
            assert ns == sorted(ns), f"key {user} out of order: {ns}"
        assert all(m.attempt == 1 for m in envelopes)
        assert {m.topic for m in envelopes} == {topic}

    asyncio.run(main())


@requires(Capability.GROUPS)
def test_poison_record_is_dead_lettered_alone_and_its_batch_runs(
        backend: Backend, names: Names) -> None:
    topic = names("batch-poison")

    async def main() -> None:
        app = backend.app("svc")
        handled: list[int] = []

        @app.subscriber(topic, batch=True, retry=FAST)
        async def handle(orders: list[Order]) -> None:
            handled.extend(o.n for o in orders)

        async with app, watch_letters(app, topic) as watch:
            await app.publish(topic, {"n": 1, "user": "a"})
            await app.publish(topic, b"{not json")
            await app.publish(topic, {"n": 2, "user": "a"})
            await eventually(lambda: len(handled) == 2)
            letters = await watch.wait(1)
        assert sorted(handled) == [1, 2]
        assert len(letters) == 1
        assert letters[0].error_type == f"{DecodeError.__module__}.DecodeError"
        assert letters[0].record.value == b"{not json"

    asyncio.run(main())


@requires(Capability.GROUPS)
def test_failing_batch_is_retried_whole_then_dead_lettered_record_by_record(
    backend: Backend, names: Names
) -> None:
    topic = names("batch-fail")

    async def main() -> None:
        app = backend.app("svc")
        attempts: list[list[int]] = []
        later: list[int] = []

        @app.subscriber(topic, batch=True, retry=FAST)
        async def handle(orders: list[Order], messages: list[Message]) -> None:
            ns = [o.n for o in orders]
            if 3 in ns:
                attempts.append([m.attempt for m in messages])
                raise ValueError("cannot handle 3")
            later.extend(ns)

        async with app, watch_letters(app, topic) as watch:
            await app.publish_many(topic, [{"n": n, "user": "a"} for n in range(5)])
            await eventually(lambda: len(attempts) == 3)
            await watch.wait(1)
            await app.publish(topic, {"n": 9, "user": "a"})
            await eventually(lambda: 9 in later)
            failed = len(attempts[0])
            letters = await watch.wait(failed)
        assert [set(a) for a in attempts] == [{1}, {2}, {3}]
        assert sorted(d.record.value for d in letters) == sorted(
            f'{{"n":{n},"user":"a"}}'.encode() for n in range(5) if n not in later
        )
        assert all(d.error_message == "cannot handle 3" and d.attempts == 3 for d in letters)
        assert 9 in later, "the consumer goes on after dead-lettering a batch"

    asyncio.run(main())


def test_batch_declarations_are_checked(backend: Backend, names: Names) -> None:
    app = backend.app("svc")
    with pytest.raises(ConfigurationError, match="list of payloads"):
        @app.subscriber(names("a"), batch=True)
        async def single(order: Order) -> None: ...
    with pytest.raises(ConfigurationError, match="one batch at a time"):
        @app.subscriber(names("b"), batch=True, concurrency=4)
        async def parallel(orders: list[Order]) -> None: ...
    with pytest.raises(ConfigurationError, match="max_batch"):
        @app.subscriber(names("c"), batch=True, max_batch=0)
        async def empty(orders: list[Order]) -> None: ...
