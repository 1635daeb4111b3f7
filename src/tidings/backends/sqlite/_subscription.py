"""Subscriptions over the SQLite log: the shared fetch loop and the group-less reader.

A fetch runs rebalance work first (group members, see ``_member.py``), then reads
up to ``max_records`` records of the owned partitions in one reader-thread job, and
otherwise waits for a wake-up: an append by this transport, or a commit by another
process noticed by the watcher.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from ..._records import Record, Start, TopicPartition
from ...ports import RebalanceListener, Subscription
from ._reads import Want, first_at, partition_offsets, read_range, read_range_within

if TYPE_CHECKING:
    import sqlite3

    from ._transport import SqliteTransport

__all__ = ["FetchingSubscription", "GrouplessSubscription", "read_chunks", "wait_for_event"]


async def wait_for_event(event: asyncio.Event, timeout: float) -> None:
    """Wait until ``event`` is set or ``timeout`` passed (cheaper than ``wait_for``)."""
    if event.is_set():
        return
    handle = asyncio.get_running_loop().call_later(timeout, event.set)
    try:
        await event.wait()
    finally:
        handle.cancel()


class FetchingSubscription(Subscription):
    """Reads owned partitions from their positions; subclasses decide what is owned."""

    def __init__(
        self,
        transport: SqliteTransport,
        topics: Sequence[str],
        listener: RebalanceListener,
        start: Start,
    ) -> None:
        self._transport = transport
        self._topics = tuple(dict.fromkeys(topics))
        self._listener = listener
        self._start = start
        self._positions: dict[TopicPartition, int] = {}
        self._pids: dict[TopicPartition, int] = {}
        self._wake = asyncio.Event()
        self._closed = False
        self._turn = 0
        transport.listen(self._wake)

    def assignment(self) -> frozenset[TopicPartition]:
        """The partitions this subscription reads now."""
        return frozenset(self._positions)

    async def fetch(self, max_records: int, timeout: float,
                    max_bytes: int | None = None) -> list[Record]:
        """Up to ``max_records`` records (values of at most ``max_bytes`` in all, or
        one record), waiting up to ``timeout`` seconds for some.

        Not safe to call from two tasks at once (like a Kafka consumer's poll).
        """
        deadline = time.monotonic() + timeout
        while not self._closed:
            self._wake.clear()
            await self._prepare()
            records = await self._read(max(max_records, 1), max_bytes)
            if records:
                return records
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            if not self._wake.is_set():
                await wait_for_event(self._wake, remaining)
        return []

    async def _prepare(self) -> None:
        """Work to do before reading (joining, rebalancing)."""

    async def _read(self, max_records: int, max_bytes: int | None = None) -> list[Record]:
        wants = self._wants()
        if not wants:
            return []
        chunks = await self._transport.reader.call(
            lambda conn: read_chunks(conn, wants, max_records, max_bytes)
        )
        return self._accept(wants, chunks)

    def _wants(self) -> list[Want]:
        # Start at a different partition each time, so one busy partition starves none.
        items = [(tp, self._pids[tp], offset) for tp, offset in self._positions.items()]
        if len(items) > 1:
            self._turn = (self._turn + 1) % len(items)
            items = items[self._turn :] + items[: self._turn]
        return items

    def _accept(self, wants: Sequence[Want], chunks: Sequence[list[Record]]) -> list[Record]:
        """Keep records of partitions still read from the same position, and advance."""
        records: list[Record] = []
        positions = self._positions
        for (tp, _, offset), chunk in zip(wants, chunks, strict=False):
            if chunk and positions.get(tp) == offset:
                positions[tp] = chunk[-1].offset + 1
                records += chunk
        if records:
            self._transport.last_activity = time.monotonic()
        return records

    def _forget_wake(self) -> None:
        self._closed = True
        self._wake.set()
        self._transport.unlisten(self._wake)
        self._transport.forget(self)


def read_chunks(
    conn: sqlite3.Connection, wants: Sequence[Want], max_records: int,
    max_bytes: int | None = None,
) -> list[list[Record]]:
    """Per wanted partition (in order), its next records, ``max_records`` in all, and
    values of at most ``max_bytes`` in all (but at least one record)."""
    chunks: list[list[Record]] = []
    room, budget = max_records, max_bytes
    for tp, pid, offset in wants:
        if room <= 0 or (budget is not None and budget <= 0 and room < max_records):
            break
        if budget is None:
            chunk = read_range(conn, tp, pid, offset, room)
        else:
            chunk, used = read_range_within(conn, tp, pid, offset, room, budget,
                                            room == max_records)
            budget -= used
        room -= len(chunk)
        chunks.append(chunk)
    return chunks


class GrouplessSubscription(FetchingSubscription):
    """Reads every partition of its topics, from the beginning or from the time it was
    created (``Start.LATEST``); it has no group and commits nothing."""

    def __init__(
        self,
        transport: SqliteTransport,
        topics: Sequence[str],
        listener: RebalanceListener,
        start: Start,
    ) -> None:
        super().__init__(transport, topics, listener, start)
        self._since = time.time()
        self._ready = False

    async def _prepare(self) -> None:
        if self._ready:
            return
        await self._transport.ensure_topics(self._topics)
        since, latest = self._since, self._start is Start.LATEST
        self._positions, self._pids = await self._transport.reader.call(
            lambda conn: _initial_positions(conn, self._topics, since if latest else None)
        )
        self._ready = True

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Nothing to commit without a group."""

    async def close(self) -> None:
        """Stop reading. Idempotent."""
        self._forget_wake()

    def abandon(self) -> None:
        """Stop at once (what a crash looks like); same as ``close`` without a group."""
        self._forget_wake()


def _initial_positions(
    conn: sqlite3.Connection, topics: Sequence[str], since: float | None
) -> tuple[dict[TopicPartition, int], dict[TopicPartition, int]]:
    """Start offsets: each partition's first record, or its first at or after ``since``."""
    positions: dict[TopicPartition, int] = {}
    pids: dict[TopicPartition, int] = {}
    for topic in topics:
        for partition, (pid, first, end) in enumerate(partition_offsets(conn, topic)):
            tp = TopicPartition(topic, partition)
            pids[tp] = pid
            positions[tp] = first if since is None else first_at(conn, pid, first, end, since)
    return positions, pids
