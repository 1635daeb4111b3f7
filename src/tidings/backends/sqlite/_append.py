"""Placing records in partitions and writing them, inside the writer's transaction.

Offsets are read from ``partitions.next_offset`` and assigned while the writer holds
SQLite's write lock (``BEGIN IMMEDIATE``), so they are dense per partition even with
many writing processes. Only the writer thread uses an :class:`Appender`.
"""

from __future__ import annotations

import itertools
import json
import sqlite3
import time
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from ..._errors import ConfigurationError, MessageTooLargeError, TidingsError, TransportError
from ..._records import OutRecord, Position
from ._schema import MAX_PIDS, OFFSET_BITS

__all__ = ["Appender", "TopicMeta", "encode_headers"]

# (pid, partition, topic, key, value, headers JSON, size) of a record bound for the log
_Placed = tuple[int, int, str, str | None, bytes, str | None, int]
# (due, topic, partition, key, value, headers JSON) of a delayed record
_Delayed = tuple[float, str, int | None, str | None, bytes, str | None]


@dataclass(frozen=True, slots=True)
class TopicMeta:
    """A topic's partition ids, indexed by partition number."""

    name: str
    pids: tuple[int, ...]


_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def encode_headers(headers: Mapping[str, str]) -> str | None:
    """Headers as compact JSON text, or None when there are none."""
    if not headers:
        return None
    return _encode(headers if isinstance(headers, dict) else dict(headers))


