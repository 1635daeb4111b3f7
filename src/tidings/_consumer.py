"""The consumer runtime: fetch, dispatch in per-key order, retry, commit, rebalance.

One :class:`Consumer` runs one subscriber over any transport. Records of one key (and
partition) are handled one at a time, in offset order; different keys run in parallel
up to ``concurrency``; records without a key carry no order once ``concurrency > 1``.
A failed record waits for its retry off the workers, holding back only its own key.
Offsets are committed up to the first unfinished record of each partition, so nothing
is committed before its handler succeeded, it was dead-lettered, or (non-blocking
retries, ``dead_letter="park-key"``) it was parked durably (see ``_parking``): a parked
key's later records are parked behind it, and the partition goes on (at-least-once).
Fetching stops while ``max_in_flight`` records, or ``max_in_flight_bytes`` of record
values, are fetched and unfinished; a fetch asks the transport for at most the bytes
left, and the transport always returns at least one record, so a record larger than
the room left is still fetched: it waits until nothing else is in flight and runs
alone. What is held is at most the budget plus one record.
An exactly-once (``transactional``) consumer holds what each handler published until
its offset commits, and commits both in one transaction (see ``_transaction``).

How fetched records reach the handler is a :class:`~tidings._dispatch.Dispatch`
strategy (parallel, sequential or batch); this module owns what they share: fetching
with backpressure, partitions and their offsets, commits, retries' timers and
rebalancing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import TypeVar

from ._dispatch import BatchDispatch, Dispatch, ParallelDispatch, SequentialDispatch
from ._errors import ConfigurationError, FencedError, TransportError
from ._offsets import OffsetTracker
from ._parking import Parking
from ._parklog import Parked
from ._records import Record, Start, TopicPartition
from ._transaction import HeldOutputs, records_of
from ._waiting import wait_event
from .ports import Subscription, SupportsTransactions, TransactionalSubscription, Transport

__all__ = ["DEFAULT_MAX_IN_FLIGHT_BYTES", "BatchProcess", "Consumer", "ConsumerSpec",
           "Partition", "Process"]

#: A subscriber's default budget of fetched, unfinished record bytes (64 MiB).
DEFAULT_MAX_IN_FLIGHT_BYTES = 64 * 1024 * 1024

log = logging.getLogger("tidings.consumer")

T = TypeVar("T")

#: Handle one record at delivery ``attempt``; None when finished, else seconds to retry after.
Process = Callable[[Record, int], Awaitable[float | None]]

#: Handle a batch at delivery ``attempt``: None when all are finished, else the records
#: to run again (as one batch; the same Record objects it was given, matched by
#: identity) and the seconds to wait first; the others are finished.
BatchProcess = Callable[[list[Record], int], Awaitable["tuple[list[Record], float] | None"]]


@dataclass(frozen=True, slots=True)
class ConsumerSpec:
    """How one subscriber consumes."""

    group: str | None
    topics: tuple[str, ...]
    concurrency: int = 1
    max_in_flight: int = 1000
    max_in_flight_bytes: int = DEFAULT_MAX_IN_FLIGHT_BYTES
    fetch_batch: int = 500
    start: Start = Start.EARLIEST
    commit_interval: float = 0.1
    shutdown_timeout: float = 30.0
    client: str = ""
    priority_of: Callable[[Record], int] | None = None
    transactional: bool = False
    batch: int = 0  # > 0: hand records to a BatchProcess, up to this many at a time
    park: bool = False  # non-blocking retries: a failed record is parked (see _parking)
    park_dead: bool = False  # a dead-lettered record parks its key until re-driven or purged


class Partition:
    """What the runtime tracks for one partition it owns (or reads, without a group).

    ``accepting``: queued records of it may still start (cleared on revoke, loss, stop).
    ``tracked``: results of running handlers still count (cleared when forgotten).
    A re-assigned partition gets a new object, so stale work can never touch it.
    """

    __slots__ = ("accepting", "active", "inflight", "inflight_bytes", "lanes", "parked", "tp",
                 "tracked", "tracker")

    def __init__(self, tp: TopicPartition) -> None:
        self.tp = tp
        self.tracker = OffsetTracker()
        self.inflight = 0  # fetched and not finished
        self.inflight_bytes = 0  # their values' bytes
        self.active = 0  # handlers running now
        # A key with a running record; its deque (made on demand) holds the ones waiting.
        self.lanes: dict[str, deque[Record] | None] = {}
        # Keys parked durably (see _parking): their later records park behind them.
        self.parked: dict[str, deque[Parked]] = {}
        self.accepting = True
        self.tracked = True


class Consumer:
    """Runs one subscriber until stopped.

    Its dispatch strategy (see ``_dispatch``) reads and updates the shared state below:
    ``process`` (the per-record callback), ``held`` (exactly-once outputs), ``inflight``,
    ``inflight_bytes``, the ``stopped`` and ``progress`` events, ``part_of``,
    ``work_ready``, ``finish`` and ``retry_later``.
    """

    def __init__(self, transport: Transport, spec: ConsumerSpec, process: Process,
                 batch_process: BatchProcess | None = None) -> None:
        if spec.batch and (batch_process is None or spec.concurrency != 1
                           or spec.transactional or spec.priority_of is not None):
            raise ConfigurationError("a batch consumer takes a batch process, one worker, "
                                     "no transactions and no priorities")
        parks = spec.park or spec.park_dead
        if parks and (spec.batch or spec.transactional or spec.group is None):
            raise ConfigurationError("non-blocking retries and dead_letter='park-key' need a "
                                     "group, and neither batches nor exactly_once")
        self._transport = transport
        self.spec = spec
        self.process = process
        self.stopped = asyncio.Event()
        self.progress = asyncio.Event()
        self.inflight = 0
        self.inflight_bytes = 0
        self.held = HeldOutputs() if spec.transactional else None
        self._parts: dict[TopicPartition, Partition] = {}
        self._timers: set[asyncio.TimerHandle] = set()
        self._has_work = asyncio.Event()
        self._last_commit = 0.0
        self._subscription: Subscription | None = None
        self._transaction: TransactionalSubscription | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.started = asyncio.Event()
        self._dispatch = self._strategy(batch_process)
        self.parking = Parking(self, transport, spec.group or "", park_dead=spec.park_dead) \
            if parks else None

    def _strategy(self, batch_process: BatchProcess | None) -> Dispatch:
        spec = self.spec
        if batch_process is not None and spec.batch:
            return BatchDispatch(self, batch_process)
        # One worker, no priorities, no transaction: records run in fetch order, and
        # per-key lanes are only needed for keys whose record waits for a retry.
        if spec.concurrency == 1 and spec.priority_of is None and not spec.transactional:
            return SequentialDispatch(self)
        return ParallelDispatch(self)

    @property
    def alive(self) -> bool:
        """Whether it joined and its fetch loop and workers are still running."""
        return self.started.is_set() and not self.stopped.is_set() \
            and all(not task.done() for task in self._tasks)

    @property
    def in_flight(self) -> int:
        """Records fetched and not yet finished (bounded by ``max_in_flight``)."""
        return self.inflight

    # -- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        """Join the group and start the fetch loop and the workers."""
        spec = self.spec
        if self.parking is not None:
            await self.parking.start()
        if spec.transactional:
            self._subscription = self._transaction = self._subscribe_transactional()
        else:
            self._subscription = self._transport.subscribe(
                spec.group, spec.topics, self, start=spec.start, client=spec.client
            )
        self._tasks = [asyncio.create_task(self._fetch_loop(), name="tidings-fetch")]
        self._tasks += [asyncio.create_task(worker, name=f"tidings-worker-{i}")
                        for i, worker in enumerate(self._dispatch.workers())]

    def _subscribe_transactional(self) -> TransactionalSubscription:
        spec, transport = self.spec, self._transport
        if not isinstance(transport, SupportsTransactions) or spec.group is None:
            raise ConfigurationError(
                f"{type(transport).__name__} cannot commit offsets and appends in one transaction"
            )
        return transport.subscribe_transactional(
            spec.group, spec.topics, self, start=spec.start, client=spec.client
        )

    async def stop(self) -> None:
        """Stop fetching, let running handlers finish, commit, and leave the group."""
        self.stopped.set()
        for part in self._parts.values():
            part.accepting = False  # queued records start no more
        self._has_work.set()
        self.progress.set()
        for timer in self._timers:
            timer.cancel()
        _, pending = await asyncio.wait(self._tasks, timeout=self.spec.shutdown_timeout)
        for task in pending:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.parking is not None:
            await self.parking.close(self.spec.shutdown_timeout)
        if self._subscription is not None:
            with contextlib.suppress(TransportError):
                await self._commit()
            await self._subscription.close()

    def abandon(self) -> None:
        """Stop at once without committing or leaving: what a crash looks like."""
        self.stopped.set()
        for task in self._tasks:
            task.cancel()
        for timer in self._timers:
            timer.cancel()
        if self.parking is not None:
            self.parking.abandon()
        abandon = getattr(self._subscription, "abandon", None)
        if abandon is not None:
            abandon()

    # -- rebalance listener (called inside fetch) ----------------------------------

    async def on_assigned(self, partitions: Collection[TopicPartition]) -> None:
        """Start tracking newly owned partitions."""
        for tp in partitions:
            self._forget([tp])  # a stale entry (assigned twice without a revoke)
            self._parts[tp] = Partition(tp)
        if self.parking is not None:  # what is parked is known before anything runs
            await self.parking.attach([self._parts[tp] for tp in partitions])
        self.started.set()

    async def on_revoked(self, partitions: Collection[TopicPartition]) -> None:
        """Drop queued work of these partitions, let running handlers finish, commit."""
        parts = [part for tp in partitions if (part := self._parts.get(tp)) is not None]
        for part in parts:
            part.accepting = False  # queued and retrying records go stale
            part.lanes.clear()  # so a finishing handler starts no successor
        while any(part.active for part in parts):
            self.progress.clear()
            await self.progress.wait()
        with contextlib.suppress(FencedError):
            await self._commit(partitions)
        self._forget(partitions)

    async def on_lost(self, partitions: Collection[TopicPartition]) -> None:
        """Another member owns these partitions now: drop their work uncommitted."""
        self._forget(partitions)

    def _forget(self, partitions: Collection[TopicPartition]) -> None:
        for tp in partitions:
            part = self._parts.pop(tp, None)
            if part is not None:
                part.accepting = part.tracked = False
                part.lanes.clear()
                if self.parking is not None:
                    self.parking.forget(part)
                self.inflight -= part.inflight
                self.inflight_bytes -= part.inflight_bytes
        if self.held is not None:
            self.held.drop(set(partitions))
        self.progress.set()

    # -- fetching and dispatch -----------------------------------------------------

    async def _fetch_loop(self) -> None:
        assert self._subscription is not None
        spec = self.spec
        while not self.stopped.is_set():
            room = spec.max_in_flight - self.inflight
            room_bytes = spec.max_in_flight_bytes - self.inflight_bytes
            if room <= 0 or (room_bytes <= 0 and self.inflight):
                self.progress.clear()
                await wait_event(self.progress, spec.commit_interval)
            else:
                try:
                    records = await self._subscription.fetch(
                        min(room, spec.fetch_batch), spec.commit_interval,
                        max_bytes=max(room_bytes, 1),
                    )
                except TransportError as exc:
                    log.warning("fetch failed for %s: %s; retrying", spec.topics, exc)
                    await asyncio.sleep(0.5)
                    continue
                self.started.set()
                if records:
                    # Only a fetch's first record may be larger than the room left: one
                    # larger than that waits until nothing else is in flight, and runs alone.
                    if self.inflight and len(records[0].value) > room_bytes:
                        await self._drain()
                        if self.stopped.is_set():
                            return  # not submitted, not committed: fetched again later
                    self._dispatch.submit(records)
                    self._has_work.set()
            await self._commit_if_due()

    async def _drain(self) -> None:
        """Wait (committing as usual) until nothing is in flight or the consumer stops."""
        while self.inflight and not self.stopped.is_set():
            self.progress.clear()
            await wait_event(self.progress, self.spec.commit_interval)
            await self._commit_if_due()

    def partitions(self) -> list[Partition]:
        """The partitions tracked now."""
        return list(self._parts.values())

    def part_of(self, record: Record) -> Partition:
        """The tracked partition of ``record`` (made for a group-less read)."""
        tp = TopicPartition(record.topic, record.partition)
        part = self._parts.get(tp)
        if part is None:  # a group-less read: partitions are never assigned
            part = self._parts[tp] = Partition(tp)
        return part

    async def work_ready(self) -> bool:
        """Wait until a record is ready; False once the consumer is stopping."""
        queue = self._dispatch.queue
        while not queue:
            if self.stopped.is_set():
                return False
            self._has_work.clear()
            await self._has_work.wait()
        return not self.stopped.is_set()

    def retry_later(self, push: Callable[[T], None], item: T, delay: float) -> None:
        """``push(item)`` after ``delay`` seconds, unless the consumer stopped."""
        def requeue() -> None:
            self._timers.discard(timer)
            if not self.stopped.is_set():
                push(item)
                self._has_work.set()

        timer = asyncio.get_running_loop().call_later(delay, requeue)
        self._timers.add(timer)

    def finish(self, record: Record, part: Partition) -> None:
        """``record`` is done: past it for the offsets, and the next record waiting in
        its key's lane (if any) may run, else the key's lane goes."""
        part.tracker.finish(record.offset)
        part.inflight -= 1
        self.inflight -= 1
        size = len(record.value)
        part.inflight_bytes -= size
        self.inflight_bytes -= size
        key, lanes = record.key, part.lanes
        if key is None or not lanes:  # no lanes (a sequential consumer, mostly): done
            return
        queue = lanes.get(key)
        if queue:
            self._dispatch.follow(part, queue.popleft())
            self._has_work.set()
        else:
            lanes.pop(key, None)

    # -- parking (see _parking) -----------------------------------------------------

    async def park_failed(self, record: Record, part: Partition, attempt: int,
                          outcome: float) -> None:
        """``record`` failed at ``attempt``: retried after ``outcome`` seconds without
        blocking, or dead-lettered (``outcome`` < 0). Parked if so configured, then
        finished here."""
        if self.parking is not None:
            await self.parking.failed(record, part, attempt, outcome)
        elif part.tracked:
            self.finish(record, part)

    async def park_behind(self, record: Record, part: Partition, attempt: int) -> None:
        """``record``'s key is parked: it joins its lane (see ``Parking.behind``)."""
        assert self.parking is not None
        await self.parking.behind(record, part, attempt)

    # -- commits -------------------------------------------------------------------

    async def _commit_if_due(self) -> None:
        if time.monotonic() - self._last_commit >= self.spec.commit_interval:
            try:
                await self._commit()
            except FencedError as exc:
                log.info("commit fenced (%s); the partitions moved to another member", exc)
            except TransportError as exc:
                log.warning("commit failed: %s; will retry", exc)

    async def _commit(self, only: Collection[TopicPartition] = ()) -> None:
        if self._subscription is None or self.spec.group is None:
            return
        self._last_commit = time.monotonic()
        for tp, position in self._subscription.positions().items():
            part = self._parts.get(tp)
            if part is not None and not part.inflight:  # idle: commit past the tail
                part.tracker.skip_to(position)
        wanted = set(only) if only else None
        trackers = [
            (tp, part.tracker) for tp, part in self._parts.items()
            if part.tracker.dirty and (wanted is None or tp in wanted)
        ]
        if not trackers:
            return
        offsets = {tp: tr.commit_point for tp, tr in trackers}
        if self._transaction is None or self.held is None:
            await self._subscription.commit(offsets)
        else:  # what the handlers published goes in the same transaction as the offsets
            entries = self.held.before(offsets)
            await self._transaction.commit_appending(offsets, records_of(entries))
            self.held.release(offsets, entries)
        # What was committed, not the commit point now: handlers that finished while
        # the commit was under way moved it on, and their offsets still need a commit
        # (else the tail of an idle partition stays uncommitted and shows as lag).
        for tp, tracker in trackers:
            tracker.committed = max(tracker.committed, offsets[tp])
