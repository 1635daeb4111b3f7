"""What became of the dead letters of a topic, read incrementally.

A key parked behind a dead letter (``dead_letter="park-key"``) waits while that dead
letter is pending, and its member looks every few seconds. :class:`DeadLetterScan`
keeps what it has read of the dead-letter topic (each dead letter's origin, each
resolution) and reads only what was appended since; records gone from the front of a
partition (retention, or deleted by hand) are dropped from what it knows, a partition
that shrank (the topic deleted and made again) is read afresh, and every
:data:`FULL_EVERY` scans it reads everything again anyway.
"""

from __future__ import annotations

import contextlib

from ._dlq import _PAGE, _RESOLUTION, _RESOLVES, dlq_topic, parse_marks
from ._message import Headers
from ._records import Record
from .ports import Transport

__all__ = ["FULL_EVERY", "DeadLetterScan"]

#: A scan in this many reads the whole topic again, whatever it knows.
FULL_EVERY = 60

_Position = tuple[int, int]  # (partition, offset) in the dead-letter topic
_Origin = tuple[str, int, int]  # (group, original partition, original offset)
_RANK = {"pending": 2, "redriven": 1, "purged": 0}
_EVERYTHING = 1 << 62  # an offset above any


class DeadLetterScan:
    """The dead letters of ``topic``, kept up to date by :meth:`status`."""

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self.dlq = dlq_topic(topic)
        self.next: dict[int, int] = {}  #: per partition, the offset to read next
        self._start: dict[int, int] = {}  # per partition, its first offset when last read
        self._origins: dict[_Position, _Origin] = {}
        self._how: dict[_Position, str] = {}
        self.scans = 0

    async def status(self, transport: Transport) -> dict[_Origin, str]:
        """Per ``(group, original partition, original offset)`` of the dead letters
        of the topic: ``pending``, ``redriven`` or ``purged`` (one still pending wins,
        then a re-drive). A dead letter missing here was never written or is gone."""
        self.scans += 1
        info = next((i for i in await transport.describe_topics() if i.name == self.dlq), None)
        if info is None or self.scans % FULL_EVERY == 0:
            self._origins.clear()
            self._how.clear()
            self.next.clear()
            if info is None:
                return {}
        for partition in range(info.partitions):
            start = info.start_offsets.get(partition, 0)
            end = info.end_offsets.get(partition, 0)
            offset = self.next.get(partition, start)
            if end < offset:  # it shrank: the topic was made again
                self._drop(partition, _EVERYTHING)
                offset = start
            elif start > self._start.get(partition, start):  # gone from the front
                self._drop(partition, start)
            self._start[partition] = start
            offset = max(offset, start)
            while offset < end:
                page = await transport.read(self.dlq, partition, offset, _PAGE)
                if not page:
                    break
                for record in page:
                    self._learn(record)
                offset = page[-1].offset + 1
            self.next[partition] = offset
        status: dict[_Origin, str] = {}
        for position, origin in self._origins.items():
            state = self._how.get(position, "pending")
            if origin not in status or _RANK[state] > _RANK[status[origin]]:
                status[origin] = state
        return status

    def _learn(self, record: Record) -> None:
        h = record.headers
        marks = h.get(_RESOLVES)
        with contextlib.suppress(KeyError, ValueError):  # malformed: tells nothing
            if marks is not None:
                kind = "redriven" if h.get(_RESOLUTION) == "redrive" else "purged"
                self._how.update(dict.fromkeys(parse_marks(marks), kind))
                return
            self._origins[(record.partition, record.offset)] = (
                h.get(Headers.DLQ_GROUP, ""), int(h[Headers.DLQ_PARTITION]),
                int(h[Headers.DLQ_OFFSET]))

    def _drop(self, partition: int, below: int) -> None:
        """Forget what was read at ``partition``'s offsets below ``below``."""
        self._origins = {k: v for k, v in self._origins.items()
                         if k[0] != partition or k[1] >= below}
        self._how = {k: v for k, v in self._how.items() if k[0] != partition or k[1] >= below}

