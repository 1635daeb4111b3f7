"""The RabbitMQ transport: topics as streams, tidings' bookkeeping as JSON streams."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import aiormq
from aiormq.abc import AbstractChannel, AbstractConnection, DeliveredMessage
from pamqp.commands import Basic

from ..._errors import BrokerUnavailableError, TransportError, UnknownTopicError
from ..._records import (
    GroupInfo,
    MemberInfo,
    OutRecord,
    Position,
    Record,
    Start,
    TopicInfo,
    TopicPartition,
)
from ...ports import BASE_CAPABILITIES, Capability, RebalanceListener, Subscription, Transport
from ._connection import Link
from ._delay import BUCKET, EXCHANGE, TARGET, DelayBuckets, DueForwarder, bucket_ms
from ._log import JsonLog
from ._members import observe
from ._publish import BatchPublisher, Message
from ._settings import AmqpSettings
from ._streams import declare_stream, offset_of, partition_stream, properties, read_quiet
from ._streams import to_record as _to_record
from ._translate import driver_errors

__all__ = ["AmqpTransport"]

log = logging.getLogger("tidings.amqp")

TOPICS_LOG = "tidings.topics"
GROUPS_LOG = "tidings.groups"


def offsets_log(group: str) -> str:
    """The stream of ``group``'s committed offsets."""
    return f"tidings.offsets.{group}"


def _bucket(record: OutRecord, now: float) -> int | None:
    """The delay bucket of ``record`` if it is due later than now (else None)."""
    delay = (record.deliver_at or 0) - now
    return bucket_ms(delay) if delay > 0.001 else None


