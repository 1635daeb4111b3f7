"""How a consumer's fetched records reach its handler: three strategies, one interface.

* :class:`ParallelDispatch`: ``concurrency`` workers over a ready queue (FIFO, or by
  priority for work queues), with a lane per running key so a key's records run one at
  a time, in order; exactly-once consumers hold each handler's outputs here.
* :class:`SequentialDispatch`: the default (one worker, no priorities, no
  transaction): fetched runs of one partition in order, no queue entry per record;
  lanes only for keys whose record waits for a retry.
* :class:`BatchDispatch`: a batch handler's records, up to ``max_batch`` at a time.

Every strategy calls the same process callback (built once per subscriber, with its
middleware chain; see ``_process``) and reports to the :class:`~tidings._consumer.Consumer`,
which owns fetching, offsets, commits and rebalancing.
"""

from __future__ import annotations

import abc
import heapq
import itertools
import logging
from collections import deque
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from ._records import OutRecord, Record
from ._transaction import held_outputs
from ._waiting import wait_event

if TYPE_CHECKING:
    from ._consumer import BatchProcess, Consumer, Partition

__all__ = ["BatchDispatch", "Dispatch", "ParallelDispatch", "SequentialDispatch"]

log = logging.getLogger("tidings.consumer")

_Item = tuple[Record, int, "Partition"]  # record, delivery attempt, its partition
_Run = tuple["Partition", list[Record]]  # records of one partition, in offset order
# A sequential consumer's queue entry: records of one partition and their attempt;
# _FRESH marks fetched records (attempt 1, held back if their key waits for a retry).
_Step = tuple["Partition", list[Record], int]
_FRESH = 0


def _crashed(record: Record) -> float:
    """The process callback itself raised (a bug, not a handler error): log it, and
    retry the record after a second."""
    log.exception("tidings failed to process %s[%d]@%d; retrying",
                  record.topic, record.partition, record.offset)
    return 1.0


class Dispatch(abc.ABC):
    """A dispatch strategy: queues what the consumer fetched and runs its workers."""

    #: What is queued; its truth says whether a worker has something to take.
    queue: Any

    def __init__(self, consumer: Consumer) -> None:
        self.consumer = consumer

    @abc.abstractmethod
    def submit(self, records: list[Record]) -> None:
        """Queue fetched records (tracked in flight, their offsets pending)."""

    @abc.abstractmethod
    def workers(self) -> list[Coroutine[Any, Any, None]]:
        """The worker coroutines to run as tasks until the consumer stops."""

    def follow(self, part: Partition, record: Record) -> None:
        """Queue ``record``, the next of its key's lane, at attempt 1."""
        raise NotImplementedError  # pragma: no cover  (batches have no lanes)

    def _runs(self, records: list[Record]) -> list[_Run]:
        """``records`` tracked (in flight, offsets pending) and cut into runs of one
        partition each, in order (no entry per record)."""
        consumer = self.consumer
        runs: list[_Run] = []
        start = 0
        while start < len(records):
            first = records[start]
            part = consumer.part_of(first)
            end = start + 1
            while end < len(records) and records[end].partition == first.partition \
                    and records[end].topic == first.topic:
                end += 1
            run = records[start:end] if start or end < len(records) else records
            add = part.tracker.add
            size = 0
            for record in run:
                add(record.offset)
                size += len(record.value)
            part.inflight += len(run)
            part.inflight_bytes += size
            consumer.inflight_bytes += size
            runs.append((part, run))
            start = end
        consumer.inflight += len(records)
        return runs


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


class ParallelDispatch(Dispatch):
    """``concurrency`` workers over a ready queue, a lane per running key."""

    def __init__(self, consumer: Consumer) -> None:
        super().__init__(consumer)
        self.queue = self._ready = _Ready(consumer.spec.priority_of)

    def workers(self) -> list[Coroutine[Any, Any, None]]:
        """One worker per unit of concurrency."""
        return [self._worker() for _ in range(self.consumer.spec.concurrency)]

    def follow(self, part: Partition, record: Record) -> None:
        """A lane's next record joins the ready queue."""
        self._ready.push((record, 1, part))

    def submit(self, records: list[Record]) -> None:
        """Each record to the ready queue, or behind its key's running record."""
        consumer = self.consumer
        push = self._ready.push
        part: Partition | None = None
        for record in records:  # records of one partition come together: look it up once
            if part is None or record.partition != part.tp.partition \
                    or record.topic != part.tp.topic:
                part = consumer.part_of(record)
            part.tracker.add(record.offset)
            part.inflight += 1
            size = len(record.value)
            part.inflight_bytes += size
            consumer.inflight_bytes += size
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
        consumer.inflight += len(records)

    async def _worker(self) -> None:
        consumer = self.consumer
        ready, process, held, stopped = self._ready, consumer.process, consumer.held, \
            consumer.stopped
        park = consumer.spec.park
        while True:
            # The cheap check inline (this loops once a record); the coroutine only to wait.
            if (not ready or stopped.is_set()) and not await consumer.work_ready():
                return
            record, attempt, part = ready.pop()
            if not part.accepting:
                continue
            if part.parked and record.key in part.parked:  # one check when none is parked
                await consumer.park_behind(record, part, attempt)
                consumer.progress.set()
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
                if outputs and (delay is None or delay < 0) and held is not None:
                    held.add(part.tp, record.offset, outputs)
                if delay is None:
                    consumer.finish(record, part)
                elif delay >= 0 and not park:
                    consumer.retry_later(ready.push, (record, attempt + 1, part), delay)
                else:  # dead-lettered, or a non-blocking retry
                    await consumer.park_failed(record, part, attempt, delay)
            consumer.progress.set()