class Appender:
    """Assigns partitions and offsets and writes records; lives on the writer thread."""

    def __init__(self, default_partitions: int, max_length: int) -> None:
        self.default_partitions = default_partitions
        #: The largest record accepted (value, key and headers), in bytes: the bus's
        #: max_record_bytes, within the connection's length limit.
        self.max_length = max_length
        self._topics: dict[str, TopicMeta] = {}
        self._round_robin = itertools.count()
        #: Bytes of records written so far (read by the checkpointer thread).
        self.written = 0

    def forget(self) -> None:
        """Drop cached topics (after a rollback, a cached new topic may not exist)."""
        self._topics.clear()

    def topic(
        self, conn: sqlite3.Connection, name: str, partitions: int | None = None
    ) -> TopicMeta:
        """The topic's metadata, creating the topic when missing."""
        meta = self._topics.get(name)
        if meta is None:
            meta = load_topic(conn, name) or self._create(conn, name, partitions)
            self._topics[name] = meta
        return meta

    def _create(self, conn: sqlite3.Connection, name: str, partitions: int | None) -> TopicMeta:
        count = self.default_partitions if partitions is None else partitions
        if not isinstance(name, str) or not name:
            raise ConfigurationError(f"invalid topic name {name!r}")
        if count < 1:
            raise ConfigurationError(f"topic {name!r} needs at least one partition, not {count}")
        conn.execute(
            "INSERT INTO topics (name, partitions, created_at) VALUES (?, ?, ?)",
            (name, count, time.time()),
        )
        conn.executemany(
            "INSERT INTO partitions (topic, partition) VALUES (?, ?)",
            [(name, p) for p in range(count)],
        )
        meta = load_topic(conn, name)
        assert meta is not None
        if meta.pids[-1] >= MAX_PIDS:
            raise TransportError(f"the bus database holds too many partitions ({MAX_PIDS})")
        return meta

    def append(
        self, conn: sqlite3.Connection, batches: Sequence[Sequence[OutRecord]], now: float
    ) -> list[list[Position] | TidingsError]:
        """Write several callers' records in the current transaction; a caller whose
        records are invalid gets its error and writes nothing."""
        plans: list[tuple[list[_Placed], list[_Delayed]] | TidingsError] = []
        for records in batches:
            try:
                plans.append(self._plan(conn, records, now))
            except TidingsError as exc:
                plans.append(exc)
        valid = [plan for plan in plans if not isinstance(plan, TidingsError)]
        written = iter(self.write(conn, [p[0] for p in valid], now))
        self.schedule(conn, itertools.chain.from_iterable(p[1] for p in valid))
        results: list[list[Position] | TidingsError] = []
        for records, plan in zip(batches, plans, strict=True):
            if isinstance(plan, TidingsError):
                results.append(plan)
            elif plan[1]:  # some are delayed: their positions have no offset yet
                placed = iter(next(written))
                results.append([
                    Position(out.topic, None, None)
                    if out.deliver_at is not None and out.deliver_at > now else next(placed)
                    for out in records
                ])
            else:
                results.append(next(written))
        return results

    def _plan(
        self, conn: sqlite3.Connection, records: Sequence[OutRecord], now: float
    ) -> tuple[list[_Placed], list[_Delayed]]:
        placed: list[_Placed] = []
        delayed: list[_Delayed] = []
        meta = TopicMeta("", ())
        for out in records:
            topic, key, value = out.topic, out.key, out.value
            headers = encode_headers(out.headers)
            size = record_size(key, value, headers)
            if size > self.max_length:
                raise MessageTooLargeError(
                    f"record of {size} bytes for {topic!r} exceeds the bus's "
                    f"max_record_bytes={self.max_length}"
                )
            if topic != meta.name:
                meta = self.topic(conn, topic)
            if out.deliver_at is not None and out.deliver_at > now:
                self._partition(meta, out.partition, None)  # validate it now
                delayed.append((out.deliver_at, topic, out.partition, key, value, headers))
                continue
            partition = self._partition(meta, out.partition, key)
            placed.append((meta.pids[partition], partition, topic, key, value, headers, size))
        return placed, delayed

    def _partition(self, meta: TopicMeta, partition: int | None, key: str | None) -> int:
        count = len(meta.pids)
        if partition is not None:
            if not 0 <= partition < count:
                raise ConfigurationError(f"topic {meta.name!r} has no partition {partition}")
            return partition
        if key is None:
            return next(self._round_robin) % count
        return zlib.crc32(key.encode()) % count

    def write(
        self, conn: sqlite3.Connection, plans: Sequence[Sequence[_Placed]], now: float
    ) -> list[list[Position]]:
        """Assign offsets to placed records, insert them, and advance the partitions."""
        next_offsets: dict[int, int] = {}
        sizes: dict[int, int] = {}
        rows: list[tuple[int, str | None, bytes, str | None, float]] = []
        results: list[list[Position]] = []
        for plan in plans:
            positions = []
            for pid, partition, topic, key, value, headers, size in plan:
                offset = next_offsets.get(pid)
                if offset is None:
                    offset = _next_offset(conn, pid)
                next_offsets[pid] = offset + 1
                sizes[pid] = sizes.get(pid, 0) + size
                rows.append(((pid << OFFSET_BITS) | offset, key, value, headers, now))
                positions.append(Position(topic, partition, offset))
            results.append(positions)
        conn.executemany(
            "INSERT INTO log (id, key, value, headers, ts) VALUES (?, ?, ?, ?, ?)", rows
        )
        conn.executemany(
            "UPDATE partitions SET next_offset = ?, bytes = bytes + ? WHERE pid = ?",
            [(offset, sizes[pid], pid) for pid, offset in next_offsets.items()],
        )
        self.written += sum(sizes.values())
        return results

    def schedule(self, conn: sqlite3.Connection, delayed: Iterable[_Delayed]) -> None:
        """Store delayed records until they are due."""
        conn.executemany(
            "INSERT INTO scheduled (due, topic, partition, key, value, headers) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            delayed,
        )

    def move_due(self, conn: sqlite3.Connection, now: float, limit: int) -> int:
        """Move up to ``limit`` due scheduled records into the log; return how many."""
        rows = conn.execute(
            "SELECT id, topic, partition, key, value, headers FROM scheduled "
            "WHERE due <= ? ORDER BY due, id LIMIT ?",
            (now, limit),
        ).fetchall()
        placed: list[_Placed] = []
        for _, topic, partition, key, value, headers in rows:
            meta = self.topic(conn, topic)
            chosen = self._partition(meta, partition, key)
            placed.append((meta.pids[chosen], chosen, topic, key, value, headers,
                           record_size(key, value, headers)))
        self.write(conn, [placed], now)
        conn.executemany("DELETE FROM scheduled WHERE id = ?", [(row[0],) for row in rows])
        return len(rows)


def record_size(key: str | None, value: bytes, headers: str | None) -> int:
    """A record's size for ``retention_bytes``: value bytes plus key and header characters
    (the same measure as SQL ``length()``, so retention can subtract what it deletes)."""
    return len(value) + (len(key) if key else 0) + (len(headers) if headers else 0)


def load_topic(conn: sqlite3.Connection, name: str) -> TopicMeta | None:
    """The topic's metadata as stored, or None when it does not exist."""
    pids = conn.execute(
        "SELECT pid FROM partitions WHERE topic = ? ORDER BY partition", (name,)
    ).fetchall()
    return TopicMeta(name, tuple(row[0] for row in pids)) if pids else None


def _next_offset(conn: sqlite3.Connection, pid: int) -> int:
    row = conn.execute("SELECT next_offset FROM partitions WHERE pid = ?", (pid,)).fetchone()
    if row is None:
        raise TransportError(f"partition id {pid} vanished from the bus database")
    return int(row[0])
