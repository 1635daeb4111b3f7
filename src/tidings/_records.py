"""Plain value types shared by the core and every backend.

:class:`Record`, :class:`OutRecord` and :class:`Position` are made once per message on
the hot paths, so they are plain slotted dataclasses rather than frozen ones (whose
``__init__`` costs four times as much); treat them as read-only all the same.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from ._errors import MessageTooLargeError

__all__ = [
    "GroupInfo",
    "MemberInfo",
    "OutRecord",
    "Position",
    "Record",
    "Start",
    "TopicInfo",
    "TopicPartition",
    "check_record_bytes",
    "within_bytes",
]

_NO_HEADERS: Mapping[str, str] = {}


class TopicPartition(NamedTuple):
    """One partition of one topic."""

    topic: str
    partition: int


class Start(enum.StrEnum):
    """Where a consumer with no committed offset begins."""

    EARLIEST = "earliest"
    LATEST = "latest"


@dataclass(slots=True)
class Record:
    """A record as stored in a partition of the log."""

    topic: str
    partition: int
    offset: int
    key: str | None
    value: bytes
    headers: Mapping[str, str]
    timestamp: float  # seconds since the epoch, when the record entered the log


@dataclass(slots=True)
class OutRecord:
    """A record to append. ``deliver_at`` (epoch seconds) delays it durably."""

    topic: str
    value: bytes
    key: str | None = None
    headers: Mapping[str, str] = field(default_factory=lambda: _NO_HEADERS)
    partition: int | None = None
    deliver_at: float | None = None


@dataclass(slots=True, unsafe_hash=True)  # hashable, as it was when frozen
class Position:
    """Where an appended record landed; ``offset`` is None while it is scheduled."""

    topic: str
    partition: int | None
    offset: int | None


@dataclass(frozen=True, slots=True)
class TopicInfo:
    """A topic's partition count and, per partition, its first and next offsets."""

    name: str
    partitions: int
    start_offsets: Mapping[int, int]
    end_offsets: Mapping[int, int]


@dataclass(frozen=True, slots=True)
class MemberInfo:
    """One live member of a consumer group and the partitions it owns."""

    member_id: str
    client: str
    assignment: tuple[TopicPartition, ...]


@dataclass(frozen=True, slots=True)
class GroupInfo:
    """A consumer group: its live members and committed offsets (next offset to read)."""

    name: str
    members: tuple[MemberInfo, ...]
    committed: Mapping[TopicPartition, int]


def within_bytes(records: list[Record], budget: int, first: bool) -> tuple[list[Record], int]:
    """The leading ``records`` whose values fit in ``budget`` bytes, and their bytes:
    for a transport's ``fetch(max_bytes=)``. With ``first`` (nothing taken yet in this
    fetch) the first record is kept whatever its size, so a large record is delivered."""
    used = 0
    for index, record in enumerate(records):
        size = len(record.value)
        if used + size > budget and (index or not first):
            return records[:index], used
        used += size
    return records, used


def check_record_bytes(records: Sequence[OutRecord], max_bytes: int, where: str) -> None:
    """Refuse (MessageTooLargeError), before anything is written, a record whose value,
    key and headers take more than ``max_bytes``."""
    for record in records:
        # The common case first: a quick upper bound (UTF-8 takes at most 4 bytes a
        # character); a plain loop, as it runs once per record appended.
        chars = len(record.key or "")
        for name, value in record.headers.items():
            chars += len(name) + len(value)
        size = len(record.value)
        if size + 4 * chars <= max_bytes:
            continue
        size += len((record.key or "").encode()) + sum(
            len(name.encode()) + len(value.encode()) for name, value in record.headers.items())
        if size > max_bytes:
            raise MessageTooLargeError(
                f"record of {size} bytes for topic {record.topic!r} exceeds {where}'s "
                f"max_record_bytes={max_bytes}")
