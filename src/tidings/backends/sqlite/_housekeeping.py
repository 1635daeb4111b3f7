"""Background work of a transport: delivering due delayed records and retention.

Delayed records wait in ``scheduled``. Every running transport arms a timer for the
earliest due time it knows of (its own appends, a check at start, every second, and
shortly after another process committed); when it fires, the writer moves due rows
into the log with INSERT and DELETE in one transaction, so with several processes each
record is delivered exactly once. Retention runs at start and every 30 s, deleting in
chunks of 1000 records per transaction so appends are never held up for long.
Dead-letter topics have their own retention (``_dlq_retention``): their pending entries
stay until resolved, or until ``dlq_retention_hours``, with a warning.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sqlite3
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from ._dlq_retention import DLQ_SUFFIX, dlq_partitions, trim_dead_letters
from ._schema import OFFSET_BITS

if TYPE_CHECKING:
    from ._transport import SqliteTransport

__all__ = ["Housekeeper", "retention_candidates", "trim_partition"]

log = logging.getLogger("tidings.sqlite")

_MOVE_LIMIT = 1000
_TRIM_CHUNK = 1000
_SIZE = "length(value) + coalesce(length(key), 0) + coalesce(length(headers), 0)"


class Housekeeper:
    """Moves due delayed records into the log and applies retention, for one transport."""

    def __init__(self, transport: SqliteTransport) -> None:
        self._transport = transport
        self._timer: asyncio.TimerHandle | None = None
        self._timer_due: float | None = None
        self._last_check = 0.0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopped = False

    def start(self) -> None:
        """Start the periodic loop (schedule check every second, retention every 30 s)."""
        self._spawn(self._run)

    async def stop(self) -> None:
        """Cancel timers and background tasks."""
        self._stopped = True
        if self._timer is not None:
            self._timer.cancel()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(self) -> None:
        options = self._transport.options
        next_retention = 0.0
        while True:
            await self._guard(self.check_scheduled, "checking delayed records")
            if time.monotonic() >= next_retention:
                await self._guard(self.apply_retention, "applying retention")
                next_retention = time.monotonic() + options.retention_interval
            await asyncio.sleep(1.0)

    def on_change(self) -> None:
        """Another connection committed: it may have scheduled records (rate-limited)."""
        if time.monotonic() - self._last_check >= 0.1:
            self._last_check = time.monotonic()
            self._spawn(lambda: self._guard(self.check_scheduled, "checking delayed records"))

    async def check_scheduled(self) -> None:
        """Arm the timer for the earliest scheduled record, if any."""
        self._last_check = time.monotonic()
        due = await self._transport.reader.call(_min_due)
        if due is not None:
            self.arm(due)

    def arm(self, due: float) -> None:
        """Make sure the timer fires no later than ``due`` (epoch seconds)."""
        if self._stopped or (self._timer_due is not None and self._timer_due <= due):
            return
        if self._timer is not None:
            self._timer.cancel()
        delay = max(due - time.time(), 0.0)
        self._timer = asyncio.get_running_loop().call_later(delay, self._fire)
        self._timer_due = due

    def _fire(self) -> None:
        self._timer = self._timer_due = None
        self._spawn(lambda: self._guard(self.move_due, "delivering delayed records"))

    async def move_due(self) -> int:
        """Move every due record into the log; re-arm for the next one."""
        appender, moved_total = self._transport.writer.appender, 0
        while True:
            moved, next_due = await self._transport.writer.call(
                lambda c: (appender.move_due(c, time.time(), _MOVE_LIMIT), _min_due(c)),
                wakes=True,
            )
            moved_total += moved
            if moved < _MOVE_LIMIT:
                break
        if next_due is not None:
            self.arm(next_due)
        return moved_total

    async def apply_retention(self) -> int:
        """Delete records older than ``retention_hours`` and the oldest records of
        partitions above ``retention_bytes`` (but in dead-letter topics: see
        ``_dlq_retention``); return how many were deleted."""
        options = self._transport.options
        now = time.time()
        cutoff = now - options.retention_hours * 3600 if options.retention_hours else None
        limit = options.retention_bytes
        deleted = await self._retain_dead_letters(
            cutoff, now - options.dlq_retention_hours * 3600
            if options.dlq_retention_hours else None)
        if cutoff is None and not limit:
            return deleted
        pids = await self._transport.reader.call(lambda c: retention_candidates(c, cutoff, limit))
        for pid in pids:
            deleted += await self._trim(pid, cutoff, limit)
        return deleted

    async def _retain_dead_letters(self, cutoff: float | None,
                                   pending_cutoff: float | None) -> int:
        if cutoff is None and pending_cutoff is None:
            return 0
        deleted = 0
        for pid, topic, partition in await self._transport.reader.call(dlq_partitions):
            while True:
                count, pending = await self._transport.writer.call(functools.partial(
                    trim_dead_letters, pid=pid, partition=partition, resolved_cutoff=cutoff,
                    pending_cutoff=pending_cutoff))
                deleted += count
                if pending:
                    self._transport.count_trimmed_dead_letters(topic, pending)
                    log.warning(
                        "tidings sqlite: retention deleted %d pending dead letter(s) of %s[%d], "
                        "older than dlq_retention_hours=%g, never re-driven nor purged",
                        pending, topic, partition, self._transport.options.dlq_retention_hours)
                if count < _TRIM_CHUNK:
                    break
        return deleted

    async def _trim(self, pid: int, cutoff: float | None, limit: int) -> int:
        deleted = 0
        while True:
            count = await self._transport.writer.call(
                lambda c: trim_partition(c, pid, cutoff, limit)
            )
            deleted += count
            if count < _TRIM_CHUNK:
                return deleted

    def _spawn(self, work: Callable[[], Coroutine[Any, Any, Any]]) -> None:
        if self._stopped:
            return
        task = asyncio.get_running_loop().create_task(work())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _guard(self, work: Callable[[], Coroutine[Any, Any, Any]], what: str) -> None:
        try:
            await work()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("tidings sqlite: %s failed: %s", what, exc)


def _min_due(conn: sqlite3.Connection) -> float | None:
    row = conn.execute("SELECT min(due) FROM scheduled").fetchone()
    return None if row[0] is None else float(row[0])


def retention_candidates(conn: sqlite3.Connection, cutoff: float | None, limit: int) -> list[int]:
    """Partitions whose oldest record is older than ``cutoff`` or that hold more than
    ``limit`` bytes (the two checks are skipped when None or 0)."""
    return [
        int(row[0])
        for row in conn.execute(
            "SELECT pid FROM partitions AS p WHERE start_offset < next_offset"
            " AND topic NOT LIKE ? AND ("
            " (? > 0 AND bytes > ?) OR (? IS NOT NULL AND"
            "  (SELECT ts FROM log WHERE id = (p.pid << ?) + p.start_offset) < ?))",
            (f"%{DLQ_SUFFIX}", limit, limit, cutoff, OFFSET_BITS, cutoff),
        )
    ]


def trim_partition(conn: sqlite3.Connection, pid: int, cutoff: float | None, limit: int) -> int:
    """Delete up to one chunk of the oldest records of a partition that retention no
    longer keeps; move its start offset past them. Returns how many were deleted."""
    start, end, size = conn.execute(
        "SELECT start_offset, next_offset, bytes FROM partitions WHERE pid = ?", (pid,)
    ).fetchone()
    base, stop = pid << OFFSET_BITS, min(end, start + _TRIM_CHUNK)
    upto = start
    if cutoff is not None:
        first_kept = conn.execute(
            "SELECT min(id) FROM log WHERE id >= ? AND id < ? AND ts >= ?",
            (base + start, base + stop, cutoff),
        ).fetchone()[0]
        upto = stop if first_kept is None else first_kept - base
    if limit and size > limit:
        upto = max(upto, _past_excess(conn, base, start, stop, size - limit))
    if upto <= start:
        return 0
    freed = conn.execute(
        f"SELECT coalesce(sum({_SIZE}), 0) FROM log WHERE id >= ? AND id < ?",
        (base + start, base + upto),
    ).fetchone()[0]
    conn.execute("DELETE FROM log WHERE id >= ? AND id < ?", (base + start, base + upto))
    conn.execute(
        "UPDATE partitions SET start_offset = ?, bytes = max(bytes - ?, 0) WHERE pid = ?",
        (upto, freed, pid),
    )
    return int(upto - start)


def _past_excess(conn: sqlite3.Connection, base: int, start: int, stop: int, excess: int) -> int:
    """The offset after the oldest records (within one chunk) that add up to ``excess``."""
    for rid, size in conn.execute(
        f"SELECT id, {_SIZE} FROM log WHERE id >= ? AND id < ? ORDER BY id",
        (base + start, base + stop),
    ):
        excess -= size
        if excess <= 0:
            return int(rid - base + 1)
    return stop
