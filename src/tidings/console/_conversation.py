"""A conversation's timeline, rebuilt from the log's headers and the groups' offsets.

Every message carries its id (``tidings-id``); a message published while a handler runs
also carries the conversation's correlation id and its cause's id. So the messages of
one conversation are those whose correlation id (or, for the first, whose own id) is
the conversation's. What each group did with a message comes from its committed offset
(past the message: handled; not yet: pending) and from the dead-letter topics (a dead
letter of it for that group: dead-lettered; re-driven since: retried); when, from the
messages its handling published (their ``tidings-source`` names the app, and a group is
named after its app unless told otherwise).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any

from .._message import Headers
from .._records import GroupInfo, Record, TopicInfo, TopicPartition
from ..ports import SupportsLookup, Transport

__all__ = ["SCAN_LIMIT", "conversation", "correlation_of", "dlq_topics", "find_records"]

#: Without an index (Kafka, memory), how many of the newest records of each partition
#: a lookup reads: the cost of a lookup is bounded by partitions x this.
SCAN_LIMIT = 20_000
_PAGE = 2000
_CONCURRENT_READS = 32


def correlation_of(record: Record) -> str:
    """The conversation a record belongs to: its correlation id, else its own id."""
    headers = record.headers
    return (headers.get(Headers.CORRELATION_ID) or headers.get(Headers.ID)
            or f"{record.topic}-{record.partition}-{record.offset}")


async def find_records(transport: Transport, wanted: str,
                       topics: Sequence[TopicInfo]) -> list[Record]:
    """Every record of the conversations ``wanted`` names: a correlation id, a message
    id, or a key (an order id), found by the transport's index if it has one, else by
    reading the newest :data:`SCAN_LIMIT` records of every partition."""
    if isinstance(transport, SupportsLookup):
        return await transport.lookup(wanted)
    records = await _scan(transport, topics)
    seeds = {correlation_of(r) for r in records
             if wanted in (r.key, r.headers.get(Headers.ID), r.headers.get(Headers.CORRELATION_ID))}
    return [r for r in records if correlation_of(r) in seeds]


async def _scan(transport: Transport, topics: Sequence[TopicInfo]) -> list[Record]:
    """The newest records of every partition, in topic and partition order. Partitions
    are read concurrently: a read that ends by waiting for a quiet stream (amqp://)
    would otherwise cost that wait once per partition."""
    gate = asyncio.Semaphore(_CONCURRENT_READS)

    async def newest(name: str, partition: int, start: int, end: int) -> list[Record]:
        out: list[Record] = []
        offset = max(start, end - SCAN_LIMIT)
        async with gate:
            while offset < end:
                page = await transport.read(name, partition, offset, _PAGE)
                if not page:
                    break
                out += page
                offset = page[-1].offset + 1
        return out

    pages = await asyncio.gather(*(
        newest(info.name, partition, info.start_offsets.get(partition, 0), end)
        for info in topics for partition, end in info.end_offsets.items()))
    return [record for page in pages for record in page]


def conversation(records: Iterable[Record], groups: Sequence[GroupInfo]) -> list[dict[str, Any]]:
    """The timeline of ``records``, oldest first: dead letters are folded into the
    outcome of the message they came from (for the group that failed it)."""
    messages: list[Record] = []
    dead: dict[tuple[str, int, int], set[str]] = {}
    redriven: set[tuple[str, str]] = set()  # (message id, group) re-driven copies
    for record in records:
        h = record.headers
        if Headers.DLQ_RESOLVES in h:
            continue
        if Headers.DLQ_TOPIC in h:
            where = (h[Headers.DLQ_TOPIC], _int(h.get(Headers.DLQ_PARTITION)),
                     _int(h.get(Headers.DLQ_OFFSET)))
            dead.setdefault(where, set()).add(h.get(Headers.DLQ_GROUP, ""))
            continue
        if Headers.REDRIVE_GROUP in h:
            redriven.add((h.get(Headers.ID, ""), h[Headers.REDRIVE_GROUP]))
        messages.append(record)
    depth = _depths(messages)
    messages.sort(key=lambda r: (r.timestamp, depth[id(r)], r.topic, r.partition, r.offset))
    readers = _readers(groups)
    effects: dict[tuple[str, str], float] = {}  # (cause id, publishing app) -> first time
    for record in messages:
        cause, source = record.headers.get(Headers.CAUSATION_ID), \
            record.headers.get(Headers.SOURCE)
        if cause and source:
            effects.setdefault((cause, source), record.timestamp)
    return [_entry(r, readers, dead, redriven, effects) for r in messages]


def _depths(records: Sequence[Record]) -> dict[int, int]:
    """How many causes precede each record in the conversation (records appended in one
    batch share a timestamp; a message still comes after its cause)."""
    by_id = {r.headers.get(Headers.ID): r for r in records}
    depth: dict[int, int] = {}
    for record in records:
        chain, seen = 0, {id(record)}
        cause = by_id.get(record.headers.get(Headers.CAUSATION_ID))
        while cause is not None and id(cause) not in seen and chain < 1000:
            seen.add(id(cause))
            chain += 1
            cause = by_id.get(cause.headers.get(Headers.CAUSATION_ID))
        depth[id(record)] = chain
    return depth


def _int(text: str | None) -> int:
    try:
        return int(text or "")
    except ValueError:
        return -1


def _readers(groups: Sequence[GroupInfo]) -> dict[str, dict[str, Mapping[TopicPartition, int]]]:
    """topic -> group -> that group's committed offsets (groups reading the topic)."""
    out: dict[str, dict[str, Mapping[TopicPartition, int]]] = {}
    for info in groups:
        topics = {tp.topic for tp in info.committed} | \
            {tp.topic for m in info.members for tp in m.assignment}
        for topic in topics:
            out.setdefault(topic, {})[info.name] = info.committed
    return out


def _entry(record: Record, readers: Mapping[str, Mapping[str, Mapping[TopicPartition, int]]],
           dead: Mapping[tuple[str, int, int], set[str]],
           redriven: Collection[tuple[str, str]],
           effects: Mapping[tuple[str, str], float]) -> dict[str, Any]:
    h = record.headers
    message_id = h.get(Headers.ID) or f"{record.topic}-{record.partition}-{record.offset}"
    failed = dead.get((record.topic, record.partition, record.offset), set())
    only = h.get(Headers.REDRIVE_GROUP)
    handled_by = []
    for group, committed in sorted(readers.get(record.topic, {}).items()):
        if only is not None and group != only:
            continue
        if group in failed:
            outcome = "retried" if (message_id, group) in redriven else "dead-lettered"
        elif committed.get(TopicPartition(record.topic, record.partition), 0) > record.offset:
            outcome = "handled"
        else:
            outcome = "pending"
        entry: dict[str, Any] = {"group": group, "outcome": outcome}
        if outcome == "handled" and (message_id, group) in effects:
            # when its handling published the first message it caused (a group is named
            # after its app unless told otherwise)
            entry["at"] = effects[message_id, group]
        handled_by.append(entry)
    return {
        "topic": record.topic, "partition": record.partition, "offset": record.offset,
        "id": message_id, "correlation_id": h.get(Headers.CORRELATION_ID) or message_id,
        "causation_id": h.get(Headers.CAUSATION_ID), "key": record.key,
        "published_by": h.get(Headers.SOURCE),
        "type": _type_of(record.value), "published_at": record.timestamp,
        "redriven_for": only, "handled_by": handled_by, "payload": _payload(record.value),
    }


def _payload(value: bytes) -> Any:
    try:
        return json.loads(value)
    except ValueError:
        return value.decode("utf-8", "replace")


def _type_of(value: bytes) -> str | None:
    payload = _payload(value)
    if isinstance(payload, dict):
        kind = payload.get("type") or payload.get("event") or payload.get("kind")
        return kind if isinstance(kind, str) else None
    return None


def dlq_topics(topics: Iterable[TopicInfo]) -> list[str]:
    """The dead-letter topics among ``topics``."""
    return [t.name for t in topics if t.name.endswith(".dlq")]

