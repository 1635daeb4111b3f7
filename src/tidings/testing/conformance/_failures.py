"""Retries with backoff, dead letters with the error attached, poison messages, re-drive."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from ... import App, DecodeError, Headers, Message, RetryPolicy
from ..._dlq import DeadLetter
from ...ports import Capability
from ._backend import Backend
from ._requires import requires
from ._util import Handler, Names, eventually, wait_letters, watch_letters

FAST = RetryPolicy(max_attempts=3, backoff=0.02, jitter=0)


@requires(Capability.GROUPS)
def test_retry_until_success(backend: Backend, names: Names) -> None:
    topic = names("flaky")

    async def main() -> None:
        app = backend.app("svc")
        attempts: list[tuple[int, float]] = []

        @app.subscriber(topic, retry=FAST)
        async def flaky(payload: dict[str, Any], message: Message) -> None:
            attempts.append((message.attempt, time.monotonic()))
            if message.attempt < 3:
                raise ConnectionError("try again")

        async with app:
            await app.publish(topic, {"a": 1})
            await eventually(lambda: len(attempts) == 3)
            await asyncio.sleep(0.2)
            infos = {t.name for t in await app.transport.describe_topics()}
        assert [a for a, _ in attempts] == [1, 2, 3]
        gaps = [b - a for (_, a), (_, b) in itertools.pairwise(attempts)]
        assert gaps[0] >= 0.015 and gaps[1] >= 0.035, gaps  # exponential backoff
        assert f"{topic}.dlq" not in infos or not await _pending(backend, topic)

    asyncio.run(main())


async def _pending(backend: Backend, topic: str) -> list[DeadLetter]:
    app = backend.app("admin")
    async with app:
        return await app.dead_letters(topic).pending()


@requires(Capability.GROUPS)
def test_exhausted_retries_dead_letter_with_the_error_and_consumer_goes_on(
        backend: Backend, names: Names) -> None:
    topic = names("poison")

    async def main() -> None:
        app = backend.app("svc")
        good: list[int] = []

        @app.subscriber(topic, retry=FAST)
        async def handle(payload: dict[str, Any]) -> None:
            if payload["n"] == 3:
                raise ValueError("cannot handle 3")
            good.append(payload["n"])

        async with app, watch_letters(app, topic) as watch:
            for n in range(6):
                await app.publish(topic, {"n": n}, key="same-key", headers={"h": "v"})
            await eventually(lambda: len(good) == 5)
            letters = await watch.wait(1)
        assert good == [0, 1, 2, 4, 5], "the poison message did not block its key for good"
        assert len(letters) == 1
        letter = letters[0]
        assert letter.error_type == "builtins.ValueError"
        assert letter.error_message == "cannot handle 3"
        assert letter.attempts == 3
        assert letter.group == app.name
        assert letter.original_topic == topic
        assert letter.record.key == "same-key"
        assert letter.record.headers["h"] == "v"
        assert letter.record.value == b'{"n":3}'

    asyncio.run(main())


Handled = list[tuple[str | None, int]]


def two_keys_on_one_partition(
        backend: Backend, topic: str, concurrency: int, retry: RetryPolicy,
        failures: dict[tuple[str | None, int], int],
) -> tuple[App, Handled, Callable[[range], Awaitable[None]]]:
    """An app whose handler fails each ``(key, seq)`` of ``failures`` that many
    attempts; what it handled, in order; and a ``publish(seqs)`` that sends each seq
    under key ``slow`` then ``fast``, both to partition 0."""
    app = backend.app("svc")
    handled: Handled = []

    @app.subscriber(topic, concurrency=concurrency, retry=retry)
    async def handle(payload: dict[str, Any], message: Message) -> None:
        item = (message.key, payload["seq"])
        if failures.get(item, 0) >= message.attempt:
            raise ConnectionError("not yet")
        handled.append(item)

    async def publish(seqs: range) -> None:
        for seq in seqs:  # one partition: the keys share it
            await app.publish(topic, {"seq": seq}, key="slow", partition=0)
            await app.publish(topic, {"seq": seq}, key="fast", partition=0)

    return app, handled, publish


@requires(Capability.GROUPS, Capability.ORDER_PER_KEY)
@pytest.mark.parametrize("concurrency", [1, 4])
def test_a_retrying_record_holds_back_only_its_own_key_in_order(
        backend: Backend, names: Names, concurrency: int) -> None:
    """Axon's ordering-preserving retry, not Spring's retry topics: while a record waits
    for its retry, the later records of its key wait behind it, in order (those
    fetched before the failure and after it), and the other keys of the partition go on."""
    topic = names("parked")
    # (key, seq): attempts that fail
    failures: dict[tuple[str | None, int], int] = {("slow", 0): 2, ("slow", 2): 1}

    async def main() -> None:
        app, handled, publish = two_keys_on_one_partition(
            backend, topic, concurrency, RetryPolicy(max_attempts=5, backoff=0.3, jitter=0),
            failures)
        async with app:
            await publish(range(3))
            await eventually(lambda: ("fast", 2) in handled, what="the other key went on")
            await publish(range(3, 5))  # fetched while "slow" 0 still waits for a retry
            await eventually(lambda: ("fast", 4) in handled, what="the other key went on")
            assert ("slow", 0) not in handled, "slow 0 cannot succeed before 0.9 s"
            await eventually(lambda: len(handled) == 10, what="every record handled")
        assert [seq for key, seq in handled if key == "slow"] == [0, 1, 2, 3, 4]
        assert [seq for key, seq in handled if key == "fast"] == [0, 1, 2, 3, 4]

    asyncio.run(main())


@requires(Capability.GROUPS)
def test_undecodable_message_is_dead_lettered_at_once(backend: Backend, names: Names) -> None:
    topic = names("typed")

    async def main() -> None:
        app = backend.app("svc")
        ok: list[dict[str, Any]] = []

        @app.subscriber(topic, retry=RetryPolicy(max_attempts=5, backoff=1))
        async def handle(payload: dict[str, Any]) -> None:
            ok.append(payload)

        async with app, watch_letters(app, topic) as watch:
            await app.publish(topic, b"{not json")
            await app.publish(topic, [1, 2])
            await app.publish(topic, {"fine": True})
            await eventually(lambda: ok)
            letters = await watch.wait(2)
        assert ok == [{"fine": True}]
        assert {d.error_type for d in letters} == {f"{DecodeError.__module__}.DecodeError"}
        assert all(d.attempts == 1 for d in letters)

    asyncio.run(main())


@requires(Capability.GROUPS)
def test_give_up_on_skips_retries(backend: Backend, names: Names) -> None:
    topic = names("fatal")

    async def main() -> None:
        app = backend.app("svc")
        calls: list[int] = []

        @app.subscriber(topic, retry=RetryPolicy(max_attempts=5, give_up_on=(KeyError,)))
        async def handle(payload: dict[str, Any], message: Message) -> None:
            calls.append(message.attempt)
            raise KeyError("missing")

        async with app, watch_letters(app, topic) as watch:
            await app.publish(topic, {})
            letters = await watch.wait(1)
        assert calls == [1]
        assert letters[0].attempts == 1

    asyncio.run(main())


@requires(Capability.GROUPS, Capability.REPLAY)  # re-driving reads the DLQ's log
def test_redrive_goes_to_the_failed_group_only(backend: Backend, names: Names) -> None:
    topic = names("redrive")

    async def main() -> None:
        broken, healthy = backend.app("broken"), backend.app("healthy")
        state = {"fixed": False}
        broken_seen: list[int] = []
        healthy_seen: list[int] = []

        @broken.subscriber(topic, retry=RetryPolicy.never())
        async def fails_until_fixed(payload: dict[str, Any]) -> None:
            if not state["fixed"]:
                raise RuntimeError("bug")
            broken_seen.append(payload["n"])

        healthy.subscriber(topic)(_collect(healthy_seen))
        async with broken, healthy:
            await broken.publish(topic, {"n": 1})
            await wait_letters(broken, topic, 1)
            await eventually(lambda: healthy_seen == [1])
            state["fixed"] = True
            dlq = broken.dead_letters(topic)
            assert await dlq.redrive() == 1
            await eventually(lambda: broken_seen == [1])
            await asyncio.sleep(0.3)
            assert await dlq.pending() == []
        assert healthy_seen == [1], "the healthy group did not get the re-driven copy"

    asyncio.run(main())


@requires(Capability.GROUPS, Capability.REPLAY)  # listing and resolving need the log
def test_purge_resolves_pending_dead_letters(backend: Backend, names: Names) -> None:
    topic = names("purge")

    async def main() -> None:
        app = backend.app("svc")

        @app.subscriber(topic, retry=RetryPolicy.never())
        async def fails(payload: dict[str, Any]) -> None:
            raise RuntimeError("nope")

        async with app:
            for n in range(3):
                await app.publish(topic, {"n": n})
            await wait_letters(app, topic, 3)
            assert await app.dead_letters(topic).purge() == 3
            assert await app.dead_letters(topic).pending() == []
            assert Headers.DLQ_RESOLVES

    asyncio.run(main())


def _collect(out: list[int]) -> Handler:
    async def handle(payload: dict[str, Any]) -> None:
        out.append(payload["n"])
    return handle
