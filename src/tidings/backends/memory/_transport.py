"""The memory transport and its group subscription."""

from __future__ import annotations

import bisect
import itertools
import time
import uuid
from collections.abc import Mapping, Sequence

from ..._assignment import desired_assignment
from ..._errors import FencedError, UnknownTopicError
from ..._records import (
    GroupInfo,
    MemberInfo,
    OutRecord,
    Position,
    Record,
    Start,
    TopicInfo,
    TopicPartition,
    within_bytes,
)
from ..._waiting import wait_event
from ...ports import BASE_CAPABILITIES, Capability, RebalanceListener, Subscription, Transport
from ._broker import Member, MemoryBroker

__all__ = ["MemorySubscription", "MemoryTransport"]


class MemoryTransport(Transport):
    """A transport over a :class:`MemoryBroker` shared within one process."""

    system = "memory"
    capabilities = BASE_CAPABILITIES - {Capability.DURABILITY}

    shared_between_processes = False

    def __init__(self, broker: MemoryBroker) -> None:
        self.broker = broker

    async def start(self) -> None:
        """Nothing to connect to."""

    async def close(self) -> None:
        """Nothing to release: the broker outlives its transports."""

    async def ensure_topic(self, topic: str, partitions: int | None = None) -> int:
        """Create ``topic`` if missing; return its partition count."""
        return self.broker.ensure_topic(topic, partitions)

    async def append(self, records: Sequence[OutRecord]) -> list[Position]:
        """Append records; they are in the log when this returns."""
        return self.broker.append(records)

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
        return MemorySubscription(self.broker, group, topics, listener, start, client)

    async def read(self, topic: str, partition: int, offset: int, limit: int) -> list[Record]:
        """Records of one partition from ``offset`` on."""
        self._check(topic)
        return self.broker.read(TopicPartition(topic, partition), offset, limit)

    async def describe_topics(self) -> list[TopicInfo]:
        """Every topic with its offsets."""
        return [
            TopicInfo(name, len(parts), dict.fromkeys(range(len(parts)), 0),
                      {p: len(log) for p, log in enumerate(parts)})
            for name, parts in sorted(self.broker.topics.items())
        ]

    async def describe_groups(self) -> list[GroupInfo]:
        """Every group with its live members and committed offsets."""
        infos = []
        for name, group in sorted(self.broker.groups.items()):
            self.broker.expire_members(group)
            members = tuple(
                MemberInfo(m.member_id, m.client,
                           tuple(sorted(tp for tp, o in group.owners.items() if o == m.member_id)))
                for m in group.members.values()
            )
            infos.append(GroupInfo(name, members, dict(group.committed)))
        return infos

    async def set_offsets(self, group: str, offsets: Mapping[TopicPartition, int]) -> None:
        """Overwrite committed offsets; owners seek to them on their next fetch."""
        for tp in offsets:
            self._check(tp.topic)
        self.broker.group(group).committed.update(offsets)
        self.broker.notify()

    async def offsets_for_time(self, topic: str, timestamp: float) -> dict[int, int]:
        """Per partition, the first offset at or after ``timestamp``."""
        self._check(topic)
        return {
            p: bisect.bisect_left([r.timestamp for r in log], timestamp)
            for p, log in enumerate(self.broker.topics[topic])
        }

    def _check(self, topic: str) -> None:
        if topic not in self.broker.topics:
            raise UnknownTopicError(f"unknown topic {topic!r}")


