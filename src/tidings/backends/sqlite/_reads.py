"""Queries run on the reader thread: fetching records and describing topics."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping, Sequence
from types import MappingProxyType

from ..._errors import UnknownTopicError
from ..._records import Record, TopicInfo, TopicPartition
from ._schema import OFFSET_BITS

__all__ = [
    "Want",
    "decode_headers",
    "describe_topics",
    "offsets_for_time",
    "partition_offsets",
    "read_many",
    "read_range",
    "read_range_within",
]

_EMPTY: Mapping[str, str] = MappingProxyType({})
# Headers were written by encode_headers: raw_decode skips loads' checks (2x faster).
_decode = json.JSONDecoder().raw_decode
_LAST_OFFSET = (1 << OFFSET_BITS) - 1
#: (partition, its pid, the next offset to read)
Want = tuple[TopicPartition, int, int]

_RANGE = "SELECT id, key, value, headers, ts FROM log WHERE id >= ? AND id <= ? ORDER BY id LIMIT ?"


def read_range(
    conn: sqlite3.Connection, tp: TopicPartition, pid: int, offset: int, limit: int
) -> list[Record]:
    """Up to ``limit`` records of one partition from ``offset`` on (or from its first
    kept record, when retention deleted ``offset``)."""
    base = pid << OFFSET_BITS
    topic, partition = tp
    rows = conn.execute(_RANGE, (base + max(offset, 0), base + _LAST_OFFSET, max(limit, 0)))
    empty, decode = _EMPTY, _decode
    return [
        Record(topic, partition, rid - base, key, value,
               empty if headers is None else decode(headers)[0], ts)
        for rid, key, value, headers, ts in rows
    ]


def read_range_within(
    conn: sqlite3.Connection, tp: TopicPartition, pid: int, offset: int, limit: int,
    budget: int, first: bool,
) -> tuple[list[Record], int]:
    """``read_range`` of the leading records whose values fit in ``budget`` bytes (the
    first one whatever its size when ``first``), and their bytes. One pass: the row
    that does not fit is read and dropped (a moment's peak of one record, within the
    bound of budget plus one record), which costs less than reading sizes first."""
    base = pid << OFFSET_BITS
    topic, partition = tp
    rows = conn.execute(_RANGE, (base + max(offset, 0), base + _LAST_OFFSET, max(limit, 0)))
    records: list[Record] = []
    used = 0
    for rid, key, value, headers, ts in rows:
        size = len(value)
        if used + size > budget and (records or not first):
            break
        used += size
        records.append(Record(topic, partition, rid - base, key, value,
                              _EMPTY if headers is None else _decode(headers)[0], ts))
    return records, used


def decode_headers(headers: str | None) -> Mapping[str, str]:
    """The headers of a row as written by ``encode_headers``."""
    return _EMPTY if headers is None else _decode(headers)[0]


def read_many(conn: sqlite3.Connection, wants: Sequence[Want], max_records: int) -> list[Record]:
    """Up to ``max_records`` records over several partitions, in the order given."""
    records: list[Record] = []
    for tp, pid, offset in wants:
        room = max_records - len(records)
        if room <= 0:
            break
        records += read_range(conn, tp, pid, offset, room)
    return records


def partition_offsets(conn: sqlite3.Connection, topic: str) -> list[tuple[int, int, int]]:
    """(pid, start offset, next offset) of each partition of ``topic``, by partition."""
    rows = conn.execute(
        "SELECT pid, start_offset, next_offset FROM partitions WHERE topic = ? "
        "ORDER BY partition",
        (topic,),
    ).fetchall()
    if not rows:
        raise UnknownTopicError(f"unknown topic {topic!r}")
    return [(int(pid), int(start), int(end)) for pid, start, end in rows]


def describe_topics(conn: sqlite3.Connection) -> list[TopicInfo]:
    """Every topic, with first kept and next offsets per partition."""
    infos: dict[str, tuple[dict[int, int], dict[int, int]]] = {}
    for topic, partition, start, end in conn.execute(
        "SELECT topic, partition, start_offset, next_offset FROM partitions "
        "ORDER BY topic, partition"
    ):
        starts, ends = infos.setdefault(topic, ({}, {}))
        starts[partition] = start
        ends[partition] = end
    return [
        TopicInfo(name, len(starts), starts, ends) for name, (starts, ends) in infos.items()
    ]


def offsets_for_time(conn: sqlite3.Connection, topic: str, timestamp: float) -> dict[int, int]:
    """Per partition, the first offset whose record is at or after ``timestamp`` (the
    next offset when there is none). Binary search: timestamps are taken under the
    write lock, so they do not decrease along a partition unless the clock steps back."""
    return {
        partition: first_at(conn, pid, start, end, timestamp)
        for partition, (pid, start, end) in enumerate(partition_offsets(conn, topic))
    }


def first_at(conn: sqlite3.Connection, pid: int, low: int, high: int, timestamp: float) -> int:
    """The first offset in ``[low, high)`` of partition ``pid`` at or after ``timestamp``."""
    base = pid << OFFSET_BITS
    while low < high:
        middle = (low + high) // 2
        row = conn.execute("SELECT ts FROM log WHERE id = ?", (base + middle,)).fetchone()
        if row is None or row[0] < timestamp:  # a missing row was just deleted: older
            low = middle + 1
        else:
            high = middle
    return low
