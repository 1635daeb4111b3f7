"""The RabbitMQ backend's own behaviour on a real private node: settings, bad input
(broker down, wrong credentials or vhost, too large, conflicting declarations), and
capability refusals. Groups, failures, delays and replay are in tests/conformance."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiormq
import pytest

from kafka_broker import free_port
from rabbitmq_broker import (
    MAX_MESSAGE_SIZE,
    control_env,
    delete_queue,
    new_vhost,
    rabbitmq_binaries,
)
from tidings import App, ConfigurationError
from tidings._backends import load_transport
from tidings._errors import BrokerUnavailableError, MessageTooLargeError
from tidings._records import OutRecord, TopicPartition
from tidings.backends.amqp import AmqpSettings, AmqpTransport, from_url
from tidings.backends.amqp._delay import bucket_ms
from tidings.backends.amqp._streams import declare_stream
from tidings.backends.amqp._subscription import AmqpSubscription
from tidings.ports import Capability


def _with(url: str, **changes: str) -> str:
    """``url`` with its user, password or vhost changed."""
    settings = from_url(url).settings
    user = changes.get("user", settings.username)
    password = changes.get("password", settings.password)
    vhost = changes.get("vhost", "")
    return f"amqp://{user}:{password}@{settings.host}:{settings.port}/{vhost}"


async def _vhost(amqp_url: str, name: str) -> str:
    """A new vhost on the test node (guest may use it); its URL."""
    return await asyncio.to_thread(new_vhost, amqp_url, name)


@contextlib.asynccontextmanager
async def _on_own_vhost(amqp_url: str, prefix: str) -> AsyncIterator[tuple[str, AmqpTransport]]:
    """A started transport on a new vhost (what it deletes by hand touches no other
    test); the vhost's URL and the transport, closed after."""
    url = await _vhost(amqp_url, f"{prefix}-{uuid.uuid4().hex[:8]}")
    transport = from_url(url)
    await transport.start()
    try:
        yield url, transport
    finally:
        await transport.close()


async def _delivered(transport: AmqpTransport, topic: str) -> list[Any]:
    """The records of ``topic`` partition 0 once there are any (within 5 s)."""
    for _ in range(100):
        records = await transport.read(topic, 0, 0, 10)
        if records:
            return list(records)
        await asyncio.sleep(0.05)
    return []


def test_settings_from_the_url() -> None:
    settings = from_url("amqp://u:p%40ss@h:5673/shop%2Feu?partitions=8&queue_type=quorum").settings
    assert (settings.host, settings.port, settings.username, settings.password) == \
        ("h", 5673, "u", "p@ss")
    assert (settings.vhost, settings.partitions, settings.queue_type) == ("shop/eu", 8, "quorum")
    assert from_url("amqp://h").settings.vhost == "/"
    assert isinstance(load_transport("amqp://h"), AmqpTransport)
    with pytest.raises(ConfigurationError, match="partitions") as caught:
        from_url("amqp://u:hunter2@h/?partitions=0")
    assert "hunter2" not in str(caught.value)
    with pytest.raises(ConfigurationError, match="colour"):
        from_url("amqp://h/?colour=blue")
    assert isinstance(AmqpSettings(), AmqpSettings)


def test_delay_buckets_round_up() -> None:
    assert bucket_ms(0.0004) == 10
    assert bucket_ms(0.4) == 400
    assert bucket_ms(1.234) == 1300
    assert bucket_ms(3600) == 3_600_000
    assert all(bucket_ms(d / 1000) >= d for d in range(1, 5000, 7))


def test_broker_down_is_one_error_within_the_connect_timeout(caplog) -> None:
    caplog.set_level(logging.DEBUG)
    transport = from_url(f"amqp://guest:guest@127.0.0.1:{free_port()}/?connect_timeout=2")
    began = time.monotonic()
    with pytest.raises(BrokerUnavailableError, match="RabbitMQ") as caught:
        asyncio.run(transport.start())
    assert time.monotonic() - began < 3
    assert "\n" not in str(caught.value)
    assert not [r for r in caplog.records
                if r.name.startswith("aiormq") and r.levelno >= logging.INFO]


def test_wrong_credentials_and_vhost_are_named(amqp_url: str) -> None:
    with pytest.raises(ConfigurationError, match="credentials of user 'guest'"):
        asyncio.run(from_url(_with(amqp_url, password="wrong")).start())
    with pytest.raises(ConfigurationError, match="vhost 'nowhere'"):
        asyncio.run(from_url(_with(amqp_url, vhost="nowhere")).start())


