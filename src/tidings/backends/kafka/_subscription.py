"""A consumer-group member (or a group-less reader) over a librdkafka consumer.

Rebalances are eager (``roundrobin`` or ``range`` assignor): librdkafka calls
``on_revoke`` for every owned partition before the group reassigns, and does not give
them up until the callback returns. The callback runs on the consumer's driver thread
inside ``consume()``; it runs ``listener.on_revoked`` on the event loop and waits for
it while serving the runtime's calls (its final ``commit``) on that same thread.
Cooperative-sticky rebalancing is not offered: against tansu 0.6 the incremental
assignment never reaches the new member.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from typing import Any, TypeVar

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message
from confluent_kafka import TopicPartition as KafkaPartition

from ..._errors import FencedError, TransportError
from ..._records import Record, Start, TopicPartition, within_bytes
from ...ports import RebalanceListener, Subscription
from ._convert import take, to_records
from ._leave import JoinState, close_when_settled
from ._settings import KafkaSettings
from ._thread import DriverThread
from ._translate import driver_errors, translate

__all__ = ["KafkaSubscription"]

log = logging.getLogger("tidings.kafka")

_SLICE = 0.1  # longest single consume(): calls queued behind it wait at most this long
_ids = itertools.count(1)
T = TypeVar("T")

EnsureTopics = Callable[[Sequence[str]], Awaitable[dict[str, int]]]
ErrorCallback = Callable[[KafkaError], None]
EndOffsets = Callable[
    [Sequence[TopicPartition]], Coroutine[Any, Any, dict[TopicPartition, int]]
]


class KafkaSubscription(Subscription):
    """One librdkafka consumer, driven from asyncio through its own driver thread."""

    def __init__(
        self,
        settings: KafkaSettings,
        group: str | None,
        topics: Sequence[str],
        listener: RebalanceListener,
        start: Start,
        client: str,
        ensure_topics: EnsureTopics,
        end_offsets: EndOffsets,
        *,
        on_error: ErrorCallback | None = None,
    ) -> None:
        self._settings = settings
        self._on_error = on_error  # librdkafka's error_cb (the transport's outage watch)
        self._group = group
        self._topics = list(dict.fromkeys(topics))
        self._listener = listener
        self._start = start
        self._client = client or settings.client_id
        self._ensure_topics = ensure_topics
        self._end_offsets = end_offsets
        self._owned: frozenset[TopicPartition] = frozenset()
        self._positions: Mapping[TopicPartition, int] = {}  # as of the last empty fetch
        self._rebalances = 0  # rebalance callbacks so far (driver thread)
        # Records consumed past a fetch's max_bytes, returned first by the next fetch
        # (librdkafka cannot put them back), and the rebalance count they belong to.
        self._leftover: list[Record] = []
        self._leftover_of = 0
        self._thread: DriverThread | None = None
        self._consumer: Consumer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._opening: asyncio.Task[None] | None = None
        self._closed = False
        self._abandoned = False
        self._join = JoinState() if group is not None else None
        with contextlib.suppress(RuntimeError):  # open early when a loop runs: pins LATEST
            self._opening = asyncio.get_running_loop().create_task(self._open())

    # -- opening -------------------------------------------------------------------

    async def _open(self) -> None:
        partitions = await self._ensure_topics(self._topics)
        self._loop = asyncio.get_running_loop()
        self._thread = DriverThread(f"tidings-kafka-consumer-{next(_ids)}")
        config = self._settings.consumer_config(self._group, self._start.value)
        config["client.id"] = self._client
        if self._on_error is not None:
            config["error_cb"] = self._on_error
        with driver_errors("subscribe"):
            self._consumer = await self._thread.call(lambda: Consumer(config))
        if self._group is not None:
            await self._call("subscribe", self._subscribe)
        else:
            await self._assign_everything(partitions)

    def _subscribe(self, consumer: Consumer) -> None:
        consumer.subscribe(
            self._topics, on_assign=self._on_assign, on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )

    async def _assign_everything(self, partitions: Mapping[str, int]) -> None:
        """Group-less: read every partition, from the start or from the current end."""
        wanted = [
            KafkaPartition(topic, p) for topic in self._topics for p in range(partitions[topic])
        ]
        if self._start is Start.EARLIEST:
            for tp in wanted:
                tp.offset = OFFSET_BEGINNING
        else:
            ends = await self._end_offsets([TopicPartition(kp.topic, kp.partition)
                                            for kp in wanted])
            for kp in wanted:
                kp.offset = ends[TopicPartition(kp.topic, kp.partition)]
        await self._call("subscribe", lambda c: c.assign(wanted))
        self._owned = frozenset(TopicPartition(tp.topic, tp.partition) for tp in wanted)

    async def _ready(self) -> Consumer | None:
        if self._opening is None:
            self._opening = asyncio.get_running_loop().create_task(self._open())
        opening = self._opening
        try:
            await opening
        except BaseException:
            if opening.done():  # a failed open is retried by the next call
                self._opening = None
            raise
        return None if self._closed else self._consumer

    async def _call(self, what: str, function: Callable[[Consumer], T]) -> T:
        consumer, thread = self._consumer, self._thread
        if consumer is None or thread is None:
            raise TransportError(f"{what}: the subscription is not open")
        with driver_errors(what):
            return await thread.call(lambda: function(consumer))

    # -- the port --------------------------------------------------------------------

    @property
    def topics(self) -> list[str]:
        """The topics this subscription reads."""
        return self._topics

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` (or :meth:`abandon`) was called."""
        return self._closed

    def assignment(self) -> frozenset[TopicPartition]:
        """The partitions this member owns now (as of its last rebalance callback)."""
        return self._owned

    async def fetch(self, max_records: int, timeout: float,
                    max_bytes: int | None = None) -> list[Record]:
        """Up to ``max_records`` records (values of at most ``max_bytes`` in all, or
        one record), waiting up to ``timeout`` seconds for some."""
        if self._leftover and self._leftover_of == self._rebalances:
            records, self._leftover = self._leftover, []
            return self._within(records, max_records, max_bytes)
        self._leftover = []  # a rebalance since: the partitions restart from their commits
        records = await self._fetch(max_records, timeout)
        return self._within(records, max_records, max_bytes) if records else records

    def _within(self, records: list[Record], max_records: int,
                max_bytes: int | None) -> list[Record]:
        """What fits in ``max_bytes`` (and ``max_records``); the rest is kept for later."""
        kept = records[:max_records]
        if max_bytes is not None:
            kept, _ = within_bytes(kept, max_bytes, True)
        if len(kept) < len(records):
            self._leftover, self._leftover_of = records[len(kept):], self._rebalances
        return kept

    async def _fetch(self, max_records: int, timeout: float) -> list[Record]:
        if await self._ready() is None:
            return []
        # A new member's first fetch returns once it joined, as the memory backend's does:
        # until then it owns nothing, and callers may rely on the assignment after it.
        deadline = time.monotonic() + timeout
        join_deadline = time.monotonic() + max(timeout, self._join_limit())
        while not self._closed:
            joined = self._join is None or self._join.ever
            until = deadline if joined else join_deadline
            wait = max(min(until - time.monotonic(), _SLICE), 0.0)
            records = await self._consume(max_records, wait)
            if records or time.monotonic() >= until:
                return records
        return []

    def _join_limit(self) -> float:
        """How long a join may take: tansu answers after max(1 s, session timeout / 2)."""
        return 2 * self._settings.session_timeout + 1

    async def _consume(self, max_records: int, wait: float) -> list[Record]:
        # Converted on the driver thread, right after the fetch: the event loop only
        # receives finished records and runs handlers meanwhile.
        return await self._call(
            "fetch", lambda c: to_records(self._take_noting(c, max_records, wait), "fetch")
        )

    def positions(self) -> Mapping[TopicPartition, int]:
        """The consumer's positions as of its last empty fetch: past the transaction
        markers at the tail of a partition, which no record ever carries past."""
        return self._positions

    def _take_noting(self, consumer: Consumer, max_records: int, wait: float
                     ) -> list[Message]:
        """Driver thread: ``_take``; when it got nothing, note the positions."""
        messages = self._take(consumer, max_records, wait)
        if not messages and self._group is not None and self._owned:
            wanted = [KafkaPartition(tp.topic, tp.partition) for tp in self._owned]
            self._positions = {TopicPartition(kp.topic, kp.partition): kp.offset
                               for kp in consumer.position(wanted) if kp.offset >= 0}
        return messages

    def _take(self, consumer: Consumer, max_records: int, wait: float) -> list[Message]:
        """Driver thread: ``take``, minus messages of partitions this member gave up
        during the call. librdkafka serves a rebalance callback in the middle of a
        ``consume()`` batch and still returns the messages it had collected before it
        (confluent-kafka-python #1013): handled here, they would be handled again by the
        partition's new owner, which starts at the offset committed on revocation."""
        before = self._rebalances
        messages = take(consumer, max_records, wait)
        if self._rebalances == before or self._group is None:
            return messages
        owned = self._owned
        kept = [m for m in messages if m.error() is not None
                or TopicPartition(m.topic() or "", m.partition() or 0) in owned]
        if len(kept) < len(messages):
            log.info("dropped %d record(s) of partitions revoked while fetching them",
                     len(messages) - len(kept))
        return kept

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Commit synchronously; FencedError for partitions this member does not own."""
        if self._group is None or not offsets:
            return
        foreign = sorted(tp for tp in offsets if tp not in self._owned)
        if foreign:
            raise FencedError(f"commit of partitions this member does not own: {foreign}")
        wanted = [KafkaPartition(tp.topic, tp.partition, offset) for tp, offset in offsets.items()]
        result = await self._call(
            "commit", lambda c: c.commit(offsets=wanted, asynchronous=False)
        )
        for tp in result or ():
            if tp.error is not None:
                log.info("group %r: commit of %s[%d] refused: %s", self._group, tp.topic,
                         tp.partition, tp.error.str())
                raise translate(tp.error, "commit", tp.topic)

    async def close(self) -> None:
        """Revoke (the runtime commits), leave the group, stop the driver thread."""
        if self._closed:
            return
        with contextlib.suppress(TransportError):
            await self._ready()
        self._closed = True
        thread = self._thread
        if thread is None:
            return
        try:
            limit, quiet = self._join_limit(), self._settings.heartbeat_ms() / 1000 + 0.1
            await self._call("close", lambda c: close_when_settled(c, self._join, limit, quiet))
        finally:
            thread.stop()
            self._owned = frozenset()

    def abandon(self) -> None:
        """Stop as a crashed member would: leave without revoking or committing."""
        self._abandoned = self._closed = True
        thread, consumer = self._thread, self._consumer
        if thread is not None and consumer is not None:
            loop = asyncio.get_running_loop()
            loop.create_task(thread.call(consumer.close)).add_done_callback(_ignore)
            thread.stop()

    # -- rebalance callbacks (driver thread, inside consume/close) -----------------------

    def _on_assign(self, consumer: Consumer, partitions: list[KafkaPartition]) -> None:
        tps = _tidings(partitions)
        self._rebalances += 1
        if tps and not self._abandoned:
            self._position(consumer, partitions)
        self._owned = self._owned | tps
        if self._join is not None:
            self._join.assigned()
        if tps and not self._abandoned:
            self._await_listener(self._listener.on_assigned(tps))

    def _on_revoke(self, consumer: Consumer, partitions: list[KafkaPartition]) -> None:
        tps = _tidings(partitions)
        self._rebalances += 1
        if self._join is not None:
            self._join.rebalancing()
        if tps and not self._abandoned:
            self._await_listener(self._listener.on_revoked(tps))
        self._owned = self._owned - tps

    def _on_lost(self, consumer: Consumer, partitions: list[KafkaPartition]) -> None:
        tps = _tidings(partitions)
        self._rebalances += 1
        self._owned = self._owned - tps
        if self._join is not None:
            self._join.rebalancing()
        if tps and not self._abandoned:
            self._await_listener(self._listener.on_lost(tps))

    def _position(self, consumer: Consumer, partitions: list[KafkaPartition]) -> None:
        """Assign at explicit offsets: the committed one, else the log start (EARLIEST)
        or the current end, pinned by a commit (LATEST). librdkafka's own reset of an
        uncommitted partition waits 100 ms first; tansu under-reports the end."""
        timeout = self._settings.request_timeout
        try:
            committed = consumer.committed(partitions, timeout)
            fresh = [kp for kp in committed if kp.offset < 0]
            if fresh and self._start is Start.EARLIEST:
                for kp in fresh:
                    kp.offset = OFFSET_BEGINNING
            elif fresh:
                self._pin_latest(consumer, fresh)
            consumer.assign(committed)
        except (KafkaException, TransportError) as exc:  # librdkafka assigns by itself
            log.warning("cannot position %s: %s", _tidings(partitions), exc)

    def _pin_latest(self, consumer: Consumer, fresh: list[KafkaPartition]) -> None:
        """Set ``fresh`` partitions to their true end and commit it, so LATEST means
        "from when the group first got the partition", even after a crash."""
        assert self._loop is not None
        assert self._thread is not None
        wanted = [TopicPartition(kp.topic, kp.partition) for kp in fresh]
        pending = asyncio.run_coroutine_threadsafe(self._end_offsets(wanted), self._loop)
        ends = self._thread.wait_serving(pending)
        for kp in fresh:
            kp.offset = ends[TopicPartition(kp.topic, kp.partition)]
        consumer.commit(offsets=fresh, asynchronous=False)

    def _await_listener(self, coroutine: Coroutine[Any, Any, None]) -> None:
        assert self._loop is not None
        assert self._thread is not None
        pending = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        try:
            self._thread.wait_serving(pending)
        except Exception:  # a failing listener must not kill librdkafka's rebalance
            log.exception("rebalance listener of group %r failed", self._group)


def _tidings(partitions: list[KafkaPartition]) -> frozenset[TopicPartition]:
    return frozenset(TopicPartition(tp.topic, tp.partition) for tp in partitions)


def _ignore(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()
