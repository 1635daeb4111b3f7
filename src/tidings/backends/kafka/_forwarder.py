"""The delay forwarder: moves due records out of the delay tiers (see ``_delay``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from confluent_kafka import Consumer
from confluent_kafka import TopicPartition as KafkaPartition

from ..._errors import TransportError
from ..._records import OutRecord, Position, Record, TopicPartition
from . import _delay
from ._convert import take, to_records
from ._leave import JoinState, close_when_settled
from ._settings import KafkaSettings
from ._thread import DriverThread
from ._translate import driver_errors

__all__ = ["DelayForwarder"]

log = logging.getLogger("tidings.kafka")

T = TypeVar("T")

Send = Callable[[Sequence[OutRecord]], Awaitable[Sequence[Position]]]
EnsureTopics = Callable[[Sequence[str], int], Awaitable[object]]

_IDLE = 0.5  # longest wait for new tier records
_FETCH_WAIT_MS = 100  # tier reads are not latency-critical: spare the broker
_FIRST = _delay.TIERS[0].topic
_READ_AHEAD = 10_000  # records of the first tier held in memory, at most


class DelayForwarder:
    """A member of the internal delay group that forwards tier records when due."""

    def __init__(self, settings: KafkaSettings, send: Send, ensure_topics: EnsureTopics) -> None:
        self._settings = settings
        self._send = send
        self._ensure_topics = ensure_topics
        self._held: dict[TopicPartition, list[Record]] = {}
        self._next: dict[TopicPartition, int] = {}
        self._paused: set[TopicPartition] = set()
        self._thread: DriverThread | None = None
        self._consumer: Consumer | None = None
        self._stopping = False
        self._join = JoinState()

    async def run(self) -> None:
        """Forward until :meth:`stop`; broker errors are logged and retried."""
        while not self._stopping:
            try:
                if self._consumer is None:
                    await self._open()
                await self._step()
            except TransportError as exc:
                log.warning("delay forwarder: %s; retrying in 1 s", exc)
                await asyncio.sleep(1.0)

    async def _open(self) -> None:
        topics = _delay.tier_topics()
        await self._ensure_topics(topics, 1)
        config = self._settings.consumer_config(self._settings.delay_group, "earliest")
        config["fetch.wait.max.ms"] = _FETCH_WAIT_MS
        config["client.id"] = f"{self._settings.client_id}-delay"
        thread = self._thread = DriverThread("tidings-kafka-delay")
        with driver_errors("delay forwarder"):
            consumer = await thread.call(lambda: Consumer(config))
            await thread.call(lambda: consumer.subscribe(
                topics, on_assign=self._assigned, on_revoke=self._forget, on_lost=self._forget))
        self._consumer = consumer

    def _assigned(self, consumer: Consumer, partitions: list[KafkaPartition]) -> None:
        log.debug("delay forwarder assigned %d tier partition(s)", len(partitions))
        self._join.assigned()

    def _forget(self, consumer: Consumer, partitions: list[KafkaPartition]) -> None:
        """Rebalance callback (driver thread, while :meth:`_step` awaits consume)."""
        log.debug("delay forwarder revoked %d tier partition(s)", len(partitions))
        self._join.rebalancing()
        for kp in partitions:
            tp = TopicPartition(kp.topic, kp.partition)
            self._held.pop(tp, None)
            self._next.pop(tp, None)
            self._paused.discard(tp)

    async def _call(self, what: str, function: Callable[[Consumer], T]) -> T:
        thread, consumer = self._thread, self._consumer
        assert thread is not None
        assert consumer is not None
        with driver_errors(what):
            return await thread.call(lambda: function(consumer))

    async def _step(self) -> None:
        wait = self._wait()
        messages = await self._call("delay forwarder", lambda c: take(c, 500, wait))
        for record in to_records(messages, "delay forwarder"):
            tp = TopicPartition(record.topic, record.partition)
            self._held.setdefault(tp, []).append(record)
            self._next[tp] = record.offset + 1
        due, commits = self._take_due(_delay.now())
        await self._pause_waiting()
        if due:
            await self._forward(due, commits)
        await self._resume_drained()

    def _wait(self) -> float:
        releases = [_delay.release_at(r) for held in self._held.values() for r in held]
        if not releases:
            return _IDLE
        return min(max(min(releases) - _delay.now(), 0.0), _IDLE)

    def _take_due(self, now: float) -> tuple[list[Record], dict[TopicPartition, int]]:
        """Due records, earliest first, and per partition the offset now safe to commit
        (the first record still held, or the next one to read)."""
        due: list[Record] = []
        commits: dict[TopicPartition, int] = {}
        for tp, held in self._held.items():
            ready = [r for r in held if _delay.release_at(r) <= now]
            if not ready:
                continue
            held[:] = [r for r in held if _delay.release_at(r) > now]
            due += ready
            commits[tp] = held[0].offset if held else self._next[tp]
        due.sort(key=lambda r: (_delay.release_at(r), r.offset))
        return due, commits

    async def _forward(self, due: list[Record], commits: dict[TopicPartition, int]) -> None:
        now = _delay.now()
        outgoing = []
        for record in due:
            out = _delay.forward(record, now)
            if out.topic:
                outgoing.append(out)
            else:
                log.error("dropping malformed delay record %s[%d]@%d",
                          record.topic, record.partition, record.offset)
        try:
            await self._send(outgoing)
        except BaseException:
            for record in due:  # hold them again; the next step retries
                tp = TopicPartition(record.topic, record.partition)
                self._held.setdefault(tp, []).append(record)
            for held in self._held.values():
                held.sort(key=lambda r: r.offset)
            raise
        offsets = [KafkaPartition(tp.topic, tp.partition, o) for tp, o in commits.items()]
        try:
            await self._call("delay commit", lambda c: c.commit(offsets=offsets,
                                                                asynchronous=False))
        except TransportError as exc:  # rebalanced meanwhile: the new owner forwards again
            log.info("delay forwarder commit failed (%s); records may be forwarded twice", exc)

    async def _pause_waiting(self) -> None:
        """Stop reading partitions whose held records already reach past due ones: in
        every tier but the first, release times grow with the offset, so the head is
        enough; the first tier (mixed sub-second delays) reads ahead up to a bound."""
        waiting = [
            tp for tp, held in self._held.items()
            if tp not in self._paused
            and held and (tp.topic != _FIRST or len(held) >= _READ_AHEAD)
        ]
        if waiting:
            parts = [KafkaPartition(tp.topic, tp.partition) for tp in waiting]
            await self._call("delay pause", lambda c: c.pause(parts))
            self._paused.update(waiting)

    async def _resume_drained(self) -> None:
        drained = [tp for tp in self._paused if not self._held.get(tp)]
        if drained:
            parts = [KafkaPartition(tp.topic, tp.partition) for tp in drained]
            await self._call("delay resume", lambda c: c.resume(parts))
            self._paused.difference_update(drained)

    def stop(self) -> None:
        """Ask :meth:`run` to return after its current step."""
        self._stopping = True

    async def close(self) -> None:
        """Leave the delay group and stop the driver thread."""
        self._stopping = True
        thread, consumer = self._thread, self._consumer
        self._thread = self._consumer = None
        if thread is not None and consumer is not None:
            limit = 2 * self._settings.session_timeout + 1
            quiet = self._settings.heartbeat_ms() / 1000 + 0.1
            with contextlib.suppress(TransportError), driver_errors("delay close"):
                await thread.call(
                    lambda: close_when_settled(consumer, self._join, limit, quiet))
            thread.stop()
