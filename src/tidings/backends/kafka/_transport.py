"""The Kafka transport: one producer, one admin client, one reader, consumers on demand.

Threads per transport: the producer's poller (delivery reports), one driver thread per
consumer (each subscription, the reader, the delay forwarder), plus librdkafka's own.
The event loop only queues records and awaits futures; it never blocks on the network.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import deque
from collections.abc import Awaitable, Iterable, Mapping, Sequence
from typing import Any

from confluent_kafka import KafkaError

from ..._errors import BrokerUnavailableError, TransportError, UnknownTopicError
from ..._records import (
    GroupInfo,
    OutRecord,
    Position,
    Record,
    Start,
    TopicInfo,
    TopicPartition,
)
from ...ports import (
    BASE_CAPABILITIES,
    Capability,
    RebalanceListener,
    Subscription,
    SupportsTransactions,
    TransactionalSubscription,
    Transport,
)
from . import _delay
from ._admin import KafkaAdmin
from ._forwarder import DelayForwarder
from ._outage import Reachability
from ._producer import DeliveryProducer, check_sizes
from ._reader import PartitionReader
from ._settings import KafkaSettings
from ._subscription import KafkaSubscription
from ._transactional import TransactionalKafkaSubscription
from ._translate import AUTH_CODES

__all__ = ["KafkaTransport"]

log = logging.getLogger("tidings.kafka")


class KafkaTransport(Transport, SupportsTransactions):
    """A transport over a Kafka cluster (or any Kafka-protocol broker such as tansu)."""

    system = "kafka"
    capabilities = BASE_CAPABILITIES | {Capability.EXACTLY_ONCE, Capability.REPLICATION}

    shared_between_processes = True

    def __init__(self, settings: KafkaSettings) -> None:
        self.settings = settings
        self.max_record_bytes = settings.max_message_bytes
        self._errors: deque[KafkaError] = deque(maxlen=32)
        self._admin: KafkaAdmin | None = None
        self._producer: DeliveryProducer | None = None
        self._reader: PartitionReader | None = None
        self._forwarder: DelayForwarder | None = None
        self._forwarding: asyncio.Task[None] | None = None
        self._subscriptions: list[KafkaSubscription] = []
        self._transactions = settings.transactional_id or f"tidings-{uuid.uuid4().hex[:12]}"
        self._reachability = Reachability(settings.bootstrap_servers, self._probe,
                                          self._recovered)

    def _hooks(self) -> dict[str, Any]:
        return {"error_cb": self._on_error}

    def _on_error(self, error: KafkaError) -> None:
        """librdkafka's ``error_cb`` of the admin client and the producer (any thread)."""
        self._errors.append(error)
        self._reachability.error(error)

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Reach the cluster (BrokerUnavailableError within ``request_timeout``), then
        start the producer. The delay forwarder starts with the first subscription."""
        if self._admin is not None:
            return
        admin = KafkaAdmin(self.settings, self.settings.admin_config() | self._hooks())
        await self._check_reachable(admin)
        self._admin = admin
        self._producer = DeliveryProducer(
            self.settings.producer_config() | self._hooks(), self.settings.max_message_bytes
        )
        loop = asyncio.get_running_loop()
        self._producer.start(loop)
        self._reachability.start(loop)
        self._reader = PartitionReader(self.settings)

    def _start_forwarder(self) -> None:
        """Forward delayed records from this transport once it consumes (a transport that
        only publishes never joins the delay group, so it starts and stops fast)."""
        if self._forwarder is None and self.settings.delay_forwarder:
            asyncio.get_running_loop()  # subscribe() runs inside the event loop
            self._forwarder = DelayForwarder(self.settings, self._send_now, self._ensure_all)
            self._forwarding = asyncio.create_task(self._forwarder.run(), name="tidings-delay")

    async def _check_reachable(self, admin: KafkaAdmin) -> None:
        try:
            await admin.metadata()
        except TransportError as exc:
            admin.client.poll(0)  # serve error_cb: it says why (refused, auth, TLS...)
            auth = [e for e in self._errors if e.code() in AUTH_CODES]
            if auth:
                raise TransportError(
                    f"Kafka authentication failed at {self.settings.bootstrap_servers}: "
                    f"{auth[-1].str()}") from exc
            why = self._errors[-1].str() if self._errors else str(exc)
            raise BrokerUnavailableError(
                f"cannot reach Kafka at {self.settings.bootstrap_servers} within "
                f"{self.settings.request_timeout:g} s: {why}") from exc

    async def _probe(self) -> None:
        """One metadata request: whether the cluster answers (for the outage probe)."""
        admin, _, _ = self._require()
        await admin.metadata(timeout=min(self.settings.request_timeout, 3.0))

    async def _recovered(self) -> None:
        """After an outage: a broker restart may have left librdkafka's admin client
        stuck on a stale group coordinator (describing groups times out for good) and,
        on a broker without durable storage, lost the topics. So the admin client is
        renewed, its topic cache emptied, and the topics of open subscriptions are
        created again if missing (a no-op on a cluster that kept them)."""
        if self._admin is None:
            return
        await self._admin.renew()
        topics = {t for s in self._subscriptions if not s.closed for t in s.topics}
        await self._ensure_all(topics)
        if self._forwarder is not None:
            await self._ensure_all(_delay.tier_topics(), 1)

    async def close(self) -> None:
        """Stop the forwarder, close open subscriptions, deliver queued records."""
        await self._reachability.close()
        if self._forwarder is not None and self._forwarding is not None:
            self._forwarder.stop()
            with contextlib.suppress(Exception):
                await self._forwarding
            await self._forwarder.close()
        self._forwarder = self._forwarding = None
        for subscription in self._subscriptions:
            with contextlib.suppress(TransportError):
                await subscription.close()
        self._subscriptions.clear()
        if self._producer is not None:
            await self._producer.close(self.settings.publish_timeout)
        if self._reader is not None:
            await self._reader.close()
        self._producer = self._reader = self._admin = None

    def _require(self) -> tuple[KafkaAdmin, DeliveryProducer, PartitionReader]:
        if self._admin is None or self._producer is None or self._reader is None:
            raise TransportError("the Kafka transport is not started (or already closed)")
        return self._admin, self._producer, self._reader

    # -- topics and appends ------------------------------------------------------------

    async def ensure_topic(self, topic: str, partitions: int | None = None) -> int:
        """Create ``topic`` if missing; return its partition count."""
        admin, _, _ = self._require()
        return await admin.ensure_topic(topic, partitions)

    async def _ensure_all(self, topics: Iterable[str], partitions: int | None = None
                          ) -> dict[str, int]:
        admin, _, _ = self._require()
        return {topic: await admin.ensure_topic(topic, partitions) for topic in set(topics)}

    def append(self, records: Sequence[OutRecord]) -> Awaitable[Sequence[Position]]:
        """Append durably (acks from every in-sync replica); delayed records go to a tier.

        Records due now, to known topics, are queued before this returns (the caller
        need not keep them while it waits: see ``DeliveryProducer.queue``)."""
        if not records:
            return self._append_routed(records)  # nothing to check, nothing to send
        admin, producer, _ = self._require()
        if admin.knows_all(records):  # the common case, kept short: no delays, known topics
            return _acknowledged(producer.queue(records))
        return self._append_routed(records)

    async def _append_routed(self, records: Sequence[OutRecord]) -> Sequence[Position]:
        if not records:
            return []
        now = _delay.now()
        outgoing = [_delay.route(record, now) for record in records]
        positions = await self._send_now(outgoing, targets={r.topic for r in records})
        return [
            pos if out is rec else Position(rec.topic, None, None)
            for rec, out, pos in zip(records, outgoing, positions, strict=True)
        ]

    async def _prepare(self, records: Sequence[OutRecord]) -> list[OutRecord]:
        """What ``append`` does before producing: size checks, delayed records routed to
        their tier, missing topics created (for records sent in a transaction)."""
        admin, _, _ = self._require()
        check_sizes(records, self.settings.max_message_bytes)
        if admin.knows_all(records):
            return list(records)
        now = _delay.now()
        outgoing = [_delay.route(record, now) for record in records]
        topics = {r.topic for r in outgoing}
        tiers = {t for t in topics if t.startswith(_delay.PREFIX)}
        await self._ensure_all(tiers, 1)
        await self._ensure_all(topics - tiers)
        return outgoing

    async def _send_now(self, records: Sequence[OutRecord], targets: Iterable[str] = ()
                        ) -> Sequence[Position]:
        _, producer, _ = self._require()
        topics = {r.topic for r in records} | set(targets)
        tiers = {t for t in topics if t.startswith(_delay.PREFIX)}
        await self._ensure_all(tiers, 1)
        await self._ensure_all(topics - tiers)
        return await producer.send(records)

    # -- consuming ---------------------------------------------------------------------

    def subscribe(
        self,
        group: str | None,
        topics: Sequence[str],
        listener: RebalanceListener,
        *,
        start: Start = Start.EARLIEST,
        client: str = "",
    ) -> Subscription:
        """Join ``group`` on ``topics`` (eager rebalancing), or read them group-less."""
        self._require()
        self._start_forwarder()
        subscription = KafkaSubscription(
            self.settings, group, topics, listener, start, client, self._ensure_all,
            self._end_offsets, on_error=self._on_error,
        )
        self._keep(subscription)
        return subscription

    def subscribe_transactional(
        self,
        group: str,
        topics: Sequence[str],
        listener: RebalanceListener,
        *,
        start: Start = Start.EARLIEST,
        client: str = "",
    ) -> TransactionalSubscription:
        """Join ``group``; commits are Kafka transactions that may carry records."""
        self._require()
        self._start_forwarder()
        subscription = TransactionalKafkaSubscription(
            self.settings, group, topics, listener, start, client, self._ensure_all,
            self._end_offsets,
            transactional_id=f"{self._transactions}.{group}.{','.join(sorted(topics))}",
            prepare=self._prepare, on_error=self._on_error,
        )
        self._keep(subscription)
        return subscription

    def _keep(self, subscription: KafkaSubscription) -> None:
        self._subscriptions = [s for s in self._subscriptions if not s.closed]
        self._subscriptions.append(subscription)

    async def _end_offsets(self, tps: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        """True end offsets (see :class:`PartitionReader`)."""
        admin, _, reader = self._require()
        return await reader.end_offsets(await admin.list_offsets(list(tps), "latest"))

    async def read(self, topic: str, partition: int, offset: int, limit: int) -> list[Record]:
        """Records of one partition from ``offset`` on, read by a group-less consumer."""
        admin, _, reader = self._require()
        if not 0 <= partition < await admin.partition_count(topic):
            raise UnknownTopicError(f"topic {topic!r} has no partition {partition}")
        return await reader.read(TopicPartition(topic, partition), offset, limit)

    # -- admin ---------------------------------------------------------------------------

    async def describe_topics(self) -> list[TopicInfo]:
        """Every non-internal topic with its first and next offsets."""
        admin, _, _ = self._require()
        topics = await admin.topics()
        tps = [TopicPartition(t, p) for t, count in topics.items() for p in range(count)]
        starts = await admin.list_offsets(tps, "earliest")
        ends = await self._end_offsets(tps)
        return [
            TopicInfo(name, count,
                      {p: starts[TopicPartition(name, p)] for p in range(count)},
                      {p: ends[TopicPartition(name, p)] for p in range(count)})
            for name, count in topics.items()
        ]

    async def describe_groups(self) -> list[GroupInfo]:
        """Every group the broker lists (tansu 0.6 reports no members)."""
        admin, _, _ = self._require()
        return await admin.groups()

    async def set_offsets(self, group: str, offsets: Mapping[TopicPartition, int]) -> None:
        """Overwrite committed offsets; Kafka applies it only while the group is empty."""
        admin, _, _ = self._require()
        await admin.set_offsets(group, offsets)

    async def offsets_for_time(self, topic: str, timestamp: float) -> dict[int, int]:
        """Per partition, the first offset whose record is at or after ``timestamp``."""
        admin, _, reader = self._require()
        count = await admin.partition_count(topic)
        tps = [TopicPartition(topic, p) for p in range(count)]
        millis = int(timestamp * 1000)
        listed = await admin.list_offsets(tps, millis)
        ends = await self._end_offsets(tps)
        result = {}
        for tp in tps:
            if listed[tp] < 0:  # no record that late
                result[tp.partition] = ends[tp]
            else:  # brokers may answer per batch: read on to the exact record
                result[tp.partition] = await reader.first_at_or_after(tp, listed[tp], millis)
        return result


async def _acknowledged(queued: Awaitable[Sequence[Position]]) -> Sequence[Position]:
    """A coroutine (as ``append`` callers may expect: ``create_task`` takes no future)
    that waits for records already queued, without holding them."""
    return await queued