def test_too_large_and_conflicting_declarations(amqp_url: str) -> None:
    topic = f"big-{uuid.uuid4().hex[:8]}"

    async def main() -> None:
        transport = from_url(amqp_url)
        await transport.start()
        try:
            await transport.ensure_topic(topic, 1)
            with pytest.raises(MessageTooLargeError):
                await transport.append([OutRecord(topic, b"x" * (MAX_MESSAGE_SIZE + 1))])
            # The transport goes on after the refusal.
            await transport.append([OutRecord(topic, b"small")])
            assert [r.value for r in await transport.read(topic, 0, 0, 10)] == [b"small"]
            # A queue named like a topic's stream, with other arguments, is named.
            taken = f"taken-{uuid.uuid4().hex[:8]}"
            connection = await aiormq.connect(amqp_url)
            channel = await connection.channel()
            await channel.queue_declare(f"{taken}.0", durable=True)
            await connection.close()
            with pytest.raises(ConfigurationError, match=f"{taken}.0"):
                await transport.ensure_topic(taken, 1)
        finally:
            await transport.close()

    asyncio.run(main())


def test_an_option_the_backend_cannot_honour_is_refused_at_start(amqp_url: str) -> None:
    async def main() -> None:
        app = App("billing", broker=amqp_url)

        @app.subscriber(f"orders-{uuid.uuid4().hex[:8]}", exactly_once=True)
        async def bill(payload: dict) -> None: ...

        with pytest.raises(ConfigurationError, match=r"exactly_once.*rabbitmq backend"):
            await app.start()

    asyncio.run(main())
    capabilities = from_url(amqp_url).capabilities
    assert Capability.EXACTLY_ONCE not in capabilities
    assert Capability.APPEND_OFFSETS not in capabilities
    assert {Capability.GROUPS, Capability.REPLAY, Capability.DELAY} <= capabilities


@pytest.mark.parametrize("queue_type", ["classic", "quorum"])
def test_a_long_delay_does_not_hold_a_shorter_one_back(amqp_url: str, queue_type: str) -> None:
    topic = f"later-{uuid.uuid4().hex[:8]}"
    vhost = f"v-{queue_type}-{uuid.uuid4().hex[:6]}"  # tidings' own queues: one type each

    async def main() -> None:
        transport = from_url(amqp_url) if queue_type == "classic" else \
            from_url(f"{await _vhost(amqp_url, vhost)}?queue_type=quorum")
        await transport.start()
        try:
            await transport.ensure_topic(topic, 1)
            now = time.time()
            await transport.append([OutRecord(topic, b"long", deliver_at=now + 30)])
            await transport.append([OutRecord(topic, b"short", deliver_at=now + 0.3)])
            records = await _delivered(transport, topic)
            assert [r.value for r in records] == [b"short"]
            assert time.time() - now >= 0.3
            assert records[0].timestamp >= now + 0.3
        finally:
            await transport.close()

    asyncio.run(main())


def test_groups_are_described_with_their_members_and_offsets(amqp_url: str) -> None:
    topic, group = f"described-{uuid.uuid4().hex[:8]}", f"svc-{uuid.uuid4().hex[:8]}"

    async def main() -> None:
        app = App(group, broker=amqp_url)
        handled: list[dict] = []

        @app.subscriber(topic)
        async def handle(payload: dict) -> None:
            handled.append(payload)

        async with app:
            await app.publish(topic, {"n": 1}, partition=2)
            for _ in range(200):
                if handled:
                    break
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.3)  # a commit interval
            info = {g.name: g for g in await app.transport.describe_groups()}[group]
        (member,) = info.members
        assert member.client == app.instance_id
        assert {tp.partition for tp in member.assignment} == {0, 1, 2, 3}
        assert {tp.partition: o for tp, o in info.committed.items()
                if tp.topic == topic} == {2: 1}

    asyncio.run(main())


