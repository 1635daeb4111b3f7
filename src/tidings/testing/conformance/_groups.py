"""Consumer groups: competing members (separate OS processes where the backend allows),
rebalancing on join, leave and crash, per-key order, graceful shutdown."""

from __future__ import annotations

import asyncio
import random
from collections import Counter, defaultdict
from typing import Any

from ... import Message
from ...ports import Capability
from ._backend import Backend
from ._requires import requires
from ._util import Handler, Names, eventually


async def _publish(
        backend: Backend, topic: str, count: int, keys: int = 16, start: int = 0) -> None:
    app = backend.app("producer")
    async with app:
        for base in range(start, start + count, 100):
            batch = [{"n": i} for i in range(base, min(base + 100, start + count))]
            await app.publish_many(topic, batch, key=lambda p: f"k{p['n'] % keys}")


@requires(Capability.GROUPS)
def test_members_of_a_group_split_the_work(backend: Backend, names: Names) -> None:
    topic, group = names("work"), names("workers")

    async def main() -> None:
        a = await backend.member(topic, group)
        b = await backend.member(topic, group)
        await asyncio.sleep(2.0)  # both joined and split the partitions
        await _publish(backend, topic, 400)
        await eventually(lambda: len(backend.handled()) >= 400, 30, "400 handled")
        await a.stop()
        await b.stop()
        handled = backend.handled()
        counts = Counter(h["n"] for h in handled)
        assert set(counts) == set(range(400))
        assert max(counts.values()) == 1, "an orderly group handles each message once"
        by_member = Counter(h["pid"] for h in handled) if backend.multiprocess else None
        if by_member is not None:
            assert len(by_member) == 2, by_member

    asyncio.run(main())


@requires(Capability.GROUPS)
def test_crashed_member_work_moves_to_survivor(backend: Backend, names: Names) -> None:
    """With ``handover``, every message is handled once a member crashes mid-stream;
    without it (MQTT: the broker keeps a dead member's unacknowledged messages in its
    session, or drops them with it), what the group gets after the crash all goes to
    the survivor: nothing more is lost to the dead member."""
    topic, group = names("crash"), names("workers")
    handover = Capability.HANDOVER in backend.capabilities

    async def main() -> None:
        victim = await backend.member(topic, group, sleep=0.005)
        survivor = await backend.member(topic, group, sleep=0.005)
        await asyncio.sleep(2.0)
        await _publish(backend, topic, 600)
        await eventually(lambda: len(backend.handled()) >= 100, 30, "some handled")
        await victim.kill()
        expected = set(range(600)) if handover else set(range(600, 800))
        if not handover:
            await asyncio.sleep(0.5)  # the broker noticed the lost connection
            await _publish(backend, topic, 200, start=600)
        await eventually(lambda: {h["n"] for h in backend.handled()} >= expected,
                         45, "every message handled after the crash")
        await survivor.stop()
        handled = backend.handled()
        assert {h["n"] for h in handled} >= expected
        # At-least-once: only work in flight at the crash (uncommitted) may repeat.
        duplicates = sum(c - 1 for c in Counter(h["n"] for h in handled).values())
        assert duplicates <= 600 // 2

    asyncio.run(main())


@requires(Capability.GROUPS)
def test_orderly_join_and_leave_lose_and_repeat_nothing(backend: Backend, names: Names) -> None:
    topic, group = names("rebalance"), names("workers")

    async def main() -> None:
        first = await backend.member(topic, group, sleep=0.002)
        await asyncio.sleep(1.0)
        producer = asyncio.create_task(_slow_publish(backend, topic, 600))
        await asyncio.sleep(0.5)
        second = await backend.member(topic, group, sleep=0.002)  # joins mid-stream
        await asyncio.sleep(1.5)
        await first.stop()  # leaves mid-stream
        await producer
        await eventually(lambda: len({h["n"] for h in backend.handled()}) == 600, 30, "all")
        await second.stop()
        counts = Counter(h["n"] for h in backend.handled())
        assert set(counts) == set(range(600))
        assert max(counts.values()) == 1, [n for n, c in counts.items() if c > 1][:10]

    asyncio.run(main())


