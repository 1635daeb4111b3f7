"""The in-process log behind ``memory://``: real partitions, groups, leases and timers.

It is not a mock: it keeps the same semantics as the durable backends (dense offsets,
per-key partitions, group leases that expire, fenced commits, delayed records), so the
conformance suite runs on it unchanged. It is shared by every transport of one process
that names the same broker, and lives on one event loop.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..._records import OutRecord, Position, Record, TopicPartition

__all__ = ["Group", "Member", "MemoryBroker"]


@dataclass
class Member:
    """A live member of a group, as the broker sees it."""

    member_id: str
    client: str
    topics: frozenset[str]
    last_seen: float


@dataclass
class Group:
    """Members, partition owners and committed offsets of one consumer group."""

    members: dict[str, Member] = field(default_factory=dict)
    owners: dict[TopicPartition, str] = field(default_factory=dict)
    committed: dict[TopicPartition, int] = field(default_factory=dict)


class MemoryBroker:
    """One in-memory log with its groups and scheduled records."""

    def __init__(self, default_partitions: int = 4, session_timeout: float = 3.0) -> None:
        self.default_partitions = default_partitions
        self.session_timeout = session_timeout
        self.topics: dict[str, list[list[Record]]] = {}
        self.groups: dict[str, Group] = {}
        self._scheduled: list[tuple[float, int, OutRecord]] = []
        self._seq = itertools.count()
        self._round_robin = itertools.count()
        self._waiters: set[asyncio.Event] = set()
        self._timer: asyncio.TimerHandle | None = None

    # -- the log -------------------------------------------------------------------

    def ensure_topic(self, topic: str, partitions: int | None = None) -> int:
        """Create ``topic`` if missing and return its partition count."""
        existing = self.topics.get(topic)
        if existing is None:
            count = partitions or self.default_partitions
            existing = self.topics[topic] = [[] for _ in range(count)]
        return len(existing)

    def append(self, records: Sequence[OutRecord]) -> list[Position]:
        """Append (or schedule) records and wake every waiting consumer."""
        now = time.time()
        positions = []
        for out in records:
            if out.deliver_at is not None and out.deliver_at > now:
                heapq.heappush(self._scheduled, (out.deliver_at, next(self._seq), out))
                positions.append(Position(out.topic, None, None))
            else:
                positions.append(self._append_one(out, now))
        self._arm_timer()
        self.notify()
        return positions

    def _append_one(self, out: OutRecord, now: float) -> Position:
        parts = self.topics.get(out.topic)
        if parts is None:
            self.ensure_topic(out.topic)
            parts = self.topics[out.topic]
        partition = self._partition_for(out, len(parts))
        log = parts[partition]
        log.append(
            Record(out.topic, partition, len(log), out.key, out.value, dict(out.headers), now)
        )
        return Position(out.topic, partition, len(log) - 1)

    def _partition_for(self, out: OutRecord, count: int) -> int:
        if out.partition is not None:
            if not 0 <= out.partition < count:
                raise ValueError(f"topic {out.topic!r} has no partition {out.partition}")
            return out.partition
        if out.key is None:
            return next(self._round_robin) % count
        return zlib.crc32(out.key.encode()) % count

    def read(self, tp: TopicPartition, offset: int, limit: int) -> list[Record]:
        """Up to ``limit`` records of one partition from ``offset`` on."""
        log = self.topics[tp.topic][tp.partition]
        return log[max(offset, 0) : max(offset, 0) + limit]

    def end_offset(self, tp: TopicPartition) -> int:
        """The offset the next record of ``tp`` will get."""
        return len(self.topics[tp.topic][tp.partition])

    # -- wake-ups and timers -------------------------------------------------------

    def waiter(self) -> asyncio.Event:
        """An event set whenever records are appended; discard it with ``forget``."""
        event = asyncio.Event()
        self._waiters.add(event)
        return event

    def forget(self, event: asyncio.Event) -> None:
        """Stop waking ``event``."""
        self._waiters.discard(event)

    def notify(self) -> None:
        """Wake every waiting consumer (new records or a group change)."""
        for event in self._waiters:
            event.set()

    def _arm_timer(self) -> None:
        if not self._scheduled:
            return
        if self._timer is not None:
            self._timer.cancel()
        delay = max(self._scheduled[0][0] - time.time(), 0.0)
        self._timer = asyncio.get_running_loop().call_later(delay, self._fire_due)

    def _fire_due(self) -> None:
        self._timer = None
        now = time.time()
        while self._scheduled and self._scheduled[0][0] <= now:
            _, _, out = heapq.heappop(self._scheduled)
            self._append_one(out, now)
        self._arm_timer()
        self.notify()

    @property
    def scheduled(self) -> int:
        """How many delayed records wait for their delivery time."""
        return len(self._scheduled)

    def release_next(self) -> float | None:
        """Deliver the earliest scheduled records now, as if their time had come (a test's
        fake clock skipping a delay); their delivery time, or None if none wait."""
        if not self._scheduled:
            return None
        due, now = self._scheduled[0][0], time.time()
        while self._scheduled and self._scheduled[0][0] <= due:
            _, _, out = heapq.heappop(self._scheduled)
            self._append_one(out, now)
        self._arm_timer()
        self.notify()
        return due

    def close_timers(self) -> None:
        """Cancel the scheduled-delivery timer (records stay scheduled)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # -- groups --------------------------------------------------------------------

    def group(self, name: str) -> Group:
        """The group called ``name``, created empty on first use."""
        return self.groups.setdefault(name, Group())

    def expire_members(self, group: Group) -> None:
        """Forget members whose lease ran out, and the partitions they owned."""
        deadline = time.monotonic() - self.session_timeout
        for member_id in [m for m, member in group.members.items() if member.last_seen < deadline]:
            del group.members[member_id]
            for tp in [tp for tp, owner in group.owners.items() if owner == member_id]:
                del group.owners[tp]
