"""Pure pieces, tested without I/O: retry decisions, offset tracking, assignment, codec."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
from pydantic import BaseModel

from tidings import ConfigurationError, DecodeError, RetryPolicy, SerializationError
from tidings._assignment import desired_assignment
from tidings._codec import decoder_for, encode
from tidings._offsets import OffsetTracker
from tidings._retry import DeadLetter, Retry


def test_backoff_grows_exponentially_and_is_capped() -> None:
    policy = RetryPolicy(max_attempts=10, backoff=0.1, multiplier=2, max_backoff=1, jitter=0)
    delays = [policy.delay_for(n) for n in range(1, 7)]
    assert delays == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])


def test_jitter_reduces_the_delay_by_at_most_its_fraction() -> None:
    policy = RetryPolicy(backoff=1, jitter=0.5)
    assert policy.delay_for(1, rand=lambda: 0.0) == 1.0
    assert policy.delay_for(1, rand=lambda: 1.0) == 0.5


def test_decisions() -> None:
    policy = RetryPolicy(max_attempts=3, backoff=0.1, jitter=0, give_up_on=(KeyError,))
    assert policy.decide(1, ValueError()) == Retry(0.1)
    assert isinstance(policy.decide(3, ValueError()), DeadLetter)
    assert isinstance(policy.decide(1, KeyError()), DeadLetter)
    assert isinstance(policy.decide(1, DecodeError("bad")), DeadLetter)
    assert isinstance(RetryPolicy.never().decide(1, ValueError()), DeadLetter)


@pytest.mark.parametrize("kwargs", [{"max_attempts": 0}, {"backoff": -1}, {"jitter": 2},
                                    {"multiplier": 0.5}])
def test_invalid_policies_fail_when_built(kwargs: dict) -> None:
    with pytest.raises(ConfigurationError):
        RetryPolicy(**kwargs)


def test_offset_tracker_commits_only_the_finished_prefix() -> None:
    tracker = OffsetTracker()
    for offset in (10, 11, 12, 13):
        tracker.add(offset)
    tracker.finish(12)
    assert tracker.commit_point == -1
    tracker.finish(10)
    assert tracker.commit_point == 11
    tracker.finish(11)
    assert tracker.commit_point == 13
    tracker.finish(13)
    assert tracker.commit_point == 14 and tracker.dirty
    tracker.committed = 14
    assert not tracker.dirty


def test_assignment_is_deterministic_balanced_and_complete() -> None:
    members = {"b": {"t"}, "a": {"t", "u"}, "c": {"t"}}
    result = desired_assignment(members, {"t": 6, "u": 2})
    assert result == desired_assignment(dict(reversed(members.items())), {"t": 6, "u": 2})
    per_member = [len([tp for tp in parts if tp.topic == "t"]) for parts in result.values()]
    assert sorted(per_member) == [2, 2, 2]
    assert {tp.partition for tp in result["a"] if tp.topic == "u"} == {0, 1}
    owned = [tp for parts in result.values() for tp in parts]
    assert len(owned) == len(set(owned)) == 8


class Order(BaseModel):
    id: uuid.UUID
    at: dt.datetime
    total: float


def test_codec_round_trips_models_and_json_values() -> None:
    order = Order(id=uuid.uuid4(), at=dt.datetime.now(dt.UTC), total=9.5)
    raw, content_type = encode(order)
    assert content_type == "application/json"
    assert decoder_for(Order)(raw) == order
    assert decoder_for(dict)(encode({"a": [1, 2]})[0]) == {"a": [1, 2]}
    assert decoder_for(list[int])(b"[1,2]") == [1, 2]
    assert encode(b"\x00") == (b"\x00", "application/octet-stream")
    assert decoder_for(bytes)(b"\x00") == b"\x00"


def test_codec_errors_are_clear() -> None:
    with pytest.raises(SerializationError, match="set"):
        encode({1, 2} | {object()})
    with pytest.raises(DecodeError, match="total"):
        decoder_for(Order)(b'{"id": "not-a-uuid"}')
    with pytest.raises(DecodeError):
        decoder_for(dict)(b"[1]")
