"""Dead letters: what a failed message becomes, and how to inspect and re-drive them.

A message that exhausts its retries (or cannot be decoded) is appended to
``<topic>.dlq`` with its original key, value and headers, plus headers naming the
group, the error and the attempt count. Re-driving appends it to its original topic
again, marked for the failed group only, and appends a small *resolution* record to the
dead-letter topic so the entry no longer shows as pending. Purging resolves every entry.

An entry whose dead-letter headers cannot be read (``tidings-dlq-attempts=lots``, written
by hand or by another tool) is skipped by :meth:`DeadLetters.pending` and re-driving, and
listed with the reason by :meth:`DeadLetters.malformed`; purging resolves it like any other.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from ._errors import ConfigurationError, UnknownTopicError
from ._message import Headers
from ._records import OutRecord, Position, Record
from .ports import Capability, Transport

__all__ = ["DeadLetter", "DeadLetters", "dead_letter_record", "dlq_topic", "parse_marks"]

_RESOLVES = Headers.DLQ_RESOLVES  # a resolution record: "partition:offset,..."
#: How a resolution record resolved its entries: "redrive" or "purge" (older: purge).
_RESOLUTION = "tidings-dlq-resolution"
#: On a re-driven copy: the position its dead letter came from ("topic/partition/offset"),
#: so a key parked behind that dead letter (``dead_letter="park-key"``) knows it.
REDRIVE_OF = "tidings-redrive-of"
_PAGE = 1000


def dlq_topic(topic: str) -> str:
    """The dead-letter topic of ``topic``."""
    return f"{topic}.dlq"


def not_for(record: Record, group: str | None) -> bool:
    """Whether a handler in ``group`` skips ``record``: a dead-letter resolution marker,
    or a message re-driven to another group (only the group that failed it sees it)."""
    headers = record.headers
    if _RESOLVES in headers:
        return True
    redrive = headers.get(Headers.REDRIVE_GROUP)
    return redrive is not None and redrive != group


def dead_letter_record(
    record: Record, group: str | None, exc: BaseException, attempts: int
) -> OutRecord:
    """The dead-letter record for ``record`` that failed in ``group`` with ``exc``."""
    headers = dict(record.headers)
    headers.pop(Headers.REDRIVE_GROUP, None)
    headers.pop(REDRIVE_OF, None)
    headers.update({
        Headers.DLQ_TOPIC: record.topic,
        Headers.DLQ_PARTITION: str(record.partition),
        Headers.DLQ_OFFSET: str(record.offset),
        Headers.DLQ_GROUP: group or "",
        Headers.DLQ_ERROR_TYPE: f"{type(exc).__module__}.{type(exc).__qualname__}",
        Headers.DLQ_ERROR_MESSAGE: str(exc)[:4000],
        Headers.DLQ_ATTEMPTS: str(attempts),
        Headers.DLQ_FAILED_AT: f"{time.time():.6f}",
    })
    return OutRecord(dlq_topic(record.topic), record.value, key=record.key, headers=headers)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One pending dead letter, as listed by :meth:`DeadLetters.pending`."""

    partition: int
    offset: int
    original_topic: str
    original_partition: int
    original_offset: int
    group: str
    error_type: str
    error_message: str
    attempts: int
    failed_at: float
    record: Record

    @classmethod
    def from_record(cls, record: Record) -> DeadLetter:
        """Read the dead-letter headers of ``record``; ValueError naming the header if one
        is malformed."""
        h = record.headers
        return cls(
            partition=record.partition,
            offset=record.offset,
            original_topic=h.get(Headers.DLQ_TOPIC, ""),
            original_partition=int(_header(h, Headers.DLQ_PARTITION, "-1", int)),
            original_offset=int(_header(h, Headers.DLQ_OFFSET, "-1", int)),
            group=h.get(Headers.DLQ_GROUP, ""),
            error_type=h.get(Headers.DLQ_ERROR_TYPE, ""),
            error_message=h.get(Headers.DLQ_ERROR_MESSAGE, ""),
            attempts=int(_header(h, Headers.DLQ_ATTEMPTS, "0", int)),
            failed_at=_header(h, Headers.DLQ_FAILED_AT, "0", float),
            record=record,
        )


