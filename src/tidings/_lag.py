"""Consumer lag and health: what an operator asks of a running service.

Lag is, per group and partition, the end offset minus the committed offset (what the
group has not finished yet). A group that has handled everything commits up to the end
within its commit interval, also while idle, so an idle group's lag is 0. Lag is never
clamped: a group whose offsets were reset past the end shows a negative lag.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from ._records import TopicPartition
from .ports import Transport

__all__ = ["Health", "PartitionLag", "group_lag"]


@dataclass(frozen=True, slots=True)
class PartitionLag:
    """One partition of one group: ``end`` minus ``committed`` is its ``lag``.
    ``committed`` is None when the group never committed there (lag counts from the
    partition's first offset)."""

    group: str
    topic: str
    partition: int
    end: int
    committed: int | None
    lag: int


async def group_lag(transport: Transport,
                    groups: Collection[str] | None = None) -> list[PartitionLag]:
    """Lag per partition of every group (or of ``groups``) that has committed offsets
    or members, sorted by group, topic and partition: every partition of each topic the
    group reads, those it never committed counted from their first offset."""
    # Asked together: on a broker that finds ends and members by waiting for quiet
    # (amqp://), each question costs a wait of its own.
    topics, groups_found = await asyncio.gather(transport.describe_topics(),
                                                transport.describe_groups())
    ends = {TopicPartition(t.name, p): o for t in topics for p, o in t.end_offsets.items()}
    starts = {TopicPartition(t.name, p): o for t in topics for p, o in t.start_offsets.items()}
    counts = {t.name: t.partitions for t in topics}
    out: list[PartitionLag] = []
    for info in groups_found:
        if groups is not None and info.name not in groups:
            continue
        read = {tp.topic for tp in info.committed} | \
            {tp.topic for m in info.members for tp in m.assignment}
        partitions = {TopicPartition(topic, p) for topic in read
                      for p in range(counts.get(topic, 0))} | set(info.committed)
        for tp in partitions:
            end = ends.get(tp, 0)
            committed = info.committed.get(tp)
            base = committed if committed is not None else starts.get(tp, 0)
            out.append(PartitionLag(info.name, tp.topic, tp.partition, end, committed,
                                    end - base))
    out.sort(key=lambda p: (p.group, p.topic, p.partition))
    return out


@dataclass(frozen=True, slots=True)
class Health:
    """What :meth:`App.health` found: ``ready`` when every check passed, else
    ``reasons`` says which failed."""

    ready: bool
    running: bool
    connected: bool
    subscribers: int
    subscribers_running: int
    lag: int | None = None
    reasons: tuple[str, ...] = field(default=())

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready view (for a readiness endpoint)."""
        return {"ready": self.ready, "running": self.running, "connected": self.connected,
                "subscribers": self.subscribers,
                "subscribers_running": self.subscribers_running,
                "lag": self.lag, "reasons": list(self.reasons)}