def test_a_member_whose_connection_the_broker_closes_joins_again(amqp_url: str) -> None:
    topic, group = f"reconnect-{uuid.uuid4().hex[:8]}", f"svc-{uuid.uuid4().hex[:8]}"

    async def main() -> None:
        app, producer = App(group, broker=amqp_url), App("producer", broker=amqp_url)
        handled: set[int] = set()

        @app.subscriber(topic)
        async def handle(payload: dict) -> None:
            handled.add(payload["n"])

        async with producer, app:
            await producer.publish_many(topic, [{"n": n} for n in range(10)])
            await _until(lambda: len(handled) == 10)
            await asyncio.to_thread(
                subprocess.run, [str(rabbitmq_binaries() / "rabbitmqctl"),
                                 "close_all_connections", "test: closed by the broker"],
                env={**os.environ, **control_env(amqp_url)}, check=True,
                capture_output=True, timeout=60)
            await producer.publish_many(topic, [{"n": n} for n in range(10, 20)])
            await _until(lambda: len(handled) == 20, 20)
        assert handled == set(range(20))

    asyncio.run(main())


def test_members_of_one_group_starting_together_on_a_new_vhost_all_join(
        amqp_url: str) -> None:
    """Three processes' worth of members (a connection each), three subscribers of one
    group in each, all starting at once on a new vhost: every stream of tidings (the
    registries, the group's offsets, the topics) is declared by several connections at
    once. RabbitMQ 3.10 answered the second declare before the stream could be read
    (the member's consume failed, or the connection was closed with 541), and a member
    stayed out of its group for good."""
    topics = ["users", "orders", "stock"]

    async def main() -> None:
        url = await _vhost(amqp_url, f"together-{uuid.uuid4().hex[:8]}") + "?session_timeout=3"
        handled: dict[str, set[int]] = {t: set() for t in topics}
        apps = [App("svc", broker=url, join_timeout=20) for _ in range(3)]
        for app in apps:
            for topic in topics:
                def handler(topic: str) -> Callable[[dict], Awaitable[None]]:
                    async def handle(payload: dict) -> None:
                        handled[topic].add(payload["n"])
                    return handle
                app.subscriber(topic)(handler(topic))
        try:
            await asyncio.gather(*(app.start() for app in apps))
            await asyncio.gather(*(app.wait_until_assigned(1) for app in apps))
            for topic in topics:
                await apps[0].publish_many(topic, [{"n": n} for n in range(20)])
            await _until(lambda: all(len(h) == 20 for h in handled.values()), 30)
            for app in apps:  # nobody lost its connection
                assert not app.transport.connection.is_closed
        finally:
            await asyncio.gather(*(app.stop() for app in apps), return_exceptions=True)

    asyncio.run(main())


def test_a_claim_cancelled_while_refused_does_not_cost_the_connection(amqp_url: str) -> None:
    """A claim refused by the broker (another member holds the partition) costs its
    channel; a caller cancelled meanwhile (a timeout above) made aiormq close that
    channel too, and the broker closed the whole connection for it (504 CHANNEL_ERROR -
    expected 'channel.open'), with every lock of the process."""
    topic, group = f"claim-{uuid.uuid4().hex[:8]}", f"svc-{uuid.uuid4().hex[:8]}"

    async def main() -> None:
        holder, claimer = from_url(amqp_url), from_url(amqp_url)
        await holder.start()
        await claimer.start()
        try:
            await holder.ensure_topic(topic, 1)
            channel = await holder.connection.channel()
            await channel.queue_declare(f"tidings.owner.{group}.{topic}.0", exclusive=True)
            subscription = claimer.subscribe(group, [topic], _Listener())
            assert isinstance(subscription, AmqpSubscription)
            tp = TopicPartition(topic, 0)
            for n in range(150):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(subscription._lock(tp), 0.0005 * (n % 10))
                assert not claimer.connection.is_closed, f"connection lost at claim {n}"
            assert not await subscription._lock(tp)  # still refused, still connected
            await subscription.close()
        finally:
            await claimer.close()
            await holder.close()

    asyncio.run(main())


