"""The park log of a consumer group: its events, and what they say is parked.

``tidings.parked.<group>`` is an ordinary topic of one partition (so one order for every
event). Events: ``park`` (a message joins its key's lane, with its whole record, its
next attempt and due time), ``attempt`` (the head failed: its next attempt and due
time), ``dead``, ``revive`` (a re-driven copy replaces a dead head) and ``done`` (the
head finished). Applying them is idempotent (a member reads its own back), and a lane
is in its messages' offset order whatever order its events are read in. The runtime
that writes them is :mod:`tidings._parking`; the CLI and the console read them here.
"""

from __future__ import annotations

import contextlib
import logging
from collections import deque
from collections.abc import Callable, Collection
from dataclasses import dataclass, replace
from datetime import datetime

from ._records import OutRecord, Record, TopicPartition
from .ports import Transport

__all__ = ["ParkIndex", "Parked", "ParkedKey", "entry_id", "event_partition", "event_record",
           "fill", "park_topic", "parked_keys", "read_log", "read_parked"]

log = logging.getLogger("tidings.consumer")

_EVENT = "tidings-park-event"
_ID = "tidings-park-id"
_TOPIC = "tidings-park-topic"
_PARTITION = "tidings-park-partition"
_OFFSET = "tidings-park-offset"
_KEY = "tidings-park-key"
_TIMESTAMP = "tidings-park-timestamp"
_ATTEMPT = "tidings-park-attempt"
_DUE = "tidings-park-due"
_PAGE = 1000


def park_topic(group: str) -> str:
    """The park log of consumer group ``group``."""
    return f"tidings.parked.{group}"


@dataclass(slots=True)
class Parked:
    """One parked message: the record to run, its next attempt and when it is due (a
    wall-clock time; 0 for "when it reaches the head"), or ``dead``."""

    id: str
    record: Record
    attempt: int
    due: float
    dead: bool = False
    written: float = 0.0  # when the park log last got its whole state (see refresh)
    #: Where in the park log its whole state was last read (-1: not read back yet).
    at: int = -1
    #: Its record's value and headers are left in the park log (at ``at``): a member
    #: keeps them only for the partitions it owns (see :meth:`ParkIndex.hollow_out`).
    hollow: bool = False

    @property
    def lane(self) -> str:
        """Its lane: its key (a record without a key is a lane of its own)."""
        return self.record.key if self.record.key is not None else "\0" + self.id


def entry_id(record: Record) -> str:
    """The park id of ``record``: its position (``/`` is in no topic name)."""
    return f"{record.topic}/{record.partition}/{record.offset}"


