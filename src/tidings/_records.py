"""Plain value types shared by the core and every backend.

:class:`Record`, :class:`OutRecord` and :class:`Position` are made once per message on
the hot paths, so they are plain slotted dataclasses rather than frozen ones (whose
``__init__`` costs four times as much); treat them as read-only all the same.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

__all__ = [
    "GroupInfo",
    "MemberInfo",
    "OutRecord",
    "Position",
    "Record",
    "Start",
    "TopicInfo",
    "TopicPartition",
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