class AmqpTransport(Transport):
    """One connection to one RabbitMQ virtual host."""

    system = "rabbitmq"
    # Streams replicate across a cluster's nodes; the offsets a publish got are not
    # told to AMQP 0-9-1 publishers; no transactions across streams.
    capabilities = (BASE_CAPABILITIES | {Capability.REPLICATION}) - {Capability.APPEND_OFFSETS}

    def __init__(self, settings: AmqpSettings) -> None:
        self.settings = settings
        #: The connection, kept open (made again in the background when lost).
        self.link = Link(settings, self._reopen)
        self._publisher = BatchPublisher(self._publishing_channel)
        self._partitions: dict[str, int] = {}
        self._declared: set[str] = set()
        self._groups: set[str] = set()
        self._registered: set[str] = set()
        self._topic_lock = asyncio.Lock()
        self._round_robin = itertools.count()
        self._topics_log: JsonLog | None = None
        self._groups_log: JsonLog | None = None
        self._delays: DelayBuckets | None = None
        self._forwarder: DueForwarder | None = None
        self._started = False

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Connect (to the first node that answers) and start tailing the topics and
        groups registries; from now on a lost connection is made again by itself."""
        if self._started:
            return
        await self.link.open()
        try:
            # A cluster may still be starting a stream's replica on this node: again.
            await self.link.retry("opening tidings' streams",
                                  lambda: self._open_on(self.link.connection))
        except BaseException:
            await self.link.close()
            raise
        self._started = True

    async def ensure_connected(self) -> AbstractConnection:
        """The open connection, once the link is up again if it is reconnecting (up to
        ``connect_timeout``); then :class:`BrokerUnavailableError` (subscriptions lose
        their partitions on a new connection and join again: see ``_subscription``)."""
        await self.link.wait(self.settings.connect_timeout)
        return self.link.connection

    async def _reopen(self, connection: AbstractConnection) -> None:
        """The link's callback on a new connection: open again what lived on the old."""
        await self._open_on(connection)

    async def _open_on(self, connection: AbstractConnection) -> None:
        for old in (self._topics_log, self._groups_log, self._forwarder):
            if old is not None:
                await old.close()
        self._topics_log = JsonLog(connection, self.publish, TOPICS_LOG, self._on_topic)
        self._groups_log = JsonLog(connection, self.publish, GROUPS_LOG, self._on_group)
        self._delays = DelayBuckets(connection, self.settings.queue_type)
        self._forwarder = DueForwarder(connection, self.settings.queue_type, self.publish)
        await self._topics_log.open()
        await self._groups_log.open()
        await self._forwarder.open()

    async def close(self) -> None:
        """Close the connection (its exclusive queues, hence partition locks, go too)."""
        self._started = False
        if self._forwarder is not None:
            await self._forwarder.close()
        await self.link.close()

    @property
    def connection(self) -> AbstractConnection:
        """The open connection; :class:`BrokerUnavailableError` if the transport is not
        started or the broker is unreachable now."""
        return self.link.connection

    async def publish(self, routing_key: str, body: bytes, props: Basic.Properties,
                      exchange: str = "") -> None:
        """Publish one message and wait for the broker's confirm; while the broker is
        unreachable, try again on the next connection for up to ``publish_timeout``
        (concurrent publishes share frame batches: see ``_publish``)."""
        await self._publish([(exchange, routing_key, body, props)],
                            f"publishing to {routing_key!r}")

    async def _publish(self, messages: Sequence[Message], what: str) -> None:
        # A batch cut by a lost connection is sent again whole: messages confirmed
        # before the loss are then duplicated (at-least-once).
        await self.link.retry(what, lambda: self._publish_once(messages, what))

    async def _publish_once(self, messages: Sequence[Message], what: str) -> None:
        with driver_errors(what):
            try:
                await self._publisher.publish(messages)
            except aiormq.exceptions.PublishError as exc:
                returned = exc.frame
                where = getattr(returned, "routing_key", "?")
                raise TransportError(
                    f"{what}: no queue took a message routed to {where!r} (was its stream "
                    f"deleted?): RabbitMQ returned it ({getattr(returned, 'reply_text', '')})"
                ) from exc
            except aiormq.exceptions.DeliveryError as exc:
                raise TransportError(f"{what}: RabbitMQ refused a message ({exc.frame})") from exc
            except aiormq.exceptions.ChannelInvalidStateError as exc:
                # The channel (or connection) closed under the publish.
                raise BrokerUnavailableError(f"{what}: {exc}") from exc

    async def _publishing_channel(self) -> AbstractChannel:
        """A new channel in confirm mode (the publisher opens one whenever its last one
        closed)."""
        with driver_errors("opening a publishing channel"):
            # Not ensure_connected(): publish() waits for the link itself, within
            # publish_timeout.
            return await self.link.connection.channel(publisher_confirms=True)

    # -- topics ------------------------------------------------------------------------

    def _on_topic(self, entry: dict[str, Any]) -> None:
        self._partitions.setdefault(entry["topic"], int(entry["partitions"]))

    def _on_group(self, entry: dict[str, Any]) -> None:
        self._groups.add(entry["group"])

    async def ensure_topic(self, topic: str, partitions: int | None = None) -> int:
        """Claim ``topic`` in the registry (the first claim wins) and declare its streams."""
        if topic in self._declared:
            return self._partitions[topic]
        assert self._topics_log is not None, "start the transport first"
        async with self._topic_lock:
            if topic not in self._partitions:
                await self._topics_log.sync()
            if topic not in self._partitions:
                # Streams first: a conflicting queue is refused before the topic is
                # registered (extra streams, if another claim wins with fewer, are unused).
                count = partitions or self.settings.partitions
                await self._declare_streams(topic, count)
                await self._topics_log.append({"topic": topic, "partitions": count})
                await self._topics_log.sync()
            count = self._partitions[topic]
            await self._declare_streams(topic, count)
            self._declared.add(topic)
        return count

    async def _declare_streams(self, topic: str, count: int) -> None:
        with driver_errors(f"declaring the streams of topic {topic!r}"):
            channel = await (await self.ensure_connected()).channel()
            try:
                for p in range(count):
                    await declare_stream(channel, partition_stream(topic, p))
            finally:
                with contextlib.suppress(Exception):
                    await channel.close()

    async def _known(self, topic: str) -> int:
        if topic not in self._partitions and self._topics_log is not None:
            await self._topics_log.sync()
        if topic not in self._partitions:
            raise UnknownTopicError(f"unknown topic {topic!r}")
        return self._partitions[topic]

    async def register_group(self, group: str) -> None:
        """Note ``group`` in the groups registry (once per process)."""
        if group not in self._registered and self._groups_log is not None:
            self._registered.add(group)
            await self._groups_log.append({"group": group})

    # -- appends ------------------------------------------------------------------------

    async def append(self, records: Sequence[OutRecord]) -> list[Position]:
        """Publish each record to its partition's stream (in order, in frame batches);
        return once all are confirmed."""
        for topic in {r.topic for r in records}:
            await self.ensure_topic(topic)
        positions = [self._position(r) for r in records]
        now = time.time()
        for bucket in {b for r in records if (b := _bucket(r, now)) is not None}:
            assert self._delays is not None
            await self._delays.ensure(bucket)
        await self._publish([self._message(r, p.partition or 0, now)
                             for r, p in zip(records, positions, strict=True)],
                            f"appending to {records[0].topic!r}" if records else "appending")
        return positions

    def _position(self, record: OutRecord) -> Position:
        count = self._partitions[record.topic]
        if record.partition is not None:
            if not 0 <= record.partition < count:
                raise ValueError(f"topic {record.topic!r} has no partition {record.partition}")
            partition = record.partition
        elif record.key is None:
            partition = next(self._round_robin) % count
        else:
            partition = zlib.crc32(record.key.encode()) % count
        return Position(record.topic, partition, None)

    def _message(self, record: OutRecord, partition: int, now: float) -> Message:
        """The message that appends ``record``: to its stream, or (due later) to the
        delay exchange."""
        stream = partition_stream(record.topic, partition)
        bucket = _bucket(record, now)
        if bucket is None:
            return ("", stream, record.value, properties(record, now))
        props = properties(record, record.deliver_at or now,
                           {BUCKET: str(bucket), TARGET: stream})
        return (EXCHANGE, stream, record.value, props)

    # -- subscriptions -------------------------------------------------------------------

    def subscribe(
        self,
        group: str | None,
        topics: Sequence[str],
        listener: RebalanceListener,
        *,
        start: Start = Start.EARLIEST,
        client: str = "",
    ) -> Subscription:
        """Join ``group`` (or read group-less) on ``topics``."""
        from ._subscription import AmqpSubscription

        return AmqpSubscription(self, group, topics, listener, start, client)

    def open_offsets(self, group: str, on_entry: Any) -> JsonLog:
        """A (not yet opened) tail of ``group``'s committed offsets."""
        return JsonLog(self.connection, self.publish, offsets_log(group), on_entry)

    # -- reads and admin ------------------------------------------------------------------

    async def read(self, topic: str, partition: int, offset: int, limit: int) -> list[Record]:
        """Records of one partition from ``offset`` on (until the stream stays quiet)."""
        if not 0 <= partition < await self._known(topic):
            raise UnknownTopicError(f"topic {topic!r} has no partition {partition}")
        messages = await self._read(topic, partition, max(offset, 0), limit)
        return [_to_record(topic, partition, m) for m in messages]

    async def _read(self, topic: str, partition: int, start: int | str | float,
                    limit: int) -> list[DeliveredMessage]:
        wait = self.settings.end_wait
        with driver_errors(f"reading {topic!r}[{partition}]"):
            return await read_quiet(await self.ensure_connected(),
                                    partition_stream(topic, partition), start, limit, wait,
                                    max(2 * wait, 0.3))

    async def end_offset(self, topic: str, partition: int) -> int:
        """The offset the next record of the partition will get."""
        last = await self._read(topic, partition, "last", 1_000_000)
        return offset_of(last[-1]) + 1 if last else 0

    async def describe_topics(self) -> list[TopicInfo]:
        """Every registered topic with its end offsets (found concurrently)."""
        await self._answering()
        if self._topics_log is not None:
            await self._topics_log.sync()
        topics = sorted(self._partitions.items())
        gate = asyncio.Semaphore(128)

        async def end(topic: str, p: int) -> int:
            async with gate:
                return await self.end_offset(topic, p)

        ends = await asyncio.gather(*(end(t, p) for t, n in topics for p in range(n)))
        it = iter(ends)
        return [TopicInfo(t, n, dict.fromkeys(range(n), 0), {p: next(it) for p in range(n)})
                for t, n in topics]

    async def _answering(self) -> None:
        """Ride out a reconnect in progress (a second), but fail fast during an outage
        rather than wait ``publish_timeout`` for a marker (``App.health``)."""
        if not await self.link.wait(1.0):
            raise self.link.unavailable()

    async def describe_groups(self) -> list[GroupInfo]:
        """Every registered group with its committed offsets and the members that answer
        a roll call within ``end_wait`` seconds (all groups at once)."""
        await self._answering()
        if self._groups_log is not None:
            await self._groups_log.sync()
        gate = asyncio.Semaphore(32)
        found = await asyncio.gather(*(self._describe_group(g, gate) for g in sorted(self._groups)))
        return list(found)

    async def _describe_group(self, group: str, gate: asyncio.Semaphore) -> GroupInfo:
        async with gate:
            committed, heard = await asyncio.gather(
                self.committed(group),
                observe(await self.ensure_connected(), group, max(self.settings.end_wait, 0.1)))
        members = tuple(
            MemberInfo(member, client, tuple(sorted(TopicPartition(t, p) for t, p in parts)))
            for member, (client, parts) in sorted(heard.items()))
        return GroupInfo(group, members, committed)

    async def committed(self, group: str) -> dict[TopicPartition, int]:
        """``group``'s committed offsets, as of now."""
        committed: dict[TopicPartition, int] = {}

        def note(entry: dict[str, Any]) -> None:
            committed[TopicPartition(entry["t"], entry["p"])] = entry["o"]

        log = self.open_offsets(group, note)
        try:
            await log.open()
            await log.sync()
        finally:
            await log.close()
        return committed

    async def set_offsets(self, group: str, offsets: Mapping[TopicPartition, int]) -> None:
        """Append the offsets to the group's log as seeks; owners follow them at once."""
        for tp in offsets:
            await self._known(tp.topic)
        await self.register_group(group)
        log = self.open_offsets(group, lambda entry: None)
        with driver_errors(f"setting the offsets of group {group!r}"):
            await log.open()
            await log.close()
            await log.append(*({"t": tp.topic, "p": tp.partition, "o": o, "seek": True}
                               for tp, o in offsets.items()))

    async def offsets_for_time(self, topic: str, timestamp: float) -> dict[int, int]:
        """Per partition, the first offset at or after ``timestamp`` (streams index
        chunks by time; the records of the chunk found are scanned)."""
        count = await self._known(topic)
        return dict(zip(range(count), await asyncio.gather(
            *(self._offset_for_time(topic, p, timestamp) for p in range(count))), strict=True))

    async def _offset_for_time(self, topic: str, partition: int, timestamp: float) -> int:
        messages = await self._read(topic, partition, timestamp - 5.0, 1_000_000)
        for message in messages:
            if _to_record(topic, partition, message).timestamp >= timestamp:
                return offset_of(message)
        return offset_of(messages[-1]) + 1 if messages else await self.end_offset(topic, partition)