async def _slow_publish(backend: Backend, topic: str, count: int) -> None:
    app = backend.app("producer")
    async with app:
        for i in range(count):
            await app.publish(topic, {"n": i}, key=f"k{i % 16}")
            if i % 20 == 0:
                await asyncio.sleep(0.05)


@requires(Capability.GROUPS, Capability.ORDER_PER_KEY)
def test_per_key_order_with_concurrency(backend: Backend, names: Names) -> None:
    topic = names("ordered")

    async def main() -> None:
        app = backend.app("ordered")
        seen: dict[str, list[int]] = defaultdict(list)
        running = {"now": 0, "max": 0}

        @app.subscriber(topic, concurrency=8)
        async def handle(payload: dict[str, Any], message: Message) -> None:
            running["now"] += 1
            running["max"] = max(running["max"], running["now"])
            await asyncio.sleep(random.uniform(0, 0.004))
            seen[message.key or ""].append(payload["seq"])
            running["now"] -= 1

        async with app:
            producer = backend.app("producer")
            async with producer:
                items = [{"k": f"k{i % 10}", "seq": i // 10} for i in range(500)]
                await producer.publish_many(topic, items, key=lambda p: p["k"])
            await eventually(lambda: sum(map(len, seen.values())) == 500, 30, "500 handled")
        for key, seqs in seen.items():
            assert seqs == sorted(seqs), f"key {key} out of order"
            assert len(seqs) == 50
        assert running["max"] > 1, "different keys ran in parallel"

    asyncio.run(main())


@requires(Capability.GROUPS)
def test_graceful_shutdown_finishes_in_flight_work_and_commits(
        backend: Backend, names: Names) -> None:
    topic = names("graceful")

    async def main() -> None:
        app = backend.app("svc")
        finished: list[int] = []

        @app.subscriber(topic)
        async def slow(payload: dict[str, Any]) -> None:
            await asyncio.sleep(0.5)
            finished.append(payload["n"])

        async with app:
            # One key: fetched together, queued behind the first.
            await app.publish_many(topic, [{"n": 1}, {"n": 2}, {"n": 3}], key=lambda _: "k")
            await asyncio.sleep(0.2)  # the first handler is running now
        assert finished == [1], "stop() let the running handler finish, and started no other"
        if Capability.HANDOVER not in backend.capabilities:
            return  # the queued two went with the member's session: nothing to hand over

        again = backend.app("svc")
        redelivered: list[int] = []
        again.subscriber(topic)(_collect(redelivered))
        async with again:
            await again.wait_until_assigned()
            await eventually(lambda: len(redelivered) >= 2, what="the queued two")
            await asyncio.sleep(0.2)
        assert redelivered == [2, 3], "the first's offset was committed before leaving"

    asyncio.run(main())


def _collect(out: list[int]) -> Handler:
    async def handle(payload: dict[str, Any]) -> None:
        out.append(payload["n"])
    return handle


@requires(Capability.GROUPS)
def test_a_draining_handler_may_still_publish(backend: Backend, names: Names) -> None:
    topic, out = names("drain"), names("drain-out")

    async def main() -> None:
        app = backend.app("svc")

        @app.subscriber(topic)
        async def slow(payload: dict[str, Any]) -> None:
            await asyncio.sleep(0.5)
            await app.publish(out, payload)  # after stop() began: still allowed

        reader = backend.app("reader")
        got: list[int] = []
        reader.subscriber(out)(_collect(got))
        async with reader:  # subscribed first: a broker without a log keeps nothing back
            await reader.wait_until_assigned()
            async with app:
                await app.publish(topic, {"n": 7})
                await asyncio.sleep(0.2)
                assert app.running
            assert not app.running
            await eventually(lambda: got == [7], 15, "the drained handler's output")

    asyncio.run(main())
