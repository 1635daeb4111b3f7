"""Exactly-once subscribers: what a handler publishes waits for its offset's commit.

While an exactly-once handler runs, ``App.publish`` (and ``publish_many``, ``enqueue``,
dead letters) only *hold* records in a list bound to the running task. When the handler
succeeds, the consumer keeps them with the record's offset; when that offset is
committed, the records go with it through
:meth:`~tidings.ports.TransactionalSubscription.commit_appending`, in one transaction.
A failed attempt's records are dropped, so a retry or a redelivery after a crash
publishes them once.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from contextvars import ContextVar

from ._records import OutRecord, Position, TopicPartition

__all__ = [
    "HeldOutputs",
    "discard_held",
    "held_outputs",
    "hold",
    "records_of",
]

#: The records the running exactly-once handler published so far (None elsewhere).
held_outputs: ContextVar[list[OutRecord] | None] = ContextVar("tidings_held", default=None)

_Entry = tuple[int, list[OutRecord]]  # the handled record's offset, what it published


class HeldOutputs:
    """Per partition, the records finished handlers published, until their commit."""

    __slots__ = ("_by_partition",)

    def __init__(self) -> None:
        self._by_partition: dict[TopicPartition, list[_Entry]] = {}

    def add(self, tp: TopicPartition, offset: int, records: list[OutRecord]) -> None:
        """The record at ``offset`` finished, having published ``records``."""
        self._by_partition.setdefault(tp, []).append((offset, records))

    def before(self, offsets: Mapping[TopicPartition, int]) -> list[_Entry]:
        """The entries a commit of ``offsets`` covers, in offset order per partition."""
        covered: list[_Entry] = []
        for tp, end in offsets.items():
            covered += sorted((e for e in self._by_partition.get(tp, ()) if e[0] < end),
                              key=lambda e: e[0])
        return covered

    def release(self, offsets: Mapping[TopicPartition, int], entries: list[_Entry]) -> None:
        """Forget ``entries``: they were committed with ``offsets``."""
        gone = {id(entry) for entry in entries}
        for tp in offsets:
            kept = [e for e in self._by_partition.get(tp, ()) if id(e) not in gone]
            if kept:
                self._by_partition[tp] = kept
            else:
                self._by_partition.pop(tp, None)

    def drop(self, partitions: Collection[TopicPartition]) -> None:
        """Partitions left this member: their uncommitted outputs are void."""
        for tp in partitions:
            self._by_partition.pop(tp, None)


def records_of(entries: list[_Entry]) -> list[OutRecord]:
    """The records of ``entries``, in order."""
    return [record for _, records in entries for record in records]


def hold(records: list[OutRecord]) -> list[Position] | None:
    """Inside an exactly-once handler, keep ``records`` for its commit and return their
    positions (unknown until then); elsewhere None."""
    held = held_outputs.get()
    if held is None:
        return None
    held.extend(records)
    return [Position(record.topic, None, None) for record in records]


def discard_held() -> None:
    """The running attempt failed: what it published so far is void."""
    held = held_outputs.get()
    if held is not None:
        held.clear()
