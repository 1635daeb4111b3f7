"""The consumer runtime: fetch, dispatch in per-key order, retry, commit, rebalance.

One :class:`Consumer` runs one subscriber over any transport. Records of one key (and
partition) are handled one at a time, in offset order; different keys run in parallel
up to ``concurrency``; records without a key carry no order once ``concurrency > 1``.
A failed record waits for its retry off the workers, holding back only its own key.
Offsets are committed up to the first unfinished record of each partition, so nothing
is committed before its handler succeeded or it was dead-lettered (at-least-once).
An exactly-once (``transactional``) consumer holds what each handler published until
its offset commits, and commits both in one transaction (see ``_transaction``).
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

from ._errors import ConfigurationError, FencedError, TransportError
from ._offsets import OffsetTracker
from ._records import OutRecord, Record, Start, TopicPartition
from ._transaction import HeldOutputs, held_outputs, records_of
from ._waiting import wait_event
from .ports import Subscription, SupportsTransactions, TransactionalSubscription, Transport

__all__ = ["Consumer", "ConsumerSpec", "Process"]

log = logging.getLogger("tidings.consumer")

#: Handle one record at delivery ``attempt``; None when finished, else seconds to retry after.
Process = Callable[[Record, int], Awaitable[float | None]]

_Item = tuple[Record, int, int, TopicPartition]  # record, attempt, partition's epoch, partition


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


class _Ready:
    """Records ready to run: FIFO, or highest priority first when a key function is set."""

    def __init__(self, priority_of: Callable[[Record], int] | None) -> None:
        self._priority_of = priority_of
        self._fifo: deque[_Item] = deque()
        self._heap: list[tuple[int, int, _Item]] = []
        self._seq = itertools.count()

    def push(self, item: _Item) -> None:
        if self._priority_of is None:
            self._fifo.append(item)
        else:
            heapq.heappush(self._heap, (-self._priority_of(item[0]), next(self._seq), item))

    def pop(self) -> _Item:
        return self._fifo.popleft() if self._priority_of is None else heapq.heappop(self._heap)[2]

    def __len__(self) -> int:
        return len(self._fifo) + len(self._heap)


class Consumer:
    """Runs one subscriber until stopped."""

    def __init__(self, transport: Transport, spec: ConsumerSpec, process: Process) -> None:
        self._transport = transport
        self.spec = spec
        self._process = process
        self._ready = _Ready(spec.priority_of)
        # A key with a running record; its deque (made on demand) holds the ones waiting.
        self._lanes: dict[tuple[TopicPartition, str], deque[Record] | None] = {}
        self._trackers: dict[TopicPartition, OffsetTracker] = {}
        self._epochs: dict[TopicPartition, int] = {}
        self._owned_inflight: dict[TopicPartition, int] = {}
        self._active: dict[TopicPartition, int] = {}
        self._inflight = 0
        self._timers: set[asyncio.TimerHandle] = set()
        self._has_work = asyncio.Event()
        self._progress = asyncio.Event()
        self._stopping = False
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
        self._stopping = True
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
        self._stopping = True
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
            self._trackers[tp] = OffsetTracker()
            self._epochs[tp] = self._epochs.get(tp, 0) + 1
            self._owned_inflight[tp] = 0
        self.started.set()

    async def on_revoked(self, partitions: Collection[TopicPartition]) -> None:
        """Drop queued work of these partitions, let running handlers finish, commit."""
        for tp in partitions:
            self._epochs[tp] = self._epochs.get(tp, 0) + 1  # queued and retrying items go stale
        self._drop_lanes(set(partitions))  # so a finishing handler starts no successor
        while any(self._active.get(tp, 0) for tp in partitions):
            self._progress.clear()
            await self._progress.wait()
        with contextlib.suppress(FencedError):
            await self._commit(partitions)
        self._forget(partitions)

    async def on_lost(self, partitions: Collection[TopicPartition]) -> None:
        """Another member owns these partitions now: drop their work uncommitted."""
        for tp in partitions:
            self._epochs[tp] = self._epochs.get(tp, 0) + 1
        self._forget(partitions)

    def _forget(self, partitions: Collection[TopicPartition]) -> None:
        gone = set(partitions)
        for tp in gone:
            self._trackers.pop(tp, None)
            self._inflight -= self._owned_inflight.pop(tp, 0)
        self._drop_lanes(gone)
        if self._held is not None:
            self._held.drop(gone)
        self._progress.set()

    def _drop_lanes(self, partitions: set[TopicPartition]) -> None:
        for lane in [lane for lane in self._lanes if lane[0] in partitions]:
            del self._lanes[lane]

    # -- fetching and dispatch -----------------------------------------------------

    async def _fetch_loop(self) -> None:
        assert self._subscription is not None
        spec = self.spec
        while not self._stopping:
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
                for record in records:
                    self._submit(record)
            await self._commit_if_due()

    def _submit(self, record: Record) -> None:
        tp = TopicPartition(record.topic, record.partition)
        tracker = self._trackers.get(tp)
        if tracker is None:  # a group-less read: partitions are never assigned
            tracker = self._trackers[tp] = OffsetTracker()
            self._epochs.setdefault(tp, 1)
            self._owned_inflight[tp] = 0
        tracker.add(record.offset)
        self._inflight += 1
        self._owned_inflight[tp] += 1
        if record.key is not None:
            lane = (tp, record.key)
            lanes = self._lanes
            if lane in lanes:
                queue = lanes[lane]
                if queue is None:
                    queue = lanes[lane] = deque()
                queue.append(record)
                return
            lanes[lane] = None
        self._ready.push((record, 1, self._epochs[tp], tp))
        self._has_work.set()

    async def _worker(self) -> None:
        ready = self._ready
        while True:
            while not ready:
                if self._stopping:
                    return
                self._has_work.clear()
                await self._has_work.wait()
            if self._stopping:
                return
            record, attempt, epoch, tp = ready.pop()
            if self._epochs.get(tp) != epoch:
                continue
            tracker = self._trackers.get(tp)
            outputs: list[OutRecord] | None = None if self._held is None else []
            self._active[tp] = self._active.get(tp, 0) + 1
            try:
                delay = await self._run(record, attempt, outputs)
            finally:
                self._active[tp] -= 1
            # A revoked partition keeps its tracker until its running handlers are done;
            # a lost (or lost and re-assigned) one does not, and its results are dropped.
            if self._trackers.get(tp) is tracker:
                if outputs and delay is None and self._held is not None:
                    self._held.add(tp, record.offset, outputs)
                self._after(record, attempt, epoch, tp, delay)
            self._progress.set()

    async def _run(self, record: Record, attempt: int, outputs: list[OutRecord] | None
                   ) -> float | None:
        token = held_outputs.set(outputs) if outputs is not None else None
        try:
            return await self._process(record, attempt)
        except Exception:
            log.exception("tidings failed to process %s[%d]@%d; retrying",
                          record.topic, record.partition, record.offset)
            return 1.0
        finally:
            if token is not None:
                held_outputs.reset(token)

    def _after(self, record: Record, attempt: int, epoch: int, tp: TopicPartition,
               delay: float | None) -> None:
        if delay is None:
            self._finish(record, tp)
            return
        item = (record, attempt + 1, epoch, tp)

        def requeue() -> None:
            self._timers.discard(timer)
            if not self._stopping:
                self._ready.push(item)
                self._has_work.set()

        timer = asyncio.get_running_loop().call_later(delay, requeue)
        self._timers.add(timer)

    def _finish(self, record: Record, tp: TopicPartition) -> None:
        tracker = self._trackers.get(tp)
        if tracker is None:
            return
        tracker.finish(record.offset)
        self._inflight -= 1
        self._owned_inflight[tp] -= 1
        if record.key is not None:
            lane = (tp, record.key)
            queue = self._lanes.get(lane)
            if queue:
                self._ready.push((queue.popleft(), 1, self._epochs[tp], tp))
                self._has_work.set()
            else:
                self._lanes.pop(lane, None)

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
            (tp, tr) for tp, tr in self._trackers.items()
            if tr.dirty and (wanted is None or tp in wanted)
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
