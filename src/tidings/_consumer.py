"""The consumer runtime: fetch, dispatch in per-key order, retry, commit, rebalance.

One :class:`Consumer` runs one subscriber over any transport. Records of one key (and
partition) are handled one at a time, in offset order; different keys run in parallel
up to ``concurrency``; records without a key carry no order once ``concurrency > 1``.
A failed record waits for its retry off the workers, holding back only its own key.
Offsets are committed up to the first unfinished record of each partition, so nothing
is committed before its handler succeeded or it was dead-lettered (at-least-once).
An exactly-once (``transactional``) consumer holds what each handler published until
its offset commits, and commits both in one transaction (see ``_transaction``).

Three ways to run, one set of guarantees: several workers over a ready queue with a
lane per running key (``concurrency > 1``, priorities, transactions); one worker over
fetched runs of one partition, with lanes only for keys waiting for a retry (the
default, ``concurrency=1``: no queue entry per record); and a batch worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import TypeVar

from ._errors import ConfigurationError, FencedError, TransportError
from ._offsets import OffsetTracker
from ._records import OutRecord, Record, Start, TopicPartition
from ._transaction import HeldOutputs, held_outputs, records_of
from ._waiting import wait_event
from .ports import Subscription, SupportsTransactions, TransactionalSubscription, Transport

__all__ = ["BatchProcess", "Consumer", "ConsumerSpec", "Process"]

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
    fetch_batch: int = 500
    start: Start = Start.EARLIEST
    commit_interval: float = 0.1
    shutdown_timeout: float = 30.0
    client: str = ""
    priority_of: Callable[[Record], int] | None = None
    transactional: bool = False
    batch: int = 0  # > 0: hand records to a BatchProcess, up to this many at a time


class _Partition:
    """What the runtime tracks for one partition it owns (or reads, without a group).

    ``accepting``: queued records of it may still start (cleared on revoke, loss, stop).
    ``tracked``: results of running handlers still count (cleared when forgotten).
    A re-assigned partition gets a new object, so stale work can never touch it.
    """

    __slots__ = ("accepting", "active", "inflight", "lanes", "tp", "tracked", "tracker")

    def __init__(self, tp: TopicPartition) -> None:
        self.tp = tp
        self.tracker = OffsetTracker()
        self.inflight = 0  # fetched and not finished
        self.active = 0  # handlers running now
        # A key with a running record; its deque (made on demand) holds the ones waiting.
        self.lanes: dict[str, deque[Record] | None] = {}
        self.accepting = True
        self.tracked = True


_Item = tuple[Record, int, _Partition]  # record, delivery attempt, its partition
_Run = tuple[_Partition, list[Record]]  # a batch consumer's records of one partition
# A sequential consumer's queue entry: records of one partition and their attempt;
# _FRESH marks fetched records (attempt 1, held back if their key waits for a retry).
_Step = tuple[_Partition, list[Record], int]
_FRESH = 0


class _Ready:
    """Records ready to run: FIFO, or highest priority first when a key function is set."""

    def __init__(self, priority_of: Callable[[Record], int] | None) -> None:
        self._priority_of = priority_of
        self._fifo: deque[_Item] = deque()
        self._heap: list[tuple[int, int, _Item]] = []
        self._seq = itertools.count()
        if priority_of is None:  # the hot path: the deque's own methods, no wrapper
            self.push: Callable[[_Item], None] = self._fifo.append
            self.pop: Callable[[], _Item] = self._fifo.popleft
        else:
            self.push, self.pop = self._push_priority, self._pop_priority

    def _push_priority(self, item: _Item) -> None:
        assert self._priority_of is not None
        heapq.heappush(self._heap, (-self._priority_of(item[0]), next(self._seq), item))

    def _pop_priority(self) -> _Item:
        return heapq.heappop(self._heap)[2]

    def __bool__(self) -> bool:
        return bool(self._fifo) or bool(self._heap)


def _crashed(record: Record) -> float:
    """The process callback itself raised (a bug, not a handler error): log it, and
    retry the record after a second."""
    log.exception("tidings failed to process %s[%d]@%d; retrying",
                  record.topic, record.partition, record.offset)
    return 1.0


class Consumer:
    """Runs one subscriber until stopped."""

    def __init__(self, transport: Transport, spec: ConsumerSpec, process: Process,
                 batch_process: BatchProcess | None = None) -> None:
        if spec.batch and (batch_process is None or spec.concurrency != 1
                           or spec.transactional or spec.priority_of is not None):
            raise ConfigurationError("a batch consumer takes a batch process, one worker, "
                                     "no transactions and no priorities")
        self._transport = transport
        self.spec = spec
        self._process = process
        self._batch_process = batch_process
        self._stopped = asyncio.Event()
        self._ready = _Ready(spec.priority_of)
        self._runs: deque[_Run] = deque()  # a batch consumer's, in place of _ready
        self._steps: deque[_Step] = deque()  # a sequential consumer's, in place of _ready
        # One worker, no priorities, no transaction: records run in fetch order, and
        # per-key lanes are only needed for keys whose record waits for a retry.
        self._sequential = spec.concurrency == 1 and not spec.batch \
            and spec.priority_of is None and not spec.transactional
        self._queue: deque[_Run] | deque[_Step] | _Ready = \
            self._runs if spec.batch else self._steps if self._sequential else self._ready
        self._parts: dict[TopicPartition, _Partition] = {}
        self._inflight = 0
        self._timers: set[asyncio.TimerHandle] = set()
        self._has_work = asyncio.Event()
        self._progress = asyncio.Event()
        self._last_commit = 0.0
        self._subscription: Subscription | None = None
        self._transaction: TransactionalSubscription | None = None
        self._held = HeldOutputs() if spec.transactional else None
        self._tasks: list[asyncio.Task[None]] = []
        self.started = asyncio.Event()

    @property
    def in_flight(self) -> int:
        """Records fetched and not yet finished (bounded by ``max_in_flight``)."""
        return self._inflight

    # -- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        """Join the group and start the fetch loop and the workers."""
        spec = self.spec
        if spec.transactional:
            self._subscription = self._transaction = self._subscribe_transactional()
        else:
            self._subscription = self._transport.subscribe(
                spec.group, spec.topics, self, start=spec.start, client=spec.client
            )
        self._tasks = [asyncio.create_task(self._fetch_loop(), name="tidings-fetch")]
        if spec.batch:
            self._tasks.append(asyncio.create_task(self._batch_worker(), name="tidings-batch"))
            return
        if self._sequential:
            self._tasks.append(asyncio.create_task(self._sequential_worker(),
                                                   name="tidings-worker-0"))
            return
        self._tasks += [
            asyncio.create_task(self._worker(), name=f"tidings-worker-{i}")
            for i in range(self.spec.concurrency)
        ]

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
        self._stopped.set()
        for part in self._parts.values():
            part.accepting = False  # queued records start no more
        self._has_work.set()
        self._progress.set()
        for timer in self._timers:
            timer.cancel()
        _, pending = await asyncio.wait(self._tasks, timeout=self.spec.shutdown_timeout)
        for task in pending:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._subscription is not None:
            with contextlib.suppress(TransportError):
                await self._commit()
            await self._subscription.close()

    def abandon(self) -> None:
        """Stop at once without committing or leaving: what a crash looks like."""
        self._stopped.set()
        for task in self._tasks:
            task.cancel()
        for timer in self._timers:
            timer.cancel()
        abandon = getattr(self._subscription, "abandon", None)
        if abandon is not None:
            abandon()

    # -- rebalance listener (called inside fetch) ----------------------------------

    async def on_assigned(self, partitions: Collection[TopicPartition]) -> None:
        """Start tracking newly owned partitions."""
        for tp in partitions:
            self._forget([tp])  # a stale entry (assigned twice without a revoke)
            self._parts[tp] = _Partition(tp)
        self.started.set()

    async def on_revoked(self, partitions: Collection[TopicPartition]) -> None:
        """Drop queued work of these partitions, let running handlers finish, commit."""
        parts = [part for tp in partitions if (part := self._parts.get(tp)) is not None]
        for part in parts:
            part.accepting = False  # queued and retrying records go stale
            part.lanes.clear()  # so a finishing handler starts no successor
        while any(part.active for part in parts):
            self._progress.clear()
            await self._progress.wait()
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
                self._inflight -= part.inflight
        if self._held is not None:
            self._held.drop(set(partitions))
        self._progress.set()

    # -- fetching and dispatch -----------------------------------------------------

    async def _fetch_loop(self) -> None:
        assert self._subscription is not None
        spec = self.spec
        while not self._stopped.is_set():
            room = spec.max_in_flight - self._inflight
            if room <= 0:
                self._progress.clear()
                await wait_event(self._progress, spec.commit_interval)
            else:
                try:
                    records = await self._subscription.fetch(
                        min(room, spec.fetch_batch), spec.commit_interval
                    )
                except TransportError as exc:
                    log.warning("fetch failed for %s: %s; retrying", spec.topics, exc)
                    await asyncio.sleep(0.5)
                    continue
                self.started.set()
                if records:
                    self._submit(records)
            await self._commit_if_due()

    def _part_of(self, record: Record) -> _Partition:
        tp = TopicPartition(record.topic, record.partition)
        part = self._parts.get(tp)
        if part is None:  # a group-less read: partitions are never assigned
            part = self._parts[tp] = _Partition(tp)
        return part

    def _submit(self, records: list[Record]) -> None:
        if self.spec.batch:
            self._runs.extend(self._runs_of(records))
            self._has_work.set()
            return
        if self._sequential:
            self._steps.extend((part, run, _FRESH) for part, run in self._runs_of(records))
            self._has_work.set()
            return
        push = self._ready.push
        part: _Partition | None = None
        for record in records:  # records of one partition come together: look it up once
            if part is None or record.partition != part.tp.partition \
                    or record.topic != part.tp.topic:
                part = self._part_of(record)
            part.tracker.add(record.offset)
            part.inflight += 1
            key = record.key
            if key is not None:
                lanes = part.lanes
                if key in lanes:
                    queue = lanes[key]
                    if queue is None:
                        queue = lanes[key] = deque()
                    queue.append(record)
                    continue
                lanes[key] = None
            push((record, 1, part))
        self._inflight += len(records)
        self._has_work.set()

    def _runs_of(self, records: list[Record]) -> list[_Run]:
        """``records`` tracked (in flight, offsets pending) and cut into runs of one
        partition each, in order: how batch and sequential consumers queue them (no
        entry per record)."""
        runs: list[_Run] = []
        start = 0
        while start < len(records):
            first = records[start]
            part = self._part_of(first)
            end = start + 1
            while end < len(records) and records[end].partition == first.partition \
                    and records[end].topic == first.topic:
                end += 1
            run = records[start:end] if start or end < len(records) else records
            add = part.tracker.add
            for record in run:
                add(record.offset)
            part.inflight += len(run)
            runs.append((part, run))
            start = end
        self._inflight += len(records)
        return runs

    async def _work_ready(self) -> bool:
        """Wait until a record is ready; False once the consumer is stopping."""
        while not self._queue:
            if self._stopped.is_set():
                return False
            self._has_work.clear()
            await self._has_work.wait()
        return not self._stopped.is_set()

    async def _worker(self) -> None:
        ready, process, held, stopped = self._ready, self._process, self._held, self._stopped
        while True:
            # The cheap check inline (this loops once a record); the coroutine only to wait.
            if (not ready or stopped.is_set()) and not await self._work_ready():
                return
            record, attempt, part = ready.pop()
            if not part.accepting:
                continue
            outputs: list[OutRecord] | None = None if held is None else []
            part.active += 1
            token = held_outputs.set(outputs) if outputs is not None else None
            try:
                delay = await process(record, attempt)
            except Exception:
                delay = _crashed(record)
            finally:
                part.active -= 1
                if token is not None:
                    held_outputs.reset(token)
            # A revoked partition stays tracked until its running handlers are done; a
            # lost (or lost and re-assigned) one does not, and its results are dropped.
            if part.tracked:
                if outputs and delay is None and held is not None:
                    held.add(part.tp, record.offset, outputs)
                if delay is None:
                    self._finish(record, part)
                else:
                    self._retry_later(self._ready.push, (record, attempt + 1, part), delay)
            self._progress.set()

    async def _sequential_worker(self) -> None:
        """The one worker of a sequential consumer: each partition's records in offset
        order, one at a time. A failed record waits for its retry off the worker and
        parks its key: that key's later records wait in its lane (in order), the other
        keys go on; the lane drains one record at a time once the retry succeeded."""
        steps, process = self._steps, self._process
        while await self._work_ready():
            part, run, attempt = steps.popleft()
            lanes = part.lanes
            for record in run:
                if not part.accepting:
                    break  # revoked, lost or stopping: the rest is stale
                key = record.key
                if attempt == _FRESH and lanes and key is not None and key in lanes:
                    lanes[key].append(record)  # type: ignore[union-attr]  # a parked key
                    continue
                part.active += 1
                try:
                    delay = await process(record, attempt or 1)
                except Exception:
                    delay = _crashed(record)
                finally:
                    part.active -= 1
                if part.tracked:
                    if delay is None:
                        self._finish(record, part)
                    else:
                        if key is not None and key not in lanes:
                            lanes[key] = deque()  # park the key behind the retry
                        self._retry_later(steps.append, (part, [record], (attempt or 1) + 1),
                                          delay)
            self._progress.set()  # once a run: handlers that never wait run it whole

    async def _batch_worker(self) -> None:
        """One batch at a time: what is ready (in fetch order, so each partition's in
        offset order), up to ``spec.batch`` records; a failed batch is retried whole,
        and holds back the consumer while it waits (as a batch listener must)."""
        assert self._batch_process is not None
        runs, size = self._runs, self.spec.batch
        while await self._work_ready():
            batch: list[_Run] = []
            taken = 0
            while runs and taken < size:
                part, run = runs[0]
                if not part.accepting:
                    runs.popleft()
                    continue
                if len(run) <= size - taken:
                    runs.popleft()
                else:  # split: the rest waits for the next batch
                    runs[0] = (part, run[size - taken:])
                    run = run[: size - taken]
                batch.append((part, run))
                taken += len(run)
            if batch:
                await self._run_batch(batch, self._batch_process)
            self._progress.set()

    async def _run_batch(self, batch: list[_Run], process: BatchProcess) -> None:
        attempt = 1
        while True:
            parts = {id(part): part for part, _ in batch}.values()
            records = batch[0][1] if len(batch) == 1 else [r for _, run in batch for r in run]
            for part in parts:
                part.active += 1
            try:
                outcome = await process(records, attempt)
            except Exception:
                log.exception("tidings failed to process a batch of %d; retrying", len(records))
                outcome = records, 1.0
            finally:
                for part in parts:
                    part.active -= 1
            again = {id(record) for record in outcome[0]} if outcome is not None else None
            unfinished: list[_Run] = []
            for part, run in batch:
                done = run if again is None else [r for r in run if id(r) not in again]
                if done and part.tracked:
                    part.tracker.finish_all(r.offset for r in done)
                    part.inflight -= len(done)
                    self._inflight -= len(done)
                if again is not None and part.accepting:
                    kept = [r for r in run if id(r) in again]
                    if kept:
                        unfinished.append((part, kept))
            self._progress.set()
            batch = unfinished
            if outcome is None or not batch or await wait_event(self._stopped, outcome[1]):
                return  # done, revoked, or stopping: what is unfinished is redelivered
            attempt += 1

    def _retry_later(self, push: Callable[[T], None], item: T, delay: float) -> None:
        def requeue() -> None:
            self._timers.discard(timer)
            if not self._stopped.is_set():
                push(item)
                self._has_work.set()

        timer = asyncio.get_running_loop().call_later(delay, requeue)
        self._timers.add(timer)

    def _finish(self, record: Record, part: _Partition) -> None:
        """``record`` is done: past it for the offsets, and the next record waiting in
        its key's lane (if any) may run, else the key's lane goes."""
        part.tracker.finish(record.offset)
        part.inflight -= 1
        self._inflight -= 1
        key, lanes = record.key, part.lanes
        if key is None or not lanes:  # no lanes (a sequential consumer, mostly): done
            return
        queue = lanes.get(key)
        if queue:
            following = queue.popleft()
            if self._sequential:  # a lane's record runs at attempt 1, past the lanes
                self._steps.append((part, [following], 1))
            else:
                self._ready.push((following, 1, part))
            self._has_work.set()
        else:
            lanes.pop(key, None)

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
        wanted = set(only) if only else None
        trackers = [
            (tp, part.tracker) for tp, part in self._parts.items()
            if part.tracker.dirty and (wanted is None or tp in wanted)
        ]
        if not trackers:
            return
        offsets = {tp: tr.commit_point for tp, tr in trackers}
        if self._transaction is None or self._held is None:
            await self._subscription.commit(offsets)
        else:  # what the handlers published goes in the same transaction as the offsets
            entries = self._held.before(offsets)
            await self._transaction.commit_appending(offsets, records_of(entries))
            self._held.release(offsets, entries)
        for _, tracker in trackers:
            tracker.committed = max(tracker.committed, tracker.commit_point)