class ParkIndex:
    """What the park log says is parked, per partition and lane, in order."""

    def __init__(self) -> None:
        self.lanes: dict[TopicPartition, dict[str, deque[Parked]]] = {}
        self.entries: dict[str, Parked] = {}
        #: The entries finished, so that their older events read later do not bring
        #: them back, each with the read generation it was finished in: once a read
        #: that began after that has reached the log's end, those events are behind
        #: every later read, and the id is forgotten (see :meth:`begin_read`).
        self.finished: dict[str, int] = {}
        self._generation = 0

    def of(self, tp: TopicPartition) -> dict[str, deque[Parked]]:
        """The lanes of ``tp`` (the same dict each time: a partition shares it)."""
        lanes = self.lanes.get(tp)
        if lanes is None:
            lanes = self.lanes[tp] = {}
        return lanes

    def add(self, entry: Parked) -> bool:
        """Put ``entry`` at the back of its lane; False if it is known or finished."""
        if entry.id in self.entries or entry.id in self.finished:
            return False
        self.entries[entry.id] = entry
        tp = TopicPartition(entry.record.topic, entry.record.partition)
        lane = self.of(tp).setdefault(entry.lane, deque())
        # A lane's order is its messages' offset order (a revived head keeps the id,
        # so the place, of the message it replaced), whatever order events are read
        # in: after retention deleted a lane's first events, refreshed ones come later.
        at = len(lane)
        while at and _offset_of(lane[at - 1].id) > _offset_of(entry.id):
            at -= 1
        lane.insert(at, entry)
        return True

    def begin_read(self) -> int:
        """A read of the log to its end begins: its generation, for :meth:`read_done`."""
        self._generation += 1
        return self._generation

    def read_done(self, generation: int) -> None:
        """The read of ``generation`` reached the log's end: every event of an entry
        finished before it began was read (its "done" event was appended first), and
        the next read starts after them all, so those entries are forgotten."""
        self.finished = {eid: gen for eid, gen in self.finished.items() if gen >= generation}

    def finish(self, entry_id: str) -> Parked | None:
        """Take the entry out of its lane (a lane left empty goes)."""
        self.finished[entry_id] = self._generation
        entry = self.entries.pop(entry_id, None)
        if entry is None:
            return None
        lanes = self.of(TopicPartition(entry.record.topic, entry.record.partition))
        lane = lanes.get(entry.lane)
        if lane is not None:
            with contextlib.suppress(ValueError):
                lane.remove(entry)
            if not lane:
                del lanes[entry.lane]
        return entry

    def apply(self, event: Record) -> None:
        """Apply one event of the park log (idempotent: a later state is kept)."""
        h = event.headers
        kind, eid = h.get(_EVENT), h.get(_ID, "")
        if kind == "park":
            _offset_of(eid)  # a malformed id fails here, not when it is sorted
            self.add(Parked(eid, _record_of(event), int(h[_ATTEMPT]), float(h[_DUE]),
                            written=event.timestamp, at=event.offset))
            if (entry := self.entries.get(eid)) is not None:
                entry.written = max(entry.written, event.timestamp)
                entry.at = max(entry.at, event.offset)
        elif kind == "done":
            self.finish(eid)
        elif (entry := self.entries.get(eid)) is None:
            return  # about an entry finished since
        elif kind == "attempt" and int(h[_ATTEMPT]) >= entry.attempt:
            entry.attempt, entry.due, entry.dead = int(h[_ATTEMPT]), float(h[_DUE]), False
        elif kind == "dead":
            entry.dead = True
        elif kind == "revive":
            entry.record, entry.attempt, entry.due, entry.dead = _record_of(event), 1, 0.0, False
            entry.at, entry.hollow = max(entry.at, event.offset), False

    def note_read(self, event: Record) -> None:
        """An event not applied (its partition's owner knows better) still tells where
        its entry's whole state is in the log."""
        if event.headers.get(_EVENT) in ("park", "revive"):
            entry = self.entries.get(event.headers.get(_ID, ""))
            if entry is not None:
                entry.at = max(entry.at, event.offset)

    def hollow_out(self, keep: Collection[TopicPartition]) -> None:
        """Leave in the park log the values and headers of the entries of partitions
        not in ``keep`` (this member does not run them). An entry not read back from
        the log yet keeps them until it is."""
        for tp, lanes in self.lanes.items():
            if tp in keep:
                continue
            for lane in lanes.values():
                for entry in lane:
                    if not entry.hollow and entry.at >= 0:
                        entry.record = replace(entry.record, value=b"", headers={})
                        entry.hollow = True

    def hollow(self, tp: TopicPartition) -> list[Parked]:
        """The entries of ``tp`` whose record is left in the log."""
        return [e for lane in self.lanes.get(tp, {}).values() for e in lane if e.hollow]


def event_partition(event: Record) -> TopicPartition | None:
    """The partition of the message a park-log event is about (None if malformed)."""
    head = event.headers.get(_ID, "").rpartition("/")[0]  # without the offset
    topic, _, partition = head.rpartition("/")
    try:
        return TopicPartition(topic, int(partition))
    except ValueError:
        return None


def _offset_of(eid: str) -> int:
    return int(eid.rsplit("/", 1)[1])


def _record_of(event: Record) -> Record:
    h = event.headers
    headers = {k: v for k, v in h.items() if not k.startswith("tidings-park-")}
    return Record(h[_TOPIC], int(h[_PARTITION]), int(h[_OFFSET]), h.get(_KEY), event.value,
                  headers, float(h[_TIMESTAMP]))


def event_record(group: str, kind: str, entry: Parked, *, full: bool = False) -> OutRecord:
    headers = {_EVENT: kind, _ID: entry.id, _ATTEMPT: str(entry.attempt),
               _DUE: f"{entry.due:.6f}"}
    value = b""
    if full:
        record = entry.record
        headers = {**record.headers, **headers, _TOPIC: record.topic,
                   _PARTITION: str(record.partition), _OFFSET: str(record.offset),
                   _TIMESTAMP: f"{record.timestamp:.6f}"}
        if record.key is not None:
            headers[_KEY] = record.key
        value = record.value
    return OutRecord(park_topic(group), value, key=entry.record.key, headers=headers,
                     partition=0)


