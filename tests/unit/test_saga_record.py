"""SagaRecord.replace (generated for speed) copies every field, applies the changes,
leaves the original alone and refuses a field the record does not have."""

from __future__ import annotations

import dataclasses

import pytest

from tidings.saga import Direction, SagaRecord, SagaStatus


def test_replace_copies_every_field_and_applies_only_the_changes() -> None:
    record = SagaRecord("s-1", "order", SagaStatus.RUNNING, Direction.FORWARD, '{"n":1}',
                        step=2, attempts=1, error="e", version=4, owner="me",
                        lease_until=9.0, created_at=1.0, updated_at=2.0, wake_at=3.0,
                        deadline=4.0, branches="[]")
    changed = record.replace(version=5, owner=None, branches=None)
    assert changed is not record
    assert dataclasses.asdict(changed) == {**dataclasses.asdict(record), "version": 5,
                                           "owner": None, "branches": None}
    assert (record.version, record.owner, record.branches) == (4, "me", "[]")
    assert record.replace() == record and record.replace() is not record
    with pytest.raises(dataclasses.FrozenInstanceError):
        changed.version = 6  # type: ignore[misc]
    with pytest.raises(TypeError, match="bogus"):
        record.replace(bogus=1)
