"""Delayed delivery, priority work queues, request/reply, replay."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import BaseModel

from ... import ConfigurationError, RemoteError, RequestTimeoutError, Start
from ...ports import Capability
from ._backend import Backend
from ._requires import requires
from ._util import Handler, Names, eventually


@requires(Capability.GROUPS, Capability.DELAY)
def test_delayed_messages_arrive_not_before_their_time(backend: Backend, names: Names) -> None:
    topic = names("later")

    async def main() -> None:
        app = backend.app("svc")
        got: list[tuple[str, float]] = []

        @app.subscriber(topic)
        async def handle(payload: dict[str, Any]) -> None:
            got.append((payload["id"], time.time()))

        async with app:
            sent = time.time()
            await app.publish(topic, {"id": "now"})
            await app.publish(topic, {"id": "rel"}, delay=0.8)
            await app.publish(topic, {"id": "td"}, delay=timedelta(seconds=0.4))
            at = datetime.now(UTC) + timedelta(seconds=1.2)
            await app.publish(topic, {"id": "abs"}, delay=at)
            await eventually(lambda: len(got) == 4, 15)
        when = {i: t - sent for i, t in got}
        assert [i for i, _ in got] == ["now", "td", "rel", "abs"]
        assert when["td"] >= 0.39 and when["rel"] >= 0.79 and when["abs"] >= 1.19, when
        assert when["abs"] < 6, when

    asyncio.run(main())


@requires(Capability.GROUPS, Capability.DELAY)
def test_delayed_message_survives_the_publisher_going_away(backend: Backend, names: Names) -> None:
    topic = names("durable-delay")

    async def main() -> None:
        producer = backend.app("producer")
        async with producer:
            await producer.publish(topic, {"id": 1}, delay=0.5)
        consumer = backend.app("consumer")
        got: list[int] = []

        @consumer.subscriber(topic)
        async def handle(payload: dict[str, Any]) -> None:
            got.append(payload["id"])

        async with consumer:
            await eventually(lambda: got == [1], 15)
            await asyncio.sleep(0.3)
        assert got == [1], "fired exactly once"

    asyncio.run(main())


@requires(Capability.DELAY, Capability.PRIORITY)
def test_bad_delays_are_rejected(backend: Backend, names: Names) -> None:
    async def main() -> None:
        app = backend.app("svc")
        async with app:
            with pytest.raises(ConfigurationError, match="delay"):
                await app.publish(names("t"), {}, delay=-1)
            with pytest.raises(ConfigurationError, match="timezone"):
                await app.publish(names("t"), {}, delay=datetime.now())
            with pytest.raises(ConfigurationError, match="priority"):
                await app.enqueue(names("q"), {}, priority=10)

    asyncio.run(main())


@requires(Capability.GROUPS, Capability.PRIORITY)
def test_work_queue_runs_higher_priority_first_and_each_item_once(
        backend: Backend, names: Names) -> None:
    queue = names("jobs")

    async def main() -> None:
        producer = backend.app("producer")
        async with producer:
            for i in range(30):
                await producer.enqueue(queue, {"id": f"low-{i}"}, priority=1)
            await producer.enqueue(queue, {"id": "urgent"}, priority=9)
            await producer.enqueue(queue, {"id": "soon"}, priority=5)
        done: list[str] = []
        workers = [backend.app("worker-a"), backend.app("worker-b")]
        by_worker: dict[str, list[str]] = {worker.name: [] for worker in workers}
        for worker in workers:
            worker.worker(queue)(_recorder(done, by_worker[worker.name]))
        async with workers[0], workers[1]:
            await eventually(lambda: len(done) == 32, 20)
            await asyncio.sleep(0.2)
        assert sorted(done) == sorted([f"low-{i}" for i in range(30)] + ["urgent", "soon"])
        # Whichever worker held them ran them before its low-priority items (allowing
        # for the one item each worker may have started before its first full fetch).
        for item, limit in (("urgent", 2), ("soon", 3)):
            holder = next(order for order in by_worker.values() if item in order)
            assert holder.index(item) < limit, (item, holder[:6])

    asyncio.run(main())


def _recorder(done: list[str], mine: list[str]) -> Handler:
    async def work(item: dict[str, Any]) -> None:
        await asyncio.sleep(0.01)
        done.append(item["id"])
        mine.append(item["id"])
    return work


class Sum(BaseModel):
    total: int


@requires(Capability.GROUPS)
def test_request_reply(backend: Backend, names: Names) -> None:
    topic, broken, nobody = names("add"), names("broken"), names("nobody")

    async def main() -> None:
        server, client = backend.app("calculator"), backend.app("client")

        @server.responder(topic)
        async def add(body: dict[str, Any]) -> dict[str, Any]:
            return {"total": body["a"] + body["b"]}

        @server.responder(broken)
        async def fail(body: dict[str, Any]) -> dict[str, Any]:
            raise ValueError("division by zero")

        async with server, client:
            assert await client.request(topic, {"a": 2, "b": 3}) == {"total": 5}
            typed = await client.request(topic, {"a": 1, "b": 1}, response_type=Sum)
            assert typed == Sum(total=2)
            results = await asyncio.gather(
                *(client.request(topic, {"a": i, "b": i}) for i in range(20))
            )
            assert [r["total"] for r in results] == [2 * i for i in range(20)]
            with pytest.raises(RemoteError, match="division by zero") as info:
                await client.request(broken, {})
            assert info.value.error_type == "ValueError"
            started = time.monotonic()
            with pytest.raises(RequestTimeoutError, match=nobody):
                await client.request(nobody, {}, timeout=0.5)
            assert 0.45 <= time.monotonic() - started < 3

    asyncio.run(main())


@requires(Capability.GROUPS, Capability.REPLAY)
def test_replay_from_earliest_latest_and_a_point_in_time(backend: Backend, names: Names) -> None:
    topic = names("history")

    async def main() -> None:
        producer = backend.app("producer")
        async with producer:
            await producer.publish_many(topic, [{"n": i} for i in range(10)])
            await asyncio.sleep(0.3)
            middle = time.time()
            await asyncio.sleep(0.3)
            await producer.publish_many(topic, [{"n": i} for i in range(10, 20)])
            transport = producer.transport

            early, late = backend.app("early"), backend.app("late")
            seen_early: list[int] = []
            seen_late: list[int] = []
            early.subscriber(topic)(_collect(seen_early))
            late.subscriber(topic, start=Start.LATEST)(_collect(seen_late))
            async with early, late:
                await late.wait_until_assigned()
                await producer.publish(topic, {"n": 20})
                await eventually(lambda: len(seen_early) == 21 and seen_late == [20], 15)

            offsets = await transport.offsets_for_time(topic, middle)
            from tidings import TopicPartition
            await transport.set_offsets(early.name, {TopicPartition(topic, p): o
                                                  for p, o in offsets.items()})
            replayed: list[int] = []
            again = backend.app("early")
            again.subscriber(topic)(_collect(replayed))
            async with again:
                await eventually(lambda: len(replayed) == 11, 15)
                await asyncio.sleep(0.2)
            assert sorted(replayed) == list(range(10, 21))

    asyncio.run(main())


def _collect(out: list[int]) -> Handler:
    async def handle(payload: dict[str, Any]) -> None:
        out.append(payload["n"])
    return handle
