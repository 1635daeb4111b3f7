"""Read-only views of the bus for the CLI: topics and groups with lag."""

from __future__ import annotations

from typing import Any

from .._lag import group_lag
from .._records import TopicInfo
from ..ports import Transport

__all__ = ["group_rows", "topic_rows"]


def topic_rows(topics: list[TopicInfo]) -> tuple[list[dict[str, Any]], list[list[Any]]]:
    """JSON objects and table rows describing topics."""
    data, rows = [], []
    for t in topics:
        start, end = sum(t.start_offsets.values()), sum(t.end_offsets.values())
        data.append({"topic": t.name, "partitions": t.partitions,
                     "start_offsets": dict(t.start_offsets), "end_offsets": dict(t.end_offsets),
                     "messages": end - start})
        ends = ",".join(str(t.end_offsets.get(p, 0)) for p in range(t.partitions))
        rows.append([t.name, t.partitions, end - start, ends])
    return data, rows


async def group_rows(transport: Transport) -> tuple[list[dict[str, Any]], list[list[Any]]]:
    """JSON objects and table rows describing groups: members, assignment and lag (the
    same figures as ``App.lag()``: end minus committed offset, never clamped)."""
    lags: dict[str, dict[str, int]] = {}
    for p in await group_lag(transport):
        per_topic = lags.setdefault(p.group, {})
        per_topic[p.topic] = per_topic.get(p.topic, 0) + p.lag
    data, rows = [], []
    for g in await transport.describe_groups():
        lag = lags.get(g.name, {})
        data.append({
            "group": g.name,
            "members": [{"member": m.member_id, "client": m.client,
                         "assignment": [f"{tp.topic}[{tp.partition}]" for tp in m.assignment]}
                        for m in g.members],
            "committed": {f"{tp.topic}[{tp.partition}]": o for tp, o in g.committed.items()},
            "lag": lag,
        })
        for topic in sorted({tp.topic for tp in g.committed} |
                            {tp.topic for m in g.members for tp in m.assignment}):
            owners = [
                _owned(m.member_id, [tp.partition for tp in m.assignment if tp.topic == topic])
                for m in g.members
            ]
            shown = " ".join(o for o in owners if o) or None
            rows.append([g.name, topic, len(g.members), shown, lag.get(topic)])
    return data, rows


def _owned(member: str, partitions: list[int]) -> str:
    return f"{member}:{','.join(map(str, partitions))}" if partitions else ""
