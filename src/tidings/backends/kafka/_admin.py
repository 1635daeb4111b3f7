"""Topic and group administration through librdkafka's AdminClient.

AdminClient calls return ``concurrent.futures`` resolved by librdkafka's background
thread; they are awaited with :func:`asyncio.wrap_future`. ``list_topics`` is a
blocking call and runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal, TypeVar

from confluent_kafka import ConsumerGroupTopicPartitions, KafkaError, KafkaException
from confluent_kafka import TopicPartition as KafkaPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.admin._listoffsets import OffsetSpec
from confluent_kafka.cimpl import NewTopic

from ..._errors import ConfigurationError, TransportError, UnknownTopicError
from ..._records import GroupInfo, MemberInfo, OutRecord, TopicPartition
from ._settings import KafkaSettings
from ._translate import driver_errors

__all__ = ["KafkaAdmin", "is_internal"]

T = TypeVar("T")


def _offset_spec(which: Literal["earliest", "latest"] | int) -> OffsetSpec:
    if which == "earliest":
        return OffsetSpec.earliest()  # type: ignore[no-untyped-call,no-any-return]
    if which == "latest":
        return OffsetSpec.latest()  # type: ignore[no-untyped-call,no-any-return]
    return OffsetSpec.for_timestamp(which)  # type: ignore[no-any-return]


_LEGAL = re.compile(r"[A-Za-z0-9._-]+")


def _invalid_name(topic: str) -> str:
    """Why Kafka would reject ``topic`` as a name, or "" if it is legal."""
    if topic in ("", ".", ".."):
        return "a topic name cannot be empty, '.' or '..'"
    if len(topic) > 249:
        return f"a topic name has at most 249 characters, not {len(topic)}"
    if not _LEGAL.fullmatch(topic):
        return "a topic name may only contain ASCII letters, digits, '.', '_' and '-'"
    return ""


def is_internal(topic: str) -> bool:
    """Topics Kafka or tidings keep for themselves (offsets, delay tiers)."""
    return topic.startswith("__")


class KafkaAdmin:
    """Topics, offsets and groups, with a cache of known partition counts."""

    def __init__(self, settings: KafkaSettings, config: dict[str, Any]) -> None:
        self._settings = settings
        self._config = config
        self.client = AdminClient(config)
        self._partitions: dict[str, int] = {}
        self._creating: dict[str, asyncio.Future[int]] = {}

    async def renew(self) -> None:
        """A new librdkafka admin client, and no known topics (after a broker restart).
        The old client is destroyed on a worker thread: that may wait for its requests."""
        old = [self.client]
        self.client = AdminClient(self._config)
        self._partitions.clear()
        await asyncio.to_thread(old.clear)

    async def _wait(self, future: concurrent.futures.Future[T], what: str,
                    topic: str | None = None) -> T:
        with driver_errors(what, topic):
            return await asyncio.wrap_future(future)

    async def metadata(self, topic: str | None = None, timeout: float | None = None) -> Any:
        """Cluster metadata (of one topic, or all), within ``timeout`` (by default the
        request timeout)."""
        timeout = timeout or self._settings.request_timeout
        with driver_errors("metadata", topic):
            return await asyncio.to_thread(self.client.list_topics, topic, timeout)

    # -- topics ------------------------------------------------------------------------

    def knows_all(self, records: Sequence[OutRecord]) -> bool:
        """Whether every record is due now and goes to a topic known to exist."""
        known = self._partitions
        return all(r.deliver_at is None and r.topic in known for r in records)

    async def ensure_topic(self, topic: str, partitions: int | None = None) -> int:
        """Create ``topic`` if missing (default partitions); return its partition count."""
        known = self._partitions.get(topic)
        if known is not None:
            return known
        creating = self._creating.get(topic)
        if creating is None:  # one creation per topic, however many callers wait for it
            creating = asyncio.ensure_future(self._create(topic, partitions))
            self._creating[topic] = creating
            creating.add_done_callback(lambda _: self._creating.pop(topic, None))
        return await asyncio.shield(creating)

    async def _create(self, topic: str, partitions: int | None) -> int:
        problem = _invalid_name(topic)
        if problem:  # Kafka would refuse it; some brokers (tansu) accept it silently
            raise TransportError(f"cannot create topic {topic!r}: {problem}")
        if partitions is not None and partitions < 1:
            raise ConfigurationError(f"topic {topic!r} needs at least one partition")
        count = partitions or self._settings.partitions
        replicas = self._settings.replication_factor or -1  # -1: the cluster's default
        spec = NewTopic(topic, count, replicas,
                        config=self._settings.topic_config() | self._topic_config(topic))
        timeout = self._settings.request_timeout
        futures = self.client.create_topics([spec], operation_timeout=timeout,
                                            request_timeout=timeout)
        try:
            await asyncio.wrap_future(futures[topic])
        except KafkaException as exc:
            error = exc.args[0]
            if not isinstance(error, KafkaError) or error.code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise TransportError(f"cannot create topic {topic!r}: {exc}") from exc
            count = await self.partition_count(topic)
        self._partitions[topic] = count
        return count

    def _topic_config(self, topic: str) -> dict[str, str]:
        """A dead-letter topic keeps its records (a pending dead letter waits for a
        re-drive or a purge, however old), unless ``dlq_retention_hours`` says how long;
        the broker's default (often 7 days) would delete them silently."""
        if not topic.endswith(".dlq"):
            return {}
        hours = self._settings.dlq_retention_hours
        return {"retention.ms": str(int(hours * 3_600_000)) if hours else "-1",
                "retention.bytes": "-1"}

    async def partition_count(self, topic: str) -> int:
        """How many partitions ``topic`` has; UnknownTopicError if it does not exist."""
        # All topics: asking for one by name makes some brokers (tansu) create it.
        metadata = await self.metadata()
        found = metadata.topics.get(topic)
        if found is None or found.error is not None or not found.partitions:
            raise UnknownTopicError(f"unknown topic {topic!r}")
        self._partitions[topic] = len(found.partitions)
        return len(found.partitions)

    async def topics(self) -> dict[str, int]:
        """Every topic but internal ones, with its partition count."""
        metadata = await self.metadata()
        return {
            name: len(info.partitions) for name, info in sorted(metadata.topics.items())
            if not is_internal(name) and info.error is None
        }

    async def list_offsets(
        self, tps: list[TopicPartition], which: Literal["earliest", "latest"] | int
    ) -> dict[TopicPartition, int]:
        """Per partition, the first or end offset, or the first at a time in ms (ListOffsets)."""
        if not tps:
            return {}
        spec = _offset_spec(which)
        request = {KafkaPartition(tp.topic, tp.partition): spec for tp in tps}
        futures = self.client.list_offsets(request, request_timeout=self._settings.request_timeout)
        found = {}
        for kp, future in futures.items():
            result = await self._wait(future, "list offsets", kp.topic)
            found[TopicPartition(kp.topic, kp.partition)] = result.offset
        return found

    # -- groups ------------------------------------------------------------------------

    async def groups(self) -> list[GroupInfo]:
        """Every group the broker lists, with live members and committed offsets."""
        listed = await self._wait(self.client.list_consumer_groups(
            request_timeout=self._settings.request_timeout), "list groups")
        names = sorted(g.group_id for g in listed.valid if not is_internal(g.group_id))
        return [await self.group(name) for name in names]

    async def group(self, name: str) -> GroupInfo:
        """One group's members (empty on brokers that do not report them) and offsets."""
        timeout = self._settings.request_timeout
        described = self.client.describe_consumer_groups([name], request_timeout=timeout)
        description = await self._wait(described[name], "describe group")
        members = tuple(
            MemberInfo(m.member_id, m.client_id, tuple(sorted(
                TopicPartition(tp.topic, tp.partition)
                for tp in (m.assignment.topic_partitions if m.assignment else ())
            )))
            for m in description.members
        )
        listed = self.client.list_consumer_group_offsets(
            [ConsumerGroupTopicPartitions(name)], request_timeout=timeout)
        offsets = await self._wait(listed[name], "list group offsets")
        committed = {
            TopicPartition(tp.topic, tp.partition): tp.offset
            for tp in offsets.topic_partitions or () if tp.offset >= 0
        }
        return GroupInfo(name, members, committed)

    async def set_offsets(self, group: str, offsets: Mapping[TopicPartition, int]) -> None:
        """Overwrite ``group``'s committed offsets."""
        for topic in {tp.topic for tp in offsets}:
            await self.partition_count(topic)
        request = ConsumerGroupTopicPartitions(
            group, [KafkaPartition(tp.topic, tp.partition, o) for tp, o in offsets.items()])
        futures = self.client.alter_consumer_group_offsets(
            [request], request_timeout=self._settings.request_timeout)
        result = await self._wait(futures[group], "set offsets")
        for tp in result.topic_partitions or ():
            if tp.error is not None:
                raise TransportError(f"set offsets of {group!r} on {tp.topic}: {tp.error}")
