"""Delayed records (delay tiers) and admin calls of the Kafka backend, on tansu."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Collection

import pytest

from tidings._errors import UnknownTopicError
from tidings._records import OutRecord, Record, TopicPartition
from tidings.backends.kafka import from_url
from tidings.backends.kafka._delay import TIERS, forward, release_at, route, tier_for


def unique(base: str) -> str:
    """A topic or group name no other test uses."""
    return f"{base}-{uuid.uuid4().hex[:8]}"


class Silent:
    """A rebalance listener that does nothing."""

    async def on_assigned(self, partitions: Collection[TopicPartition]) -> None:
        """Nothing to do."""

    async def on_revoked(self, partitions: Collection[TopicPartition]) -> None:
        """Nothing to do."""

    async def on_lost(self, partitions: Collection[TopicPartition]) -> None:
        """Nothing to do."""


# -- delay tiers as pure functions ------------------------------------------------------


def test_a_record_waits_in_the_largest_tier_not_exceeding_its_delay() -> None:
    assert tier_for(0.3).seconds == 1  # shorter than every tier: the first
    assert tier_for(1).seconds == 1
    assert tier_for(59).seconds == 10
    assert tier_for(3 * 3600).seconds == 3600
    assert tier_for(10**7).seconds == TIERS[-1].seconds


def _as_stored(out: OutRecord, offset: int = 0) -> Record:
    return Record(out.topic, 0, offset, out.key, out.value, dict(out.headers), 0.0)


def test_tier_records_move_down_the_tiers_and_never_fire_early() -> None:
    original = OutRecord("orders", b"v", key="k", headers={"trace": "t"}, partition=3,
                         deliver_at=1000.0 + 75)
    held = route(original, 1000.0)
    assert held.topic == TIERS[2].topic  # the 1 min tier
    assert release_at(_as_stored(held)) == 1060.0
    again = forward(_as_stored(held), 1060.0)  # 15 s left: into the 10 s tier
    assert again.topic == TIERS[1].topic
    assert release_at(_as_stored(again)) == 1070.0
    last = forward(_as_stored(forward(_as_stored(again), 1070.0)), 1075.0)
    assert (last.topic, last.key, last.value, last.partition) == ("orders", "k", b"v", 3)
    assert dict(last.headers) == {"trace": "t"}
    assert route(OutRecord("t", b"", deliver_at=999.0), 1000.0).topic == "t"


def test_release_times_grow_with_the_offset_inside_a_tier() -> None:
    now, times = 1000.0, []
    for delay in (15.0, 11.0, 19.0, 10.0):  # all in the 10 s tier, enqueued in this order
        now += 0.1
        times.append(release_at(_as_stored(route(OutRecord("t", b"", deliver_at=now + delay),
                                                 now))))
    assert times == sorted(times)


# -- delayed records on the broker --------------------------------------------------------


def test_a_delayed_record_appears_when_due_not_before(kafka_url: str) -> None:
    topic = unique("later")

    async def main() -> None:
        transport = from_url(kafka_url)
        await transport.start()
        try:
            due = time.time() + 2.0
            positions = await transport.append([
                OutRecord(topic, b"now", partition=0),
                OutRecord(topic, b"later", key="k", headers={"h": "1"}, partition=1,
                          deliver_at=due),
            ])
            assert positions[0].offset == 0
            assert (positions[1].partition, positions[1].offset) == (None, None)
            assert await transport.read(topic, 1, 0, 10) == []
            records, seen_at = await _first_of(transport, topic, 1, 15)
            assert seen_at >= due
            assert seen_at - due < 2.5, f"fired {seen_at - due:.2f} s late"
            (record,) = records
            assert (record.value, record.key, record.partition) == (b"later", "k", 1)
            assert record.headers == {"h": "1"}
        finally:
            await transport.close()

    asyncio.run(main())


async def _first_of(transport: object, topic: str, partition: int,
                    timeout: float) -> tuple[list[Record], float]:
    """Subscribe (which starts the transport's delay forwarder) and wait for a record."""
    subscription = transport.subscribe(None, [topic], Silent())  # type: ignore[attr-defined]
    began = time.monotonic()
    try:
        while time.monotonic() - began < timeout:
            records = [r for r in await subscription.fetch(10, 0.1) if r.partition == partition]
            if records:
                return records, time.time()
    finally:
        await subscription.close()
    raise AssertionError("the delayed record never appeared")


def test_a_delayed_record_survives_the_transport_that_scheduled_it(kafka_url: str) -> None:
    topic = unique("durable")

    async def main() -> None:
        scheduler = from_url(kafka_url + "&delay_forwarder=false")
        await scheduler.start()
        await scheduler.append([OutRecord(topic, b"x", partition=0,
                                          deliver_at=time.time() + 1.0)])
        await scheduler.close()  # it held nothing in memory: the record is in a tier topic
        forwarder = from_url(kafka_url)
        await forwarder.start()
        try:
            records, _ = await _first_of(forwarder, topic, 0, 20)
            assert [r.value for r in records] == [b"x"]
        finally:
            await forwarder.close()

    asyncio.run(main())


# -- admin ----------------------------------------------------------------------------------


def test_describe_topics_reports_true_end_offsets(kafka_url: str) -> None:
    topic = unique("described")

    async def main() -> None:
        transport = from_url(kafka_url + "&delay_forwarder=false")
        await transport.start()
        try:
            await transport.ensure_topic(topic, 3)
            await transport.append([OutRecord(topic, b"v", partition=i % 2) for i in range(301)])
            (info,) = [t for t in await transport.describe_topics() if t.name == topic]
            assert info.partitions == 3
            assert dict(info.start_offsets) == {0: 0, 1: 0, 2: 0}
            assert dict(info.end_offsets) == {0: 151, 1: 150, 2: 0}
            assert not [t for t in await transport.describe_topics() if t.name.startswith("__")]
        finally:
            await transport.close()

    asyncio.run(main())


def test_groups_offsets_and_replay(kafka_url: str) -> None:
    topic, group = unique("replayed"), unique("readers")

    async def main() -> None:
        transport = from_url(kafka_url + "&delay_forwarder=false")
        await transport.start()
        try:
            await transport.ensure_topic(topic, 1)
            await transport.append([OutRecord(topic, str(i).encode()) for i in range(5)])
            await asyncio.sleep(0.3)
            middle = time.time()
            await asyncio.sleep(0.3)
            await transport.append([OutRecord(topic, str(i).encode()) for i in range(5, 10)])
            assert await transport.offsets_for_time(topic, middle) == {0: 5}
            assert await transport.offsets_for_time(topic, time.time() + 60) == {0: 10}
            assert await transport.offsets_for_time(topic, 0) == {0: 0}
            with pytest.raises(UnknownTopicError):
                await transport.offsets_for_time(unique("missing"), 0)

            await transport.set_offsets(group, {TopicPartition(topic, 0): 7})
            (info,) = [g for g in await transport.describe_groups() if g.name == group]
            assert info.committed == {TopicPartition(topic, 0): 7}
            member = transport.subscribe(group, [topic], Silent())
            got: list[Record] = []
            deadline = time.monotonic() + 15
            while len(got) < 3 and time.monotonic() < deadline:
                got += await member.fetch(10, 0.2)
            assert [r.offset for r in got] == [7, 8, 9]
            await member.close()
        finally:
            await transport.close()

    asyncio.run(main())