async def read_log(transport: Transport, topic: str, start: int | None,
                   apply: Callable[[Record], None]) -> int:
    """Apply every record of ``topic``'s one partition from ``start`` (None: its first)
    to its end now; return the offset after the last one read."""
    infos = {info.name: info for info in await transport.describe_topics()}
    info = infos.get(topic)
    if info is None:
        return 0
    offset = info.start_offsets.get(0, 0) if start is None else start
    end = info.end_offsets.get(0, 0)
    while offset < end:
        page = await transport.read(topic, 0, offset, _PAGE)
        if not page:
            break
        for record in page:
            try:
                apply(record)
            except (KeyError, ValueError) as exc:
                log.warning("skipped a malformed event in %s@%d: %r", topic, record.offset, exc)
        offset = page[-1].offset + 1
    return offset


async def fill(transport: Transport, topic: str, entries: Collection[Parked]) -> None:
    """Read back from the park log ``topic`` the records of hollow ``entries``."""
    wanted = sorted({entry.at for entry in entries})
    found: dict[int, Record] = {}
    for offset in wanted:
        if offset in found:
            continue
        page = await transport.read(topic, 0, offset, min(_PAGE, wanted[-1] - offset + 1))
        found.update((event.offset, event) for event in page if event.offset in wanted)
    for entry in entries:
        event = found.get(entry.at)
        if event is not None and event.headers.get(_ID) == entry.id:
            try:
                entry.record = _record_of(event)
            except (KeyError, ValueError) as exc:
                log.warning("skipped a malformed event in %s@%d: %r", topic, entry.at, exc)
            else:
                entry.hollow = False
                continue
        await _fill_from_source(transport, topic, entry)


async def _fill_from_source(transport: Transport, topic: str, entry: Parked) -> None:
    """The park log lost ``entry``'s record (a retention shorter than its refresh):
    take it from the topic it was read from, if that still holds it."""
    where = entry.record
    page = await transport.read(where.topic, where.partition, where.offset, 1)
    source = next((record for record in page if record.offset == where.offset), None)
    if source is None:
        log.error("neither the park log %s nor %s[%d] holds the parked message %s any "
                  "more (both retentions passed): it runs with an empty value",
                  topic, where.topic, where.partition, entry.id)
        return
    log.warning("the park log %s no longer holds the parked message %s: it runs as "
                "read again from %s[%d]@%d", topic, entry.id, where.topic,
                where.partition, where.offset)
    entry.record = source
    entry.hollow = False


async def read_parked(transport: Transport, group: str) -> list[Parked]:
    """Every message parked in ``group`` now (for the CLI and the console), in order
    per partition and key."""
    index = ParkIndex()
    await read_log(transport, park_topic(group), None, index.apply)
    return [entry for lanes in index.lanes.values() for lane in lanes.values()
            for entry in lane]




@dataclass(frozen=True, slots=True)
class ParkedKey:
    """One parked key of a group (what ``tidings dlq parked`` and the console show):
    how many messages wait in its lane, and its head's state: ``dead`` (waiting for a
    re-drive or a purge), else its next ``attempt`` at ``due`` (0: now)."""

    group: str
    topic: str
    partition: int
    key: str | None
    count: int
    head: str
    attempt: int
    due: float
    dead: bool

    @property
    def waits_for(self) -> str:
        """What its head waits for, in words."""
        if self.dead:
            return "its dead letter (re-drive or purge it)"
        if self.due <= 0:
            return f"attempt {self.attempt} now"
        when = datetime.fromtimestamp(self.due).isoformat(timespec="seconds")
        return f"attempt {self.attempt} at {when}"


async def parked_keys(transport: Transport, group: str | None = None) -> list[ParkedKey]:
    """Every parked key of ``group`` (default: of every group with a park log)."""
    prefix = park_topic("")
    if group is None:
        groups = sorted(info.name[len(prefix):] for info in await transport.describe_topics()
                        if info.name.startswith(prefix))
    else:
        groups = [group]
    out: list[ParkedKey] = []
    for name in groups:
        index = ParkIndex()
        await read_log(transport, park_topic(name), None, index.apply)
        for tp, lanes in sorted(index.lanes.items()):
            for lane in lanes.values():
                if lane:
                    head = lane[0]
                    out.append(ParkedKey(name, tp.topic, tp.partition, head.record.key,
                                         len(lane), head.id, head.attempt, head.due,
                                         head.dead))
    return out
