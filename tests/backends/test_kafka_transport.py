"""The Kafka backend against the port, on a real tansu broker: settings, appends, reads,
group commits and fencing, error translation. (Groups across processes, delays and
admin calls are in the sibling test_kafka_* modules.)"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Collection
from typing import Any

import pytest
from confluent_kafka import KafkaError

from kafka_broker import free_port, running_tansu
from tidings._backends import load_transport
from tidings._errors import (
    BrokerUnavailableError,
    ConfigurationError,
    FencedError,
    MessageTooLargeError,
    TransportError,
    UnknownTopicError,
)
from tidings._records import OutRecord, Start, TopicPartition
from tidings.backends.kafka import KafkaSettings, KafkaTransport, from_url
from tidings.backends.kafka._settings import parse_url
from tidings.backends.kafka._translate import translate


def unique(base: str) -> str:
    """A topic or group name no other test uses."""
    return f"{base}-{uuid.uuid4().hex[:8]}"


class Recorder:
    """A rebalance listener that remembers what it was told, and when."""

    def __init__(self) -> None:
        self.events: list[tuple[str, frozenset[TopicPartition], float]] = []

    async def on_assigned(self, partitions: Collection[TopicPartition]) -> None:
        self.events.append(("assigned", frozenset(partitions), time.monotonic()))

    async def on_revoked(self, partitions: Collection[TopicPartition]) -> None:
        self.events.append(("revoked", frozenset(partitions), time.monotonic()))

    async def on_lost(self, partitions: Collection[TopicPartition]) -> None:
        self.events.append(("lost", frozenset(partitions), time.monotonic()))


def quiet(url: str) -> str:
    """The URL with no delay forwarder (tests that do not schedule records)."""
    return f"{url}&delay_forwarder=false"


# -- settings (no broker) -------------------------------------------------------------


def test_settings_defaults_are_safe() -> None:
    settings = parse_url("kafka://a:9092,b:9092")
    assert settings.bootstrap_servers == "a:9092,b:9092"
    producer = settings.producer_config()
    assert producer["acks"] == "all"
    assert producer["enable.idempotence"] is True
    consumer = settings.consumer_config("g", "earliest")
    assert consumer["enable.auto.commit"] is False
    assert consumer["enable.auto.offset.store"] is False
    assert consumer["auto.offset.reset"] == "earliest"
    assert consumer["session.timeout.ms"] == 6000
    assert consumer["fetch.wait.max.ms"] == 10


def test_settings_from_query_and_user_info() -> None:
    settings = parse_url(
        "kafka://alice:s%3Dcret@h:9093?security_protocol=SASL_SSL&sasl_mechanism=SCRAM-SHA-512"
        "&ssl_ca_file=/ca.pem&compression=zstd&linger_ms=20&partitions=8&session_timeout=10"
        "&client_id=svc&request_timeout=3"
    )
    assert (settings.sasl_username, settings.sasl_password) == ("alice", "s=cret")
    assert settings.partitions == 8
    config = settings.producer_config()
    assert config["sasl.mechanism"] == "SCRAM-SHA-512"
    assert config["ssl.ca.location"] == "/ca.pem"
    assert config["compression.type"] == "zstd"
    assert config["client.id"] == "svc"
    assert "s=cret" not in repr(settings)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("kafka://h:1?colour=red", "unknown option 'colour'"),
        ("kafka://h:1?acks=2", "acks"),
        ("kafka://h:1?partitions=0", "partitions"),
        ("kafka://h:1?linger_ms=soon", "linger_ms"),
        ("kafka://h:1?security_protocol=SASL_PLAINTEXT", "sasl_mechanism"),
        ("kafka://u:p@h:1", "SASL credentials need"),
        ("kafka://h:1?acks=1", "idempotent"),
        ("kafka://?acks=all", "bootstrap_servers"),
    ],
)
def test_bad_settings_raise_configuration_error(url: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        from_url(url)


def test_password_is_not_echoed_in_errors() -> None:
    with pytest.raises(ConfigurationError) as caught:
        from_url("kafka://u:hunter2@h:1?security_protocol=SASL_PLAINTEXT&colour=1")
    assert "hunter2" not in str(caught.value)
    with pytest.raises(ConfigurationError) as caught:
        from_url("kafka://h:1?sasl_password=hunter2&colour=1")
    assert "hunter2" not in str(caught.value)


def test_loaded_by_scheme() -> None:
    transport = load_transport("kafka://127.0.0.1:1")
    assert isinstance(transport, KafkaTransport)
    assert transport.shared_between_processes
    assert isinstance(transport.settings, KafkaSettings)


def test_driver_errors_translate_in_one_place() -> None:
    too_large = translate(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE), "append", "orders")
    assert isinstance(too_large, MessageTooLargeError)
    assert "orders" in str(too_large)
    assert isinstance(translate(KafkaError(KafkaError._TRANSPORT), "x"), BrokerUnavailableError)
    assert isinstance(translate(KafkaError(KafkaError.ILLEGAL_GENERATION), "c"), FencedError)
    assert isinstance(translate(KafkaError(KafkaError._UNKNOWN_TOPIC), "x"), UnknownTopicError)
    auth = translate(KafkaError(KafkaError.SASL_AUTHENTICATION_FAILED), "x")
    assert type(auth) is TransportError
    assert "authentication" in str(auth)


# -- connecting ----------------------------------------------------------------------


def test_unreachable_broker_fails_fast() -> None:
    async def main() -> None:
        transport = from_url(f"kafka://127.0.0.1:{free_port()}?request_timeout=1")
        began = time.monotonic()
        with pytest.raises(BrokerUnavailableError, match="cannot reach Kafka"):
            await transport.start()
        assert time.monotonic() - began < 3
        await transport.close()

    asyncio.run(main())


def test_authentication_failure_is_reported_clearly() -> None:
    async def main(url: str) -> None:
        transport = from_url(
            url.replace("kafka://", "kafka://mallory:wrong@")
            + "&security_protocol=SASL_PLAINTEXT&sasl_mechanism=SCRAM-SHA-512&request_timeout=2"
        )
        with pytest.raises(TransportError, match="authentication failed"):
            await transport.start()
        await transport.close()

    with running_tansu(authentication=True) as url:
        asyncio.run(main(url))


# -- appending and reading ---------------------------------------------------------------


def test_append_returns_positions_and_read_returns_records(kafka_url: str) -> None:
    topic = unique("orders")

    async def main() -> None:
        transport = from_url(quiet(kafka_url))
        await transport.start()
        try:
            before = time.time()
            positions = await transport.append([
                OutRecord(topic, b"one", key="k1", headers={"trace": "abc"}),
                OutRecord(topic, b"two", key="k1"),
                OutRecord(topic, b"three", partition=2),
            ])
            assert positions[0].partition == positions[1].partition
            assert (positions[0].offset, positions[1].offset) == (0, 1)
            assert (positions[2].partition, positions[2].offset) == (2, 0)
            records = await transport.read(topic, positions[0].partition or 0, 0, 10)
            assert [(r.value, r.key, r.offset) for r in records] == [
                (b"one", "k1", 0), (b"two", "k1", 1)]
            assert records[0].headers == {"trace": "abc"}
            assert before - 1 <= records[0].timestamp <= time.time() + 1
            assert [r.value for r in await transport.read(topic, 2, 0, 10)] == [b"three"]
            assert await transport.read(topic, 2, 5, 10) == []
            with pytest.raises(UnknownTopicError):
                await transport.read(unique("missing"), 0, 0, 10)
        finally:
            await transport.close()

    asyncio.run(main())


def test_close_fails_appends_still_waiting_and_refuses_new_ones() -> None:
    """A record the broker never acknowledges fails its append when the transport
    closes (after delivery_timeout), instead of leaving the caller waiting forever."""

    async def main() -> None:
        topic = unique("closing")
        with running_tansu() as url:
            transport = from_url(quiet(url) + "&delivery_timeout=2&request_timeout=1")
            await transport.start()
            await transport.append([OutRecord(topic, b"the topic exists")])
        # The broker is gone: nothing more can be acknowledged.
        stranded = asyncio.create_task(transport.append([OutRecord(topic, b"stranded")]))
        await asyncio.sleep(0.3)
        assert not stranded.done()
        began = time.monotonic()
        await asyncio.wait_for(transport.close(), 30)
        with pytest.raises(TransportError):
            await asyncio.wait_for(stranded, 10)
        assert time.monotonic() - began < 20
        with pytest.raises(TransportError):
            await transport.append([OutRecord(topic, b"after close")])

    asyncio.run(main())


def test_many_appends_are_batched_and_keep_key_order(kafka_url: str) -> None:
    topic = unique("bulk")

    async def main() -> None:
        transport = from_url(quiet(kafka_url))
        await transport.start()
        try:
            await transport.ensure_topic(topic)
            began = time.monotonic()
            results = await asyncio.gather(*[
                transport.append([OutRecord(topic, str(i).encode(), key=f"k{i % 7}")])
                for i in range(5000)
            ])
            assert time.monotonic() - began < 10  # batched: not 5000 round trips
            positions = [p for batch in results for p in batch]
            assert len({(p.partition, p.offset) for p in positions}) == 5000
            subscription = transport.subscribe(None, [topic], Recorder())
            seen: dict[str, list[int]] = {}
            deadline = time.monotonic() + 20
            while sum(map(len, seen.values())) < 5000 and time.monotonic() < deadline:
                for record in await subscription.fetch(1000, 0.5):
                    seen.setdefault(record.key or "", []).append(int(record.value))
            await subscription.close()
            assert sum(map(len, seen.values())) == 5000
            for numbers in seen.values():
                assert numbers == sorted(numbers)
        finally:
            await transport.close()

    asyncio.run(main())


def test_each_record_gets_the_position_it_landed_at(kafka_url: str) -> None:
    """Keyed records of a one-topic append share a delivery callback and are matched to
    their reports by key; every kind of record must still get its own position."""
    topic, other = unique("where"), unique("where-other")

    async def main() -> None:
        transport = from_url(quiet(kafka_url))
        await transport.start()
        try:
            for name in (topic, other):
                await transport.ensure_topic(name)

            def record(i: int, name: str = topic) -> OutRecord:
                key = None if i % 5 == 0 else f"k{i % 9}"
                return OutRecord(name, f"{name}:{i}".encode(), key=key,
                                 partition=2 if i % 11 == 0 else None)

            one_topic = [record(i) for i in range(3000)]
            two_topics = [record(i, (topic, other)[i % 2]) for i in range(3000, 3600)]
            results = await asyncio.gather(transport.append(one_topic),
                                           transport.append(two_topics))
            # What the log holds, read back (tansu's reads may lag the acks briefly).
            stored: dict[tuple[str, int, int], tuple[bytes, str | None]] = {}
            deadline = time.monotonic() + 20
            while len(stored) < 3600 and time.monotonic() < deadline:
                for name in (topic, other):
                    for partition in range(await transport.ensure_topic(name)):
                        for r in await transport.read(name, partition, 0, 10_000):
                            stored[(name, r.partition, r.offset)] = (r.value, r.key)
            assert len(stored) == 3600
            for records, positions in zip((one_topic, two_topics), results, strict=True):
                assert len(positions) == len(records)
                for sent, position in zip(records, positions, strict=True):
                    assert position.partition is not None and position.offset is not None
                    where = (position.topic, position.partition, position.offset)
                    assert stored[where] == (sent.value, sent.key)
        finally:
            await transport.close()

    asyncio.run(main())


def test_oversized_record_raises_message_too_large(kafka_url: str) -> None:
    topic = unique("big")

    async def main() -> None:
        transport = from_url(quiet(kafka_url) + "&max_message_bytes=100000")
        await transport.start()
        try:
            with pytest.raises(MessageTooLargeError, match=topic):
                await transport.append([OutRecord(topic, b"x" * 200_000)])
            assert (await transport.append([OutRecord(topic, b"x" * 1000)]))[0].offset == 0
        finally:
            await transport.close()

    asyncio.run(main())


def test_ensure_topic_creates_once_and_names_refused_topics(kafka_url: str) -> None:
    topic = unique("made")

    async def main() -> None:
        transport = from_url(quiet(kafka_url))
        await transport.start()
        try:
            assert await transport.ensure_topic(topic, 3) == 3
            assert await transport.ensure_topic(topic, 6) == 3  # exists: unchanged
            assert await from_url_started_count(kafka_url, topic) == 3
            with pytest.raises(TransportError, match="bad topic!"):
                await transport.ensure_topic("bad topic!")
        finally:
            await transport.close()

    asyncio.run(main())


async def from_url_started_count(url: str, topic: str) -> int:
    """The partition count another transport sees (not this one's cache)."""
    other = from_url(quiet(url))
    await other.start()
    try:
        return await other.ensure_topic(topic)
    finally:
        await other.close()


# -- groups in one process -----------------------------------------------------------------


async def fetch_until(subscription: Any, count: int, timeout: float = 15) -> list[Any]:
    """Fetch until ``count`` records came (or fail after ``timeout``)."""
    got: list[Any] = []
    deadline = time.monotonic() + timeout
    while len(got) < count:
        assert time.monotonic() < deadline, f"only {len(got)} of {count} records"
        got += await subscription.fetch(count - len(got), 0.2)
    return got


def test_commit_fencing_and_offsets_surviving_a_restart(kafka_url: str) -> None:
    topic, group = unique("ledger"), unique("bookkeepers")

    async def main() -> None:
        transport = from_url(quiet(kafka_url))
        await transport.start()
        await transport.ensure_topic(topic, 1)
        await transport.append([OutRecord(topic, str(i).encode()) for i in range(10)])
        listener = Recorder()
        first = transport.subscribe(group, [topic], listener, client="first")
        got = await fetch_until(first, 10)
        assert [r.offset for r in got] == list(range(10))
        assert first.assignment() == {TopicPartition(topic, 0)}
        await first.commit({TopicPartition(topic, 0): 6})
        with pytest.raises(FencedError):
            await first.commit({TopicPartition(topic, 5): 1})
        await first.close()
        assert [e[0] for e in listener.events] == ["assigned", "revoked"]
        with pytest.raises(FencedError):
            await first.commit({TopicPartition(topic, 0): 7})
        await transport.close()

        restarted = from_url(quiet(kafka_url))
        await restarted.start()
        second = restarted.subscribe(group, [topic], Recorder(), start=Start.LATEST)
        assert [r.offset for r in await fetch_until(second, 4)] == [6, 7, 8, 9]
        await second.close()
        await restarted.close()

    asyncio.run(main())


def test_group_less_latest_reads_only_new_records(kafka_url: str) -> None:
    topic = unique("tail")

    async def main() -> None:
        transport = from_url(quiet(kafka_url))
        await transport.start()
        try:
            await transport.append([OutRecord(topic, b"old", partition=0)])
            tail = transport.subscribe(None, [topic], Recorder(), start=Start.LATEST)
            assert await tail.fetch(10, 0.5) == []
            await transport.append([OutRecord(topic, b"new", partition=0)])
            assert [r.value for r in await fetch_until(tail, 1)] == [b"new"]
            await tail.commit({TopicPartition(topic, 0): 1})  # group-less: a no-op
            await tail.close()
        finally:
            await transport.close()

    asyncio.run(main())


def test_revocation_is_awaited_before_another_member_gets_the_partitions(
    kafka_url: str,
) -> None:
    topic, group = unique("handover"), unique("pair")

    class SlowCommitter(Recorder):
        subscription: Any = None

        async def on_revoked(self, partitions: Collection[TopicPartition]) -> None:
            await asyncio.sleep(1.0)  # in-flight work finishing
            await self.subscription.commit({tp: 3 for tp in partitions})
            await super().on_revoked(partitions)

    async def main() -> None:
        one, two = from_url(quiet(kafka_url)), from_url(quiet(kafka_url))
        await one.start()
        await two.start()
        await one.ensure_topic(topic, 2)
        await one.append([OutRecord(topic, b"r", partition=p) for p in (0, 1) for _ in range(5)])
        slow = SlowCommitter()
        first = slow.subscription = one.subscribe(group, [topic], slow)
        await fetch_until(first, 10)
        later = Recorder()
        second = two.subscribe(group, [topic], later)
        records: list[Any] = []
        deadline = time.monotonic() + 20
        while not later.events and time.monotonic() < deadline:
            _, more = await asyncio.gather(first.fetch(10, 0.2), second.fetch(10, 0.2))
            records += more
        records += await second.fetch(10, 1.0)
        while not first.assignment() and time.monotonic() < deadline:
            await first.fetch(10, 0.1)  # rebalance callbacks run inside fetch
        revoked_at = next(t for kind, _, t in slow.events if kind == "revoked")
        assigned_at = next(t for kind, _, t in later.events if kind == "assigned")
        assert revoked_at <= assigned_at, "the second member got partitions still in use"
        assert records, "the second member reads from the offsets committed on revoke"
        assert {r.offset for r in records} == {3, 4}
        assert first.assignment() | second.assignment() == {
            TopicPartition(topic, 0), TopicPartition(topic, 1)}
        assert not first.assignment() & second.assignment()
        for subscription, transport in ((first, one), (second, two)):
            await subscription.close()
            await transport.close()

    asyncio.run(main())


def test_a_fetch_keeps_to_its_byte_budget_and_loses_nothing(kafka_url: str) -> None:
    """Issue 16.4: records consume() returned past ``max_bytes`` come with the next
    fetch, in order; a record larger than the budget still comes, alone."""
    topic = unique("budget")

    async def main() -> list[list[int]]:
        transport = from_url(quiet(kafka_url))
        await transport.start()
        try:
            await transport.ensure_topic(topic, 1)
            sizes = [1000] * 6 + [5000] + [1000] * 3
            await transport.append([OutRecord(topic, bytes([i]) * size)
                                    for i, size in enumerate(sizes)])
            subscription = transport.subscribe(None, [topic], Recorder())
            fetches: list[list[int]] = []
            deadline = time.monotonic() + 20
            while sum(map(len, fetches)) < len(sizes) and time.monotonic() < deadline:
                got = await subscription.fetch(100, 0.5, max_bytes=2500)
                if got:
                    assert sum(len(r.value) for r in got) <= 2500 or len(got) == 1
                    fetches.append([r.value[0] for r in got])
            await subscription.close()
            return fetches
        finally:
            await transport.close()

    fetches = asyncio.run(main())
    assert [n for fetch in fetches for n in fetch] == list(range(10))
    assert [6] in fetches  # the large one, alone
