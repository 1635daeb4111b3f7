"""Publish/subscribe: delivery, typed payloads, the envelope, fan-out, bad input."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from pydantic import BaseModel

from ... import ConfigurationError, Message, NotRunningError, SerializationError
from ...ports import Capability
from ._backend import Backend
from ._requires import requires
from ._util import Handler, Names, eventually


class UserRegistered(BaseModel):
    type: str
    userId: int
    username: str


@requires(Capability.GROUPS)
def test_delivery_with_typed_payload_and_envelope(backend: Backend, names: Names) -> None:
    topic = names("users")

    async def main() -> None:
        producer, consumer = backend.app("producer"), backend.app("listener")
        got: list[tuple[UserRegistered, Message]] = []

        @consumer.subscriber(topic)
        async def on_user(event: UserRegistered, message: Message) -> None:
            got.append((event, message))

        async with producer, consumer:
            before = time.time()
            published = await producer.publish(
                topic, {"type": "USER_REGISTERED", "userId": 7, "username": "Alice Smith"},
                key="k-7", headers={"trace": "abc"},
            )
            await eventually(lambda: len(got) == 1)
        event, message = got[0]
        assert event == UserRegistered(type="USER_REGISTERED", userId=7, username="Alice Smith")
        assert (message.topic, message.key, message.attempt) == (topic, "k-7", 1)
        assert message.id == published.id
        assert message.partition == published.partition
        if Capability.APPEND_OFFSETS in producer.transport.capabilities:
            assert message.offset == published.offset
        else:  # declared: the backend cannot tell a publisher the offset its record got
            assert published.offset is None
        assert message.headers["trace"] == "abc"
        assert message.correlation_id == published.id
        assert before - 1 <= message.timestamp <= time.time() + 1

    asyncio.run(main())


@requires(Capability.GROUPS)
def test_dict_bytes_and_model_payloads(backend: Backend, names: Names) -> None:
    topic_d, topic_b = names("dicts"), names("bytes")

    async def main() -> None:
        app = backend.app("svc")
        dicts: list[dict[str, Any]] = []
        blobs: list[bytes] = []
        app.subscriber(topic_d)(_collector(dicts))
        app.subscriber(topic_b)(_bytes_collector(blobs))
        async with app:
            await app.publish(topic_d, UserRegistered(type="T", userId=1, username="u"))
            await app.publish(topic_b, b"\x00\xffraw")
            await eventually(lambda: dicts and blobs)
        assert dicts == [{"type": "T", "userId": 1, "username": "u"}]
        assert blobs == [b"\x00\xffraw"]

    asyncio.run(main())


def _collector(out: list[dict[str, Any]]) -> Handler:
    async def collect(payload: dict[str, Any]) -> None:
        out.append(payload)
    return collect


def _bytes_collector(out: list[bytes]) -> Handler:
    async def collect(payload: bytes) -> None:
        out.append(payload)
    return collect


@requires(Capability.GROUPS)
def test_every_group_gets_every_message(backend: Backend, names: Names) -> None:
    topic = names("orders")

    async def main() -> None:
        producer = backend.app("producer")
        billing, shipping = backend.app("billing"), backend.app("shipping")
        seen: dict[str, list[int]] = {billing.name: [], shipping.name: []}
        for app in (billing, shipping):
            app.subscriber(topic)(_numbers(seen[app.name]))
        async with producer, billing, shipping:
            await producer.publish_many(topic, [{"n": i} for i in range(50)])
            await eventually(lambda: all(len(v) == 50 for v in seen.values()))
        assert sorted(seen[billing.name]) == sorted(seen[shipping.name]) == list(range(50))

    asyncio.run(main())


def _numbers(out: list[int]) -> Handler:
    async def collect(payload: dict[str, Any]) -> None:
        out.append(payload["n"])
    return collect


@requires(Capability.GROUPS)
def test_handler_publishes_with_causation_and_correlation(backend: Backend, names: Names) -> None:
    first, second = names("first"), names("second")

    async def main() -> None:
        app = backend.app("chain")
        seen: list[Message] = []

        @app.subscriber(first)
        async def relay(payload: dict[str, Any]) -> None:
            await app.publish(second, payload)

        @app.subscriber(second)
        async def sink(payload: dict[str, Any], message: Message) -> None:
            seen.append(message)

        async with app:
            root = await app.publish(first, {"x": 1})
            await eventually(lambda: seen)
        assert seen[0].correlation_id == root.id
        assert seen[0].causation_id == root.id

    asyncio.run(main())


def test_bad_input_is_rejected_before_anything_is_sent(backend: Backend, names: Names) -> None:
    topic = names("bad")

    async def main() -> None:
        app = backend.app("svc")
        with pytest.raises(NotRunningError):
            await app.publish(topic, {"a": 1})
        async with app:
            with pytest.raises(SerializationError, match="object"):
                await app.publish(topic, {"a": object()})
            with pytest.raises(ConfigurationError, match="topic"):
                await app.publish("no spaces allowed", {})
            with pytest.raises(ConfigurationError, match="key"):
                await app.publish(topic, {}, key=5)  # type: ignore[arg-type]
        with pytest.raises(ConfigurationError, match="concurrency"):
            app.subscriber(topic, concurrency=0)(_collector([]))

    asyncio.run(main())


def test_two_handlers_on_one_topic_in_one_group_is_an_error(backend: Backend, names: Names) -> None:
    app = backend.app("svc")
    app.subscriber(names("t"))(_collector([]))
    with pytest.raises(ConfigurationError, match="split"):
        app.subscriber(names("t"))(_collector([]))
    app.subscriber(names("t"), group="other")(_collector([]))


@requires(Capability.GROUPS, Capability.ORDER_PER_KEY)
def test_publisher_never_waits_for_consumers(backend: Backend, names: Names) -> None:
    topic = names("levelling")

    async def main() -> None:
        producer, slow = backend.app("producer"), backend.app("slow")
        handled: list[int] = []

        @slow.subscriber(topic, max_in_flight=5, concurrency=5)
        async def crawl(payload: dict[str, Any]) -> None:
            await asyncio.sleep(0.2)
            handled.append(payload["n"])

        async with producer, slow:
            started = time.monotonic()
            for i in range(300):
                await producer.publish(topic, {"n": i})
            elapsed = time.monotonic() - started
            await asyncio.sleep(0.3)
            in_flight = slow._consumers[0].in_flight
            # Past the backpressure the consumer keeps fetching (its loop did not die).
            await eventually(lambda: len(handled) >= 20, 15, "work beyond max_in_flight")
        # 300 handlers at 0.2 s with 5 at a time take 12 s: publishing did not wait.
        assert elapsed < 10, elapsed
        assert len(handled) < 300
        assert in_flight <= 5

    asyncio.run(main())
