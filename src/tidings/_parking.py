"""Parked keys: non-blocking retries and dead letters that keep their key's order.

A subscriber with ``RetryPolicy(blocking=False)`` does not wait for a failed message's
retry in its partition: the message is *parked* (written, with its next attempt number
and the time it is due, to the group's park log ``tidings.parked.<group>``), its offset
is committed, and the partition goes on. Later messages of the same key are parked
behind it (and committed), so the key keeps its order; other keys never wait. Each
parked key is a lane that runs its messages one at a time, in order, off the
partition's workers: the head at its due time and attempt, then the others. The lanes
of a subscriber run at most ``concurrency`` handlers at once between them.

With ``dead_letter="park-key"``, a dead-lettered message stays at the head of its key's
lane, *dead*: the key's later messages park behind it until the dead letter is
re-driven (the re-driven copy runs at the head, then the others follow it in order) or
purged (the others go on). A dead head whose dead letter is no longer pending and was
not re-driven (purged, or deleted from the dead-letter topic by hand) is released, with
a warning in the second case, by a check every :data:`CHECK_INTERVAL` seconds.

The park log (:mod:`tidings._parklog`) is an ordinary topic on the bus, so this works
on every backend that can read a log back (``replay``) and survives crashes. A member
reads it when it gets partitions (from where it last read), before any of their
records runs, and every :data:`CATCH_UP_INTERVAL` seconds besides, which lets it
forget the entries it finished. It keeps the values and headers of the parked messages
of its own partitions only; the others stay in the log, read back (by their offset
there) when it gets their partition. Only a partition's owner writes events for it, and it
writes them before it commits or gives the partition up, so a new owner knows every
parked key. Each owner writes a parked message's whole state again once a day, so the
log's retention (a week by default) never forgets one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Collection, Iterable
from typing import TYPE_CHECKING

from ._dlq import REDRIVE_OF
from ._dlqscan import DeadLetterScan
from ._errors import TransportError
from ._parklog import (
    Parked,
    ParkIndex,
    entry_id,
    event_partition,
    fill,
    park_topic,
    read_log,
)
from ._parklog import event_record as _event
from ._records import Record, TopicPartition
from ._waiting import wait_event
from .ports import Transport

if TYPE_CHECKING:
    from ._consumer import Consumer, Partition

__all__ = ["CHECK_INTERVAL", "DEAD", "Parking"]

log = logging.getLogger("tidings.consumer")

#: What a process callback returns for a message it dead-lettered (a delay is >= 0).
DEAD = -1.0
#: Seconds between checks that a dead head's dead letter is still pending.
CHECK_INTERVAL = 5.0
#: Seconds a dead head waits for its re-driven copy before it is released.
REDRIVE_GRACE = 120.0
#: Seconds between reads of the park log to its end by a member whose partitions do not
#: change (it reads it when they do): what it forgets of finished entries depends on it.
CATCH_UP_INTERVAL = 60.0
#: A parked message's whole state is written again once it is this old (a day), at
#: most every REFRESH_INTERVAL seconds, so retention of the park log keeps it.
REFRESH_AGE = 86400.0
REFRESH_INTERVAL = 3600.0


class Parking:
    """One consumer's parked keys: it writes and reads the park log, and runs lanes."""

    def __init__(self, consumer: Consumer, transport: Transport, group: str, *,
                 park_dead: bool) -> None:
        self._consumer = consumer
        self._transport = transport
        self._group = group
        self._topic = park_topic(group)
        self.park_dead = park_dead
        self._index = ParkIndex()
        self._read_to: int | None = None
        self._reading = asyncio.Lock()
        # Per partition object (a re-assigned partition gets a new one) and lane.
        self._running: dict[tuple[Partition, str], asyncio.Task[None]] = {}
        self._checker: asyncio.Task[None] | None = None
        self._redriven_since: dict[str, float] = {}
        self._scans: dict[str, DeadLetterScan] = {}  # per topic with dead heads
        self._closing = asyncio.Event()
        self._sleeping: set[asyncio.Task[None]] = set()
        #: Handlers of parked messages running at once, across every lane: at most
        #: the subscriber's ``concurrency`` (beside its partitions' own workers).
        self._slots = asyncio.Semaphore(consumer.spec.concurrency)

    async def start(self) -> None:
        """Make sure the park log exists (one partition: one order for every event)."""
        await self._transport.ensure_topic(self._topic, 1)
        self._checker = asyncio.create_task(self._check_loop(), name="tidings-park-check")

    async def attach(self, parts: Iterable[Partition]) -> None:
        """Newly owned partitions: read the park log to its end, then run their lanes.
        Nothing of theirs runs before (else a parked key's later message could overtake
        it), so a read that fails is tried again until it succeeds or the consumer stops."""
        new = {part.tp for part in parts}
        while True:
            try:
                await self.catch_up(
                    {p.tp for p in self._consumer.partitions() if p.tp not in new}, new)
                hollow = [entry for tp in new for entry in self._index.hollow(tp)]
                if hollow:  # their records were left in the log while others owned them
                    await fill(self._transport, self._topic, hollow)
                break
            except TransportError as exc:
                log.warning("could not read the park log %s: %s; retrying", self._topic, exc)
                if await wait_event(self._consumer.stopped, 0.5):
                    return
        for part in parts:
            part.parked = self._index.of(part.tp)
            for lane in list(part.parked):
                self._wake(part, lane)

    async def catch_up(self, owned: Collection[TopicPartition],
                       new: Collection[TopicPartition] = ()) -> None:
        """Read the park log from where this member left off to its end, then forget
        the finished entries that read has put behind it, and the values of the parked
        messages of partitions neither ``owned`` nor ``new`` (left in the log: memory
        holds the group's parked messages by count, not by size).

        Events about the partitions in ``owned`` are passed over: their owner (this
        member) wrote them, and its lanes, running meanwhile, know better (an old event
        applied between two pages of the read could undo a later one for a moment)."""
        def apply(event: Record) -> None:
            if event_partition(event) not in owned:
                self._index.apply(event)
            else:
                self._index.note_read(event)

        async with self._reading:  # one at a time: the read position only goes forward
            generation = self._index.begin_read()
            self._read_to = await read_log(self._transport, self._topic, self._read_to, apply)
            self._index.read_done(generation)
            self._index.hollow_out({*owned, *new})

    async def close(self, timeout: float) -> None:
        """Stop the lanes (a running handler gets ``timeout`` seconds to finish)."""
        self._closing.set()
        tasks = [*self._running.values()]
        if self._checker is not None:
            tasks.append(self._checker)
            self._checker.cancel()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=timeout)
            for task in pending:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def forget(self, part: Partition) -> None:
        """``part`` is no longer owned: its lanes waiting for a due time stop now (one
        running a handler stops after it, as it sees the partition gone)."""
        for (owner, _), task in list(self._running.items()):
            if owner is part and task in self._sleeping:
                task.cancel()

    def abandon(self) -> None:
        """Stop at once (a crash): lanes and the check are cancelled."""
        for task in [*self._running.values(), self._checker]:
            if task is not None:
                task.cancel()

    # -- parking what the partition's workers hand over ----------------------------

    async def failed(self, record: Record, part: Partition, attempt: int,
                     outcome: float) -> None:
        """``record`` failed at ``attempt`` and is retried after ``outcome`` seconds
        without blocking, or was dead-lettered (``outcome`` < 0): park it (a dead one
        only with ``park_dead``); then it is finished."""
        if outcome >= 0:
            await self._durably(record, part, attempt + 1, time.time() + outcome)
        elif self.park_dead:
            await self._durably(record, part, attempt, 0.0, dead=True)
        elif part.tracked:
            self._consumer.finish(record, part)

    async def behind(self, record: Record, part: Partition, attempt: int) -> None:
        """``record``'s key is parked: it joins the back of its lane (or, a re-drive of
        the lane's dead head, takes its place); then it is finished."""
        head = self.redriven_head(part, record)
        await self._durably(record, part, attempt, 0.0, revives=head)

    async def _durably(self, record: Record, part: Partition, attempt: int, due: float, *,
                       dead: bool = False, revives: Parked | None = None) -> None:
        """Park (or revive with) ``record``, retrying a failed write; then finish it."""
        consumer = self._consumer
        part.active += 1  # a revoke waits for it to be durable
        try:
            while True:
                try:
                    if revives is not None:
                        await self.revive(part, revives, record)
                    else:
                        await self.park(part, record, attempt, due, dead)
                    break
                except TransportError as exc:
                    log.warning("parking %s[%d]@%d failed: %s; retrying", record.topic,
                                record.partition, record.offset, exc)
                    if await wait_event(consumer.stopped, 1.0) or not part.accepting:
                        return  # not finished: fetched again later
        finally:
            part.active -= 1
        if part.tracked:
            consumer.finish(record, part)

    async def park(self, part: Partition, record: Record, attempt: int, due: float,
                   dead: bool = False) -> None:
        """Park ``record`` at the back of its key's lane: to run at ``attempt`` when
        ``due`` (0: when it is the head), or dead. Durable when this returns."""
        entry = Parked(entry_id(record), record, attempt, due, dead, time.time())
        events = [_event(self._group, "park", entry, full=True)]
        if dead:
            events.append(_event(self._group, "dead", entry))
        await self._transport.append(events)
        if self._index.add(entry):
            self._wake(part, entry.lane)

    async def revive(self, part: Partition, head: Parked, record: Record) -> None:
        """``record``, a re-driven copy of the dead head ``head``, takes its place."""
        head.record, head.attempt, head.due, head.dead = record, 1, 0.0, False
        head.written = time.time()
        await self._transport.append([_event(self._group, "revive", head, full=True)])
        self._wake(part, head.lane)

    def redriven_head(self, part: Partition, record: Record) -> Parked | None:
        """The dead head that ``record`` is the re-drive of, if it is one."""
        lane = part.parked.get(record.key) if record.key is not None else None
        origin = record.headers.get(REDRIVE_OF)
        if not lane or origin is None:
            return None
        head = lane[0]
        return head if head.dead and entry_id(head.record) == origin else None

    # -- running lanes -------------------------------------------------------------

    def _wake(self, part: Partition, lane: str) -> None:
        """Run ``lane`` of ``part`` unless it runs already."""
        slot = (part, lane)
        task = self._running.get(slot)
        if task is None or task.done():
            self._running[slot] = asyncio.create_task(self._run(part, lane, slot),
                                                      name="tidings-parked-lane")

    async def _run(self, part: Partition, lane_name: str,
                   slot: tuple[Partition, str]) -> None:
        try:
            await self._run_lane(part, lane_name)
        except TransportError as exc:  # the park log could not be written: later
            log.warning("parked lane of %s could not go on (%s); retrying", part.tp, exc)
            await asyncio.sleep(1.0)
            if part.accepting:
                self._running.pop(slot, None)
                self._wake(part, lane_name)
                return
        finally:
            if self._running.get(slot) is asyncio.current_task():
                del self._running[slot]

    async def _run_lane(self, part: Partition, lane_name: str) -> None:
        consumer = self._consumer
        slept: tuple[Parked, float] | None = None  # waited for this head until its due time
        while part.accepting:
            lane = part.parked.get(lane_name)
            if not lane or lane[0].dead:
                return  # empty, or a dead head waits for a re-drive or a purge
            head = lane[0]
            wait = head.due - time.time()
            # Once waited for (on the loop's clock, which a test's fake clock moves),
            # the head is due, whatever the wall clock says.
            if wait > 0 and (slept is None or slept[0] is not head or slept[1] != head.due):
                task = asyncio.current_task()
                assert task is not None
                self._sleeping.add(task)
                try:
                    if await wait_event(self._closing, wait):
                        return
                finally:
                    self._sleeping.discard(task)
                slept = (head, head.due)
                continue  # the state may have changed (revoked, revived)
            await self._slots.acquire()
            try:
                if not part.accepting or part.parked.get(lane_name) is not lane \
                        or not lane or lane[0] is not head or head.dead:
                    continue  # it changed while it waited for a slot (revoked, revived)
                part.active += 1  # a revoke waits for the handler and for what it wrote
                try:
                    try:
                        outcome = await consumer.process(head.record, head.attempt)
                    except Exception:
                        log.exception("tidings failed to process parked %s; retrying",
                                      head.id)
                        outcome = 1.0
                    if not part.tracked:
                        return  # lost: the new owner runs it again
                    await self._settle(head, outcome)
                finally:
                    part.active -= 1
                    consumer.progress.set()
            finally:
                self._slots.release()

    async def _settle(self, head: Parked, outcome: float | None) -> None:
        """Write what happened to the head: done, failed again, or dead."""
        if outcome is not None and outcome >= 0:
            head.attempt, head.due = head.attempt + 1, time.time() + outcome
            await self._transport.append([_event(self._group, "attempt", head)])
        elif outcome is not None and self.park_dead:
            head.dead = True
            await self._transport.append([_event(self._group, "dead", head)])
        else:
            await self._transport.append([_event(self._group, "done", head)])
            self._index.finish(head.id)

    # -- dead heads ----------------------------------------------------------------

    def dead_heads(self, parts: Collection[Partition]) -> list[tuple[Partition, Parked]]:
        """The dead heads of ``parts``' lanes."""
        return [(part, lane[0]) for part in parts for lane in list(part.parked.values())
                if lane and lane[0].dead]

    async def _check_loop(self) -> None:
        refreshed = caught_up = time.monotonic()
        while True:
            await asyncio.sleep(CHECK_INTERVAL)
            try:
                if self.park_dead:
                    await self.check_dead()
                if self._read_to is not None and \
                        time.monotonic() - caught_up >= CATCH_UP_INTERVAL:
                    caught_up = time.monotonic()
                    await self.catch_up({p.tp for p in self._consumer.partitions()})
                if time.monotonic() - refreshed >= REFRESH_INTERVAL:
                    refreshed = time.monotonic()
                    await self.refresh()
            except TransportError as exc:
                log.warning("could not look after the parked keys of %s: %s", self._group, exc)

    async def refresh(self) -> None:
        """Write again the whole state of each parked message of the partitions owned
        here whose state was last written ``REFRESH_AGE`` seconds ago or more, so that
        the park log's retention (a week by default) never forgets one."""
        cutoff = time.time() - REFRESH_AGE
        for part in self._consumer.partitions():
            stale = [e for lane in list(part.parked.values()) for e in lane
                     if e.written <= cutoff]
            if stale and part.accepting:
                events = []
                for entry in stale:
                    events.append(_event(self._group, "park", entry, full=True))
                    if entry.dead:
                        events.append(_event(self._group, "dead", entry))
                await self._transport.append(events)
                now = time.time()
                for entry in stale:
                    entry.written = now

    async def check_dead(self) -> None:
        """Release each dead head whose dead letter is no longer pending and was not
        re-driven (its re-driven copy is on its way otherwise)."""
        heads = self.dead_heads(self._consumer.partitions())
        topics = {head.record.topic for _, head in heads}
        waiting = {head.id for _, head in heads}  # what no longer waits is forgotten
        self._redriven_since = {k: v for k, v in self._redriven_since.items() if k in waiting}
        self._scans = {t: scan for t, scan in self._scans.items() if t in topics}
        for topic in topics:
            scan = self._scans.get(topic)
            if scan is None:
                scan = self._scans[topic] = DeadLetterScan(topic)
            status = await scan.status(self._transport)
            for part, head in heads:
                if head.record.topic != topic or not part.accepting:
                    continue
                record = head.record
                state = status.get((self._group, record.partition, record.offset))
                if state == "redriven":
                    # Its copy is on its way; one that never comes (it went to another
                    # partition: the topic's partitions changed) must not hold the key.
                    seen = self._redriven_since.setdefault(head.id, time.monotonic())
                    if time.monotonic() - seen < REDRIVE_GRACE:
                        continue
                if state == "pending":
                    continue
                if state == "purged":
                    log.info("the dead letter of %s was purged: key %r goes on",
                             head.id, record.key)
                elif state == "redriven":
                    log.warning("the re-driven copy of %s never reached key %r of %s: "
                                "releasing the key", head.id, record.key, part.tp)
                else:
                    log.warning("the dead letter of %s is gone from %s.dlq (deleted by "
                                "hand?): releasing key %r", head.id, topic, record.key)
                await self._transport.append([_event(self._group, "done", head)])
                self._index.finish(head.id)
                self._wake(part, head.lane)

