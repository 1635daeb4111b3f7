"""Random access to partitions with one throwaway (group-less) consumer.

Besides ``Transport.read`` it finds true end offsets: tansu 0.6 answers ListOffsets
with the base offset of a partition's last batch + 1 when producers batch, while the
high watermark it reports in fetch responses is right. So the reader assigns each
partition at the (possibly low) listed end and reads to the partition-EOF event,
whose offset is the real end. The same read-forward refines ``offsets_for_time``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping

from confluent_kafka import Consumer, KafkaError, Message
from confluent_kafka import TopicPartition as KafkaPartition

from ..._records import Record, TopicPartition
from ._convert import take, to_record
from ._settings import KafkaSettings
from ._thread import DriverThread
from ._translate import driver_errors

__all__ = ["PartitionReader"]

_BATCH = 500
_QUIET = 0.5  # seconds without data or EOF after which a partition counts as read


class PartitionReader:
    """A consumer without a group, assigned and positioned explicitly for each call."""

    def __init__(self, settings: KafkaSettings) -> None:
        self._settings = settings
        self._lock = asyncio.Lock()
        self._thread: DriverThread | None = None
        self._consumer: Consumer | None = None

    async def _open(self) -> tuple[DriverThread, Consumer]:
        if self._thread is None or self._consumer is None:
            config = self._settings.consumer_config(None, "error", eof=True)
            config["client.id"] = f"{self._settings.client_id}-reader"
            thread = DriverThread("tidings-kafka-reader")
            with driver_errors("read"):
                self._consumer = await thread.call(lambda: Consumer(config))
            self._thread = thread
        return self._thread, self._consumer

    async def read(self, tp: TopicPartition, offset: int, limit: int) -> list[Record]:
        """Up to ``limit`` records of ``tp`` from ``offset`` on (fewer at its end)."""
        if limit <= 0:
            return []
        messages, _ = await self._scan({tp: max(offset, 0)}, limit)
        return [to_record(m) for m in messages[:limit]]

    async def end_offsets(self, hints: Mapping[TopicPartition, int]) -> dict[TopicPartition, int]:
        """True end offsets, reading forward from ``hints`` (offsets at or below the end)."""
        if not hints:
            return {}
        _, ends = await self._scan(hints, None)
        return {tp: ends.get(tp, hint) for tp, hint in hints.items()}

    async def first_at_or_after(self, tp: TopicPartition, offset: int, millis: int) -> int:
        """The first offset from ``offset`` on whose record is at or after ``millis``."""
        while True:
            messages, ends = await self._scan({tp: offset}, _BATCH)
            for message in messages:
                if message.timestamp()[1] >= millis:
                    return message.offset() or 0
            if tp in ends or not messages:
                return ends.get(tp, offset)
            offset = (messages[-1].offset() or 0) + 1

    async def _scan(
        self, starts: Mapping[TopicPartition, int], limit: int | None
    ) -> tuple[list[Message], dict[TopicPartition, int]]:
        """Read from ``starts`` until ``limit`` messages or every partition's end."""
        async with self._lock:
            thread, consumer = await self._open()
            wanted = [KafkaPartition(tp.topic, tp.partition, o) for tp, o in starts.items()]
            with driver_errors("read"):
                await thread.call(lambda: consumer.assign(wanted))
                try:
                    return await self._drain(thread, consumer, set(starts), limit)
                finally:
                    await thread.call(consumer.unassign)

    async def _drain(
        self, thread: DriverThread, consumer: Consumer, open_: set[TopicPartition],
        limit: int | None,
    ) -> tuple[list[Message], dict[TopicPartition, int]]:
        found: list[Message] = []
        ends: dict[TopicPartition, int] = {}
        deadline = time.monotonic() + self._settings.request_timeout
        quiet_since = time.monotonic()
        while open_ and time.monotonic() < deadline:
            if limit is not None and len(found) >= limit:
                break
            batch = await thread.call(lambda: take(consumer, _BATCH, 0.1))
            if batch:
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since > _QUIET:
                break  # past the end: some brokers (tansu) send neither data nor EOF
            for message in batch:
                tp = TopicPartition(message.topic() or "", message.partition() or 0)
                error = message.error()
                if error is None:
                    found.append(message)
                    continue
                open_.discard(tp)  # end of the partition, or offset out of range
                if error.code() == KafkaError._PARTITION_EOF:
                    ends[tp] = message.offset() or 0
        return found, ends

    async def close(self) -> None:
        """Close the consumer and its thread."""
        thread, consumer = self._thread, self._consumer
        self._thread = self._consumer = None
        if thread is not None and consumer is not None:
            async with self._lock:
                await thread.call(consumer.close)
            thread.stop()