def test_a_member_whose_channel_closed_gives_back_what_the_group_wants_elsewhere(
        amqp_url: str) -> None:
    """A member whose reading channel closed (its connection alive, so its partition
    locks too) joins again and shares its partitions with a member joining meanwhile:
    the locks it keeps are given back as soon as the group wants them elsewhere."""
    topic, group = f"stray-{uuid.uuid4().hex[:8]}", f"svc-{uuid.uuid4().hex[:8]}"
    url = f"{amqp_url}?session_timeout=1.5"

    async def main() -> None:
        first, second = App(group, broker=url), App(group, broker=url)
        producer = App("producer", broker=url)
        handled: dict[str, set[int]] = {"first": set(), "second": set()}
        for name, app in (("first", first), ("second", second)):
            def handler(name: str) -> Callable[[dict], Awaitable[None]]:
                async def handle(payload: dict) -> None:
                    handled[name].add(payload["n"])
                return handle
            app.subscriber(topic)(handler(name))
        async with producer, first:
            subscription = first._consumers[0]._subscription
            assert isinstance(subscription, AmqpSubscription)
            await _until(lambda: len(subscription.assignment()) == 4)
            assert subscription._channel is not None
            await subscription._channel.close()  # the broker could close it on an error
            async with second:
                joined = second._consumers[0]._subscription
                assert isinstance(joined, AmqpSubscription)
                await _until(lambda: len(joined.assignment()) == 2
                             and len(subscription.assignment()) == 2, 15)
                await producer.publish_many(
                    topic, [{"n": n} for n in range(40)], key=lambda e: str(e["n"]))
                await _until(lambda: len(handled["first"] | handled["second"]) == 40, 20)

    asyncio.run(main())


class _Listener:
    async def on_assigned(self, partitions: object) -> None: ...

    async def on_revoked(self, partitions: object) -> None: ...

    async def on_lost(self, partitions: object) -> None: ...


async def _until(check, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


def test_the_delay_forwarder_starts_again_when_the_broker_cancels_it(
        amqp_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    """Someone deletes tidings' due queue: the broker cancels the forwarder's consumer
    while the connection lives on. The forwarder notices, declares the queue again and
    consumes from it, so delayed records are delivered again (and aiormq still drops a
    cancelled consumer from ``channel.consumers``, which the check relies on)."""
    monkeypatch.setattr("tidings.backends.amqp._delay.WATCH_EVERY", 0.2)
    topic = f"later-{uuid.uuid4().hex[:8]}"

    async def main() -> None:
        async with _on_own_vhost(amqp_url, "delay") as (url, transport):
            forwarder = transport._forwarder
            assert forwarder is not None and forwarder.consuming
            await delete_queue(url, "tidings.delay.due")
            for _ in range(50):
                if not forwarder.consuming:
                    break
                await asyncio.sleep(0.02)
            assert not forwarder.consuming  # cancelled by the broker
            for _ in range(100):
                if forwarder.consuming:
                    break
                await asyncio.sleep(0.05)
            assert forwarder.consuming
            await transport.ensure_topic(topic, 1)
            await transport.append([OutRecord(topic, b"due", deliver_at=time.time() + 0.3)])
            records = await _delivered(transport, topic)
            assert [r.value for r in records] == [b"due"]

    with caplog.at_level(logging.WARNING, "tidings.amqp"):
        asyncio.run(main())
    assert any("starting it again" in r.getMessage() for r in caplog.records)


def test_a_due_record_whose_stream_was_deleted_waits_for_it_paced(
        amqp_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    """Its partition's stream deleted by hand, a delayed record cannot be forwarded when
    due: the broker returns it (it is not confirmed and dropped), and it goes back to the
    due queue, tried again every RETRY_FORWARD seconds rather than at once. Once the
    stream is there again, it is delivered."""
    monkeypatch.setattr("tidings.backends.amqp._delay.RETRY_FORWARD", 0.5)
    topic = f"later-{uuid.uuid4().hex[:8]}"

    async def main() -> None:
        async with _on_own_vhost(amqp_url, "gone") as (url, transport):
            await transport.ensure_topic(topic, 1)
            await delete_queue(url, f"{topic}.0")
            await transport.append([OutRecord(topic, b"due", deliver_at=time.time() + 0.2)])
            await _until(lambda: any("could not forward" in r.getMessage()
                                     for r in caplog.records))
            await asyncio.sleep(2.0)
            tries = [r for r in caplog.records if "could not forward" in r.getMessage()]
            assert 2 <= len(tries) <= 7, len(tries)  # paced: ~5 in 2 s, not thousands
            assert "was its stream deleted" in str(tries[0].exc_info[1])
            admin = await aiormq.connect(url)
            await declare_stream(await admin.channel(), f"{topic}.0")  # as tidings does
            await admin.close()
            records = await _delivered(transport, topic)
            assert [r.value for r in records] == [b"due"]

    with caplog.at_level(logging.WARNING, "tidings.amqp"):
        asyncio.run(main())