class SequentialDispatch(Dispatch):
    """One worker over fetched runs of one partition, in offset order."""

    def __init__(self, consumer: Consumer) -> None:
        super().__init__(consumer)
        self._steps: deque[_Step] = deque()
        self.queue = self._steps

    def workers(self) -> list[Coroutine[Any, Any, None]]:
        """The one worker."""
        return [self._worker()]

    def follow(self, part: Partition, record: Record) -> None:
        """A lane's record runs at attempt 1, past the lanes."""
        self._steps.append((part, [record], 1))

    def submit(self, records: list[Record]) -> None:
        """Queue the fetched runs."""
        self._steps.extend((part, run, _FRESH) for part, run in self._runs(records))

    async def _worker(self) -> None:
        """Each partition's records in offset order, one at a time. A failed record
        waits for its retry off the worker and parks its key: that key's later records
        wait in its lane (in order), the other keys go on; the lane drains one record at
        a time once the retry succeeded."""
        consumer = self.consumer
        steps, process, park = self._steps, consumer.process, consumer.spec.park
        while await consumer.work_ready():
            part, run, attempt = steps.popleft()
            lanes = part.lanes
            for record in run:
                if not part.accepting:
                    break  # revoked, lost or stopping: the rest is stale
                key = record.key
                if attempt == _FRESH and lanes and key is not None and key in lanes:
                    lanes[key].append(record)  # type: ignore[union-attr]  # a parked key
                    continue
                if part.parked and key in part.parked:  # parked durably (see _parking)
                    await consumer.park_behind(record, part, attempt or 1)
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
                        consumer.finish(record, part)
                    elif delay < 0 or park:  # dead-lettered, or a non-blocking retry
                        await consumer.park_failed(record, part, attempt or 1, delay)
                    else:
                        if key is not None and key not in lanes:
                            lanes[key] = deque()  # park the key behind the retry
                        consumer.retry_later(steps.append,
                                             (part, [record], (attempt or 1) + 1), delay)
            consumer.progress.set()  # once a run: handlers that never wait run it whole


class BatchDispatch(Dispatch):
    """One batch at a time: what is ready (in fetch order, so each partition's in
    offset order), up to ``spec.batch`` records; a failed batch is retried whole, and
    holds back the consumer while it waits (as a batch listener must)."""

    def __init__(self, consumer: Consumer, process: BatchProcess) -> None:
        super().__init__(consumer)
        self._queued: deque[_Run] = deque()
        self.queue = self._queued
        self._process = process

    def workers(self) -> list[Coroutine[Any, Any, None]]:
        """The one batch worker."""
        return [self._worker()]

    def submit(self, records: list[Record]) -> None:
        """Queue the fetched runs."""
        self._queued.extend(self._runs(records))

    async def _worker(self) -> None:
        consumer = self.consumer
        runs, size = self._queued, consumer.spec.batch
        while await consumer.work_ready():
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
                await self._run_batch(batch)
            consumer.progress.set()

    async def _run_batch(self, batch: list[_Run]) -> None:
        consumer = self.consumer
        attempt = 1
        while True:
            parts = {id(part): part for part, _ in batch}.values()
            records = batch[0][1] if len(batch) == 1 else [r for _, run in batch for r in run]
            for part in parts:
                part.active += 1
            try:
                outcome = await self._process(records, attempt)
            except Exception:
                log.exception("tidings failed to process a batch of %d; retrying", len(records))
                outcome = records, 1.0
            finally:
                for part in parts:
                    part.active -= 1
            batch = self._settle(batch, outcome)
            consumer.progress.set()
            if outcome is None or not batch or await wait_event(consumer.stopped, outcome[1]):
                return  # done, revoked, or stopping: what is unfinished is redelivered
            attempt += 1

    def _settle(self, batch: list[_Run],
                outcome: tuple[list[Record], float] | None) -> list[_Run]:
        """Finish what the outcome does not ask to run again; return the rest."""
        consumer = self.consumer
        again = {id(record) for record in outcome[0]} if outcome is not None else None
        unfinished: list[_Run] = []
        for part, run in batch:
            done = run if again is None else [r for r in run if id(r) not in again]
            if done and part.tracked:
                part.tracker.finish_all(r.offset for r in done)
                part.inflight -= len(done)
                consumer.inflight -= len(done)
                size = sum(len(r.value) for r in done)
                part.inflight_bytes -= size
                consumer.inflight_bytes -= size
            if again is not None and part.accepting:
                kept = [r for r in run if id(r) in again]
                if kept:
                    unfinished.append((part, kept))
        return unfinished