class MemorySubscription(Subscription):
    """A member of a group (or a group-less reader) over the memory broker."""

    _ids = itertools.count()

    def __init__(
        self,
        broker: MemoryBroker,
        group: str | None,
        topics: Sequence[str],
        listener: RebalanceListener,
        start: Start,
        client: str,
    ) -> None:
        self._broker = broker
        self._group_name = group
        self._topics = frozenset(topics)
        self._listener = listener
        self._start = start
        self._member_id = f"{client or 'member'}-{next(self._ids)}-{uuid.uuid4().hex[:8]}"
        self._client = client
        self._positions: dict[TopicPartition, int] = {}
        self._seek_marks: dict[TopicPartition, int] = {}
        self._wake = broker.waiter()
        self._closed = False
        if group is None:
            for topic in self._topics:
                for p in range(broker.ensure_topic(topic)):
                    tp = TopicPartition(topic, p)
                    self._positions[tp] = broker.end_offset(tp) if start is Start.LATEST else 0

    def assignment(self) -> frozenset[TopicPartition]:
        """The partitions this member owns now."""
        return frozenset(self._positions)

    async def fetch(self, max_records: int, timeout: float,
                    max_bytes: int | None = None) -> list[Record]:
        """Records from owned partitions (values of at most ``max_bytes`` in all, or
        one record), waiting up to ``timeout`` for some."""
        deadline = time.monotonic() + timeout
        while not self._closed:
            self._wake.clear()
            if self._group_name is not None:
                await self._rebalance()
            records = self._collect(max_records, max_bytes)
            remaining = deadline - time.monotonic()
            if records or remaining <= 0:
                return records
            await wait_event(self._wake, min(remaining, self._heartbeat()))
        return []

    def _heartbeat(self) -> float:
        return max(self._broker.session_timeout / 3, 0.01)

    def _collect(self, max_records: int, max_bytes: int | None) -> list[Record]:
        out: list[Record] = []
        budget = max_bytes
        for tp, position in list(self._positions.items()):
            if len(out) >= max_records or (budget is not None and budget <= 0 and out):
                break
            batch = self._broker.read(tp, position, max_records - len(out))
            if budget is not None:
                batch, used = within_bytes(batch, budget, not out)
                budget -= used
            if batch:
                self._positions[tp] = batch[-1].offset + 1
                out.extend(batch)
        return out

    async def _rebalance(self) -> None:
        broker, group = self._broker, self._broker.group(self._group_name or "")
        for topic in self._topics:
            broker.ensure_topic(topic)
        broker.expire_members(group)
        if self._member_id not in group.members:
            group.members[self._member_id] = Member(self._member_id, self._client, self._topics, 0)
            broker.notify()
        group.members[self._member_id].last_seen = time.monotonic()
        lost = [tp for tp in self._positions if group.owners.get(tp) != self._member_id]
        if lost:
            self._drop(lost)
            await self._listener.on_lost(lost)
        members = {m.member_id: m.topics for m in group.members.values()}
        sizes = {t: len(broker.topics[t]) for m in members.values() for t in m}
        desired = desired_assignment(members, sizes)[self._member_id]
        revoked = [tp for tp in self._positions if tp not in desired]
        if revoked:
            await self._listener.on_revoked(revoked)
            self._release(revoked)
        self._seek_committed(group.committed)
        claimed = [tp for tp in desired if tp not in self._positions and tp not in group.owners]
        for tp in claimed:
            group.owners[tp] = self._member_id
            self._positions[tp] = self._initial_position(tp, group.committed)
            self._seek_marks[tp] = group.committed.get(tp, -1)
        if claimed:
            await self._listener.on_assigned(claimed)

    def _initial_position(self, tp: TopicPartition, committed: dict[TopicPartition, int]) -> int:
        if tp not in committed:
            # Pin "latest" at claim time, so a crash before the first commit skips nothing.
            committed[tp] = self._broker.end_offset(tp) if self._start is Start.LATEST else 0
        return committed[tp]

    def _seek_committed(self, committed: Mapping[TopicPartition, int]) -> None:
        """Follow offsets overwritten by ``set_offsets`` (not our own commits)."""
        for tp, mark in self._seek_marks.items():
            value = committed.get(tp, -1)
            if value != mark:
                self._seek_marks[tp] = value
                if value >= 0 and tp in self._positions:
                    self._positions[tp] = value

    def _drop(self, partitions: Sequence[TopicPartition]) -> None:
        for tp in partitions:
            self._positions.pop(tp, None)
            self._seek_marks.pop(tp, None)

    def _release(self, partitions: Sequence[TopicPartition]) -> None:
        group = self._broker.group(self._group_name or "")
        for tp in partitions:
            if group.owners.get(tp) == self._member_id:
                del group.owners[tp]
        self._drop(partitions)
        self._broker.notify()

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Record committed offsets; fenced for partitions this member does not own."""
        if self._group_name is None:
            return
        group = self._broker.group(self._group_name)
        foreign = [tp for tp in offsets if group.owners.get(tp) != self._member_id]
        if foreign:
            raise FencedError(f"member {self._member_id} does not own {sorted(foreign)}")
        group.committed.update(offsets)
        self._seek_marks.update(offsets)

    async def close(self) -> None:
        """Revoke everything (so the runtime commits), then leave the group."""
        if self._closed:
            return
        if self._group_name is not None:
            owned = list(self._positions)
            if owned:
                await self._listener.on_revoked(owned)
            self._release(owned)
            self._broker.group(self._group_name).members.pop(self._member_id, None)
            self._broker.notify()
        self._closed = True
        self._broker.forget(self._wake)
        self._wake.set()

    def abandon(self) -> None:
        """Stop without revoking or leaving, as a crashed process would (for tests)."""
        self._closed = True
        self._broker.forget(self._wake)
        self._wake.set()
