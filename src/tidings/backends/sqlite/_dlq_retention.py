"""Retention of dead-letter topics (``*.dlq``) on the embedded bus.

The normal retention (``retention_hours``, ``retention_bytes``) does not apply to them:
a dead letter waits for someone to re-drive or purge it, however old it is. What goes:
the oldest records of a partition, up to the first *pending* (unresolved) entry, once
older than ``retention_hours`` (resolved entries and the resolution records, which only
ever name entries before them in their partition). With ``dlq_retention_hours`` > 0,
entries older than that go even when pending: each is counted, and logged as a
warning, by the caller, never dropped silently.
"""

from __future__ import annotations

import sqlite3

from ..._dlq import parse_marks
from ..._message import Headers
from ._schema import OFFSET_BITS

__all__ = ["DLQ_SUFFIX", "dlq_partitions", "trim_dead_letters"]

DLQ_SUFFIX = ".dlq"
_CHUNK = 1000
_RESOLVES = f"""json_extract(headers, '$."{Headers.DLQ_RESOLVES}"')"""
_SIZE = "length(value) + coalesce(length(key), 0) + coalesce(length(headers), 0)"


def dlq_partitions(conn: sqlite3.Connection) -> list[tuple[int, str, int]]:
    """(pid, topic, partition) of every non-empty dead-letter partition."""
    return [(int(pid), topic, int(partition)) for pid, topic, partition in conn.execute(
        "SELECT pid, topic, partition FROM partitions "
        "WHERE start_offset < next_offset AND topic LIKE ?", (f"%{DLQ_SUFFIX}",))]


def trim_dead_letters(conn: sqlite3.Connection, pid: int, partition: int,
                      resolved_cutoff: float | None, pending_cutoff: float | None,
                      ) -> tuple[int, int]:
    """Delete up to one chunk of the oldest records of dead-letter partition ``pid`` that
    retention no longer keeps: before ``resolved_cutoff``, markers and resolved entries;
    before ``pending_cutoff``, pending entries too. Returns (deleted, pending deleted)."""
    start, end = conn.execute(
        "SELECT start_offset, next_offset FROM partitions WHERE pid = ?", (pid,)).fetchone()
    base = pid << OFFSET_BITS
    resolved = _resolved(conn, base, start, end, partition)
    upto, pending = start, 0
    for rid, ts, marks in conn.execute(
            f"SELECT id, ts, {_RESOLVES} FROM log WHERE id >= ? AND id < ? ORDER BY id",
            (base + start, base + min(end, start + _CHUNK))):
        if pending_cutoff is not None and ts < pending_cutoff:
            pending += marks is None and (rid - base) not in resolved
        elif resolved_cutoff is None or ts >= resolved_cutoff or (
                marks is None and (rid - base) not in resolved):
            break  # too recent, or a pending entry: it and what follows stay
        upto = rid - base + 1
    if upto <= start:
        return 0, 0
    freed = conn.execute(f"SELECT coalesce(sum({_SIZE}), 0) FROM log WHERE id >= ? AND id < ?",
                         (base + start, base + upto)).fetchone()[0]
    conn.execute("DELETE FROM log WHERE id >= ? AND id < ?", (base + start, base + upto))
    conn.execute("UPDATE partitions SET start_offset = ?, bytes = max(bytes - ?, 0) "
                 "WHERE pid = ?", (upto, freed, pid))
    return int(upto - start), pending


def _resolved(conn: sqlite3.Connection, base: int, start: int, end: int,
              partition: int) -> set[int]:
    """The offsets of ``partition``'s entries that a resolution record names."""
    offsets: set[int] = set()
    for (marks,) in conn.execute(
            f"SELECT {_RESOLVES} FROM log WHERE id >= ? AND id < ? AND {_RESOLVES} IS NOT NULL",
            (base + start, base + end)):
        try:
            offsets.update(o for p, o in parse_marks(str(marks)) if p == partition)
        except ValueError:  # a malformed marker resolves nothing
            continue
    return offsets