def _header(headers: Mapping[str, str], name: str, default: str,
            kind: Callable[[str], float]) -> float:
    text = headers.get(name, default)
    try:
        value = kind(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        wanted = "an integer" if kind is int else "a time"
        raise ValueError(f"header {name}={text!r} is not {wanted}")
    return value


class DeadLetters:
    """Inspect, re-drive and purge the dead letters of one topic. Re-driven messages
    are appended with ``append`` (an app's, through its middleware), else directly."""

    def __init__(
        self, transport: Transport, topic: str,
        append: Callable[[list[OutRecord]], Awaitable[Sequence[Position]]] | None = None,
    ) -> None:
        self._transport = transport
        self._append = append or transport.append
        self.topic = topic
        self.dlq = topic if topic.endswith(".dlq") else dlq_topic(topic)

    async def pending(self) -> list[DeadLetter]:
        """Every pending (not re-driven, not purged) dead letter, oldest first per
        partition; those with malformed headers are left out (see :meth:`malformed`)."""
        return (await self._parsed())[0]

    async def malformed(self) -> list[tuple[Record, str]]:
        """The pending entries whose dead-letter headers cannot be read, each with why.
        They cannot be re-driven (their origin is unknown); :meth:`purge` resolves them."""
        return (await self._parsed())[1]

    async def _parsed(self) -> tuple[list[DeadLetter], list[tuple[Record, str]]]:
        entries, malformed = [], []
        for record in await self.pending_records():
            try:
                entries.append(DeadLetter.from_record(record))
            except ValueError as exc:
                malformed.append((record, str(exc)))
        return entries, malformed

    async def pending_records(self) -> list[Record]:
        """The records of the pending dead letters, unparsed (a console shows those
        whose headers are malformed as such), oldest first per partition."""
        entries: dict[tuple[int, int], Record] = {}
        resolved: set[tuple[int, int]] = set()
        for record in await self._records():
            marks = record.headers.get(_RESOLVES)
            if marks is None:
                entries[(record.partition, record.offset)] = record
            else:
                resolved.update(parse_marks(marks))
        return [entry for pos, entry in sorted(entries.items()) if pos not in resolved]

    async def get(self, partition: int, offset: int) -> DeadLetter:
        """One pending dead letter; LookupError if there is none at that position."""
        entries, malformed = await self._parsed()
        for entry in entries:
            if (entry.partition, entry.offset) == (partition, offset):
                return entry
        for record, reason in malformed:
            if (record.partition, record.offset) == (partition, offset):
                raise LookupError(f"the dead letter at {self.dlq}[{partition}]@{offset} is "
                                  f"malformed ({reason}): it can only be purged")
        raise LookupError(f"no pending dead letter at {self.dlq}[{partition}]@{offset}")

    async def redrive(self, entries: Iterable[DeadLetter] | None = None) -> int:
        """Append entries (default: all pending) to their original topics for their group
        only; then mark them resolved. Returns how many were re-driven."""
        chosen = list(await self.pending() if entries is None else entries)
        if not chosen:
            return 0
        await self._append([_redriven(entry) for entry in chosen])
        await self._resolve([(e.partition, e.offset) for e in chosen], "redrive")
        return len(chosen)

    async def purge(self, positions: Iterable[tuple[int, int]] | None = None) -> int:
        """Mark every pending entry (or those at ``(partition, offset)`` in ``positions``,
        even with malformed headers) resolved without re-driving it. Returns the count."""
        chosen = [(r.partition, r.offset) for r in await self.pending_records()]
        if positions is not None:
            chosen = sorted(set(chosen) & set(positions))
        await self._resolve(chosen, "purge")
        return len(chosen)

    async def _records(self) -> list[Record]:
        return await _dlq_records(self._transport, self.topic, self.dlq)

    async def _resolve(self, positions: list[tuple[int, int]], how: str) -> None:
        if not positions:
            return
        by_partition: dict[int, list[str]] = {}
        for partition, offset in positions:
            by_partition.setdefault(partition, []).append(f"{partition}:{offset}")
        await self._transport.append([
            OutRecord(self.dlq, b"", headers={_RESOLVES: ",".join(marks), _RESOLUTION: how},
                      partition=partition)
            for partition, marks in by_partition.items()
        ])


async def _dlq_records(transport: Transport, topic: str, dlq: str) -> list[Record]:
    """Every record of the dead-letter topic ``dlq`` (of ``topic``)."""
    if Capability.REPLAY not in transport.capabilities:
        raise ConfigurationError(
            f"the dead letters of {topic!r} cannot be listed on the "
            f"{transport.system} backend: it keeps no log to read back (no "
            f"{Capability.REPLAY.value!r} capability); subscribe to {dlq!r} instead")
    infos = {info.name: info for info in await transport.describe_topics()}
    info = infos.get(dlq)
    if info is None:
        raise UnknownTopicError(
            f"no dead-letter topic {dlq!r} (nothing failed on {topic!r})"
        )
    out: list[Record] = []
    for partition in range(info.partitions):
        offset = info.start_offsets.get(partition, 0)
        while True:
            page = await transport.read(dlq, partition, offset, _PAGE)
            out.extend(page)
            if len(page) < _PAGE:
                break
            offset = page[-1].offset + 1
    return out


def parse_marks(marks: str) -> set[tuple[int, int]]:
    """The ``(partition, offset)`` pairs a resolution record's header names."""
    out = set()
    for mark in marks.split(","):
        partition, _, offset = mark.partition(":")
        out.add((int(partition), int(offset)))
    return out


def _redriven(entry: DeadLetter) -> OutRecord:
    headers = {k: v for k, v in entry.record.headers.items() if not k.startswith("tidings-dlq-")}
    if entry.group:
        headers[Headers.REDRIVE_GROUP] = entry.group
    headers[REDRIVE_OF] = f"{entry.original_topic}/{entry.original_partition}/" \
                          f"{entry.original_offset}"
    record = entry.record
    return OutRecord(entry.original_topic, record.value, key=record.key, headers=headers)
