"""Delayed records (``deliver_at``) on Kafka, which has no timers: hierarchical delay tiers.

Design (durable, survives restarts, at-least-once):

* Each tier is an internal topic with a fixed hold time ``D``: ``__tidings_delay_1s``,
  ``_10s``, ``_1m``, ``_10m``, ``_1h``, ``_10h``. A record due in ``R`` seconds is appended
  (durably, before ``append`` returns) to the largest tier with ``D <= R`` (the 1 s
  tier when ``R < 1 s``). Its release time is ``min(deliver_at, now + D)``: since every
  record entered its tier with ``R >= D`` (but the 1 s tier's), release times grow with
  the offset, so a tier partition is consumed in order and only its head must be
  watched.
* Every transport runs a forwarder: a member of the internal group ``__tidings_delay``
  that reads the tiers and holds what it read in memory. A tier partition is paused
  while its head is not due (later records are due later still). The 1 s tier, whose
  sub-second records are not in release order, is read ahead (up to 10,000 records) and
  released in due order. Due records are appended to their target topic (or, when time
  remains, to the tier that fits the remaining delay); once those appends are
  acknowledged, the forwarder commits, per tier partition, the first offset still held.
* A record is never released early; it is late by about one forwarding hop (fetch wait
  + one append + one commit). A crash or rebalance between forwarding and committing
  forwards records again: delivery is at least once. Records with one key keep their
  order when their delays put them in the same tier.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from ..._records import OutRecord, Record

__all__ = ["TIERS", "Tier", "forward", "release_at", "route", "schedule", "tier_topics"]

PREFIX = "__tidings_delay_"
TARGET = "tidings-delay-topic"
DUE = "tidings-delay-at"
RELEASE = "tidings-delay-release"
PARTITION = "tidings-delay-partition"
_RESERVED = frozenset({TARGET, DUE, RELEASE, PARTITION})


class Tier:
    """One delay tier: an internal topic whose records are held ``seconds`` at most."""

    __slots__ = ("seconds", "topic")

    def __init__(self, seconds: float, label: str) -> None:
        self.seconds = seconds
        self.topic = PREFIX + label

    def __repr__(self) -> str:
        return f"Tier({self.topic!r})"


TIERS: tuple[Tier, ...] = (
    Tier(1, "1s"), Tier(10, "10s"), Tier(60, "1m"), Tier(600, "10m"),
    Tier(3600, "1h"), Tier(36_000, "10h"),
)


def tier_topics() -> list[str]:
    """The internal topics of every tier."""
    return [tier.topic for tier in TIERS]


def tier_for(remaining: float) -> Tier:
    """The largest tier that does not hold longer than ``remaining`` (the first if none)."""
    chosen = TIERS[0]
    for tier in TIERS:
        if tier.seconds <= remaining:
            chosen = tier
    return chosen


def schedule(record: OutRecord, deliver_at: float, now: float) -> OutRecord:
    """The tier record that holds ``record`` until ``deliver_at``."""
    tier = tier_for(deliver_at - now)
    headers = {k: v for k, v in record.headers.items() if k not in _RESERVED}
    headers[TARGET] = record.topic
    headers[DUE] = repr(deliver_at)
    headers[RELEASE] = repr(min(deliver_at, now + tier.seconds))
    if record.partition is not None:
        headers[PARTITION] = str(record.partition)
    return OutRecord(tier.topic, record.value, record.key, headers)


def release_at(record: Record) -> float:
    """When the forwarder may take ``record`` out of its tier."""
    return _float(record.headers, RELEASE)


def forward(record: Record, now: float) -> OutRecord:
    """Where a released tier record goes: its target topic, or a shorter tier."""
    headers = record.headers
    deliver_at = _float(headers, DUE)
    partition = int(headers[PARTITION]) if PARTITION in headers else None
    original = {k: v for k, v in headers.items() if k not in _RESERVED}
    target = OutRecord(headers.get(TARGET, ""), record.value, record.key, original, partition)
    if deliver_at > now:
        return schedule(target, deliver_at, now)
    return target


def route(record: OutRecord, now: float) -> OutRecord:
    """``record`` itself when due, else the tier record that holds it until it is."""
    if record.deliver_at is None or record.deliver_at <= now:
        return record
    return schedule(record, record.deliver_at, now)


def now() -> float:
    """Wall-clock time, as ``deliver_at`` uses (seconds since the epoch)."""
    return time.time()


def _float(headers: Mapping[str, str], name: str) -> float:
    try:
        return float(headers[name])
    except (KeyError, ValueError):
        return 0.0  # a malformed tier record is released at once rather than stuck
