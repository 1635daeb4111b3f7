"""Leaving a consumer group safely: never while a join is in flight.

tansu 0.6 keeps a member that sends LeaveGroup while its JoinGroup is still pending in
the next generation, even as its leader; every later member then waits forever for
that leader's assignment (SyncGroup answers "rebalance in progress" in a loop), and the
group is stuck until the broker restarts. So a member that is still joining first
finishes the join (serving callbacks, dropping any records it fetches: they stay
uncommitted and go to the next owner), then leaves. Real Kafka brokers do not need
this; it costs at most one join (about a second) on an early close.
"""

from __future__ import annotations

import logging
import time

from confluent_kafka import Consumer

__all__ = ["JoinState", "close_when_settled"]

log = logging.getLogger("tidings.kafka")


class JoinState:
    """Whether a member's latest rebalance finished (it received an assignment)."""

    __slots__ = ("ever", "settled")

    def __init__(self) -> None:
        self.settled = False
        self.ever = False  # whether any join finished yet

    def assigned(self) -> None:
        """Called from ``on_assign``: the join finished."""
        self.settled = self.ever = True

    def rebalancing(self) -> None:
        """Called from ``on_revoke``/``on_lost``: a new join follows."""
        self.settled = False


def close_when_settled(
    consumer: Consumer, state: JoinState | None, limit: float, quiet: float
) -> None:
    """Blocking (driver thread): close once the member has been settled for ``quiet``
    seconds (one heartbeat: a rebalance the broker started meanwhile is then known and
    joined first), giving up after ``limit`` seconds."""
    deadline = time.monotonic() + limit
    calm_since = time.monotonic()
    while state is not None and time.monotonic() < deadline:
        if not state.settled:
            calm_since = time.monotonic()
        elif time.monotonic() - calm_since >= quiet:
            break
        consumer.poll(0.05)  # serves rebalance callbacks; fetched records stay uncommitted
    if state is not None and not state.settled:
        log.warning("leaving a consumer group whose join did not finish in %.1f s", limit)
    consumer.close()
