"""What exactly-once handlers published waits for its offset's commit (pure logic)."""

from __future__ import annotations

from tidings._records import OutRecord, TopicPartition
from tidings._transaction import HeldOutputs, records_of

TP, OTHER = TopicPartition("orders", 0), TopicPartition("orders", 1)


def out(name: str) -> OutRecord:
    return OutRecord("invoices", name.encode())


def test_a_commit_carries_the_outputs_below_its_offsets_in_offset_order() -> None:
    held = HeldOutputs()
    held.add(TP, 7, [out("seven")])  # handlers finish out of order with concurrency
    held.add(TP, 5, [out("five-a"), out("five-b")])
    held.add(TP, 9, [out("nine")])
    held.add(OTHER, 0, [out("other")])
    entries = held.before({TP: 8})
    assert [r.value for r in records_of(entries)] == [b"five-a", b"five-b", b"seven"]
    held.release({TP: 8}, entries)
    assert [r.value for r in records_of(held.before({TP: 100, OTHER: 1}))] == [
        b"nine", b"other"]


def test_outputs_of_lost_partitions_are_dropped_and_a_failed_commit_keeps_them() -> None:
    held = HeldOutputs()
    held.add(TP, 0, [out("zero")])
    held.add(OTHER, 0, [out("other")])
    assert records_of(held.before({TP: 1}))  # a commit that fails releases nothing
    held.drop([OTHER])
    assert [r.value for r in records_of(held.before({TP: 1, OTHER: 1}))] == [b"zero"]
