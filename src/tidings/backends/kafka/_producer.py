"""Appending: librdkafka's batching producer, with acknowledgements awaited in asyncio.

``produce()`` only queues a record in librdkafka (microseconds, never a network round
trip), so it runs on the event loop; librdkafka batches queued records by ``linger_ms``
and ``batch_size``. Delivery reports are served on the event loop too, by a non-blocking
``poll(0)`` every millisecond while appends wait (every 100 ms otherwise, for client
errors and logs). A poller thread did this before: each report's Python callback then
had to win the GIL back from the event loop, a contention that cost CPU on every record.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import deque
from collections.abc import Iterator, Sequence
from typing import Any, cast

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from ..._errors import MessageTooLargeError, TransportError
from ..._lazy import LazySequence
from ..._records import OutRecord, Position
from ._translate import translate, translate_exception

__all__ = ["DeliveryProducer", "check_sizes", "produce_args"]

log = logging.getLogger("tidings.kafka")

_BUSY_POLL = 0.001  # seconds between polls while sends wait for their reports
_IDLE_POLL = 0.1
_OVERHEAD = 512  # bytes librdkafka adds around a record (batch and record headers)


class _Append:
    """The delivery reports of one ``append`` call, filled in as librdkafka serves them.

    A report keeps two ints, not the message or a Position: objects that outlive the
    callback are what the garbage collector walks, and it runs once per 700 of them.
    For the same reason a keyed record of a one-topic call gets no callback object of
    its own: the records of one key land in one partition in the order they were
    produced (the idempotent producer's guarantee), and librdkafka reports them in that
    order, so ``report_keyed`` takes a report's record from its key: the first record
    of that key still unreported. The others (no key, a chosen partition, several
    topics, or a producer that is not idempotent) each get a ``partial`` of ``report``.
    """

    __slots__ = ("by_key", "chain", "error", "finished", "future", "heads", "offsets",
                 "partitions", "remaining", "tails", "topics")

    def __init__(self, future: asyncio.Future[Sequence[Position]], topics: list[str],
                 finished: deque[_Append], ordered: bool) -> None:
        self.future = future
        self.topics = topics
        self.partitions: list[int] = [-1] * len(topics)
        self.offsets: list[int] = [-1] * len(topics)
        self.remaining = len(topics)
        self.error: TransportError | None = None
        self.finished = finished
        # Per encoded key, the first unreported record; chain[i]: the record of record
        # i's key after it (-1: none). Dicts and lists of ints, which the GC ignores.
        self.heads: dict[bytes, int] = {}
        self.chain: list[int] = [-1] * len(topics)
        self.tails: dict[bytes, int] = {}  # while queueing: the last record of each key
        # Keyed records share report_keyed when the call has one topic.
        self.by_key = ordered and len(set(topics)) == 1

    def report_keyed(self, error: KafkaError | None, message: Message) -> None:
        """librdkafka's delivery callback for the keyed records of this call."""
        key = message.key()
        heads = self.heads
        index = heads.pop(key, -1) if isinstance(key, bytes) else -1
        if index < 0:  # not one of ours: cannot happen, but never leave the sender hanging
            self.error = self.error or TransportError(
                f"append: unexpected delivery report from topic {message.topic()!r}")
            self.finished.append(self)
            return
        following = self.chain[index]
        if following >= 0:
            heads[key] = following  # type: ignore[index]  # bytes, checked above
        self.report(index, error, message)

    def report(self, index: int, error: KafkaError | None, message: Message) -> None:
        """librdkafka's delivery callback for record ``index``."""
        if error is not None and self.error is None:
            self.error = translate(error, "append", message.topic() or "")
        self.partitions[index] = message.partition() or 0
        self.offsets[index] = message.offset() or 0
        self.remaining -= 1
        if self.remaining == 0:
            self.finished.append(self)

    def fail(self, error: TransportError) -> None:
        """Resolve the awaiting coroutine with ``error`` (event loop thread)."""
        if not self.future.done():
            self.future.set_exception(error)

    def settle(self) -> None:
        """Resolve the awaiting coroutine (event loop thread)."""
        if self.future.done():
            return
        if self.error is not None:
            self.future.set_exception(self.error)
        else:
            self.future.set_result(_Positions(self.topics, self.partitions, self.offsets))


class _Positions(LazySequence[Position]):
    """An append's positions, each made when it is read (see ``LazySequence``)."""

    __slots__ = ("_offsets", "_partitions", "_topics")

    def __init__(self, topics: list[str], partitions: list[int], offsets: list[int]) -> None:
        self._topics, self._partitions, self._offsets = topics, partitions, offsets

    def __len__(self) -> int:
        return len(self._topics)

    def _item(self, index: int) -> Position:
        return Position(self._topics[index], self._partitions[index], self._offsets[index])

    def __iter__(self) -> Iterator[Position]:
        return map(Position, self._topics, self._partitions, self._offsets)


class DeliveryProducer:
    """A librdkafka producer whose ``send`` returns once every record is acknowledged."""

    def __init__(self, config: dict[str, Any], max_message_bytes: int) -> None:
        self.producer = Producer(config)
        self._max_bytes = max_message_bytes
        self._finished: deque[_Append] = deque()  # appended to by delivery callbacks
        self._open: set[_Append] = set()  # sends awaiting their reports
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.Handle | None = None
        self._busy = False  # whether the timer runs at the busy pace
        self._closed = False
        self._queueing: set[asyncio.Task[None]] = set()  # queue() calls that filled the queue
        # Whether each partition's records are appended in the order they were produced,
        # which lets keyed records share one delivery callback (see _Append).
        # (A "random" partitioner would scatter one key over partitions.)
        self._ordered = bool(config.get("enable.idempotence")) \
            and config.get("partitioner") != "random"

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start serving delivery reports on ``loop``."""
        self._loop = loop
        self._timer = loop.call_soon(self._poll)

    def queue(self, records: Sequence[OutRecord]) -> asyncio.Future[Sequence[Position]]:
        """Queue ``records`` now; return the future of their positions, resolved once the
        broker acknowledged every one.

        Queued at once, before this returns, unless librdkafka's queue fills up: a task
        then queues the rest as room frees up. So a caller that drops its records after
        the call keeps none of them alive while it waits (objects that wait are what the
        garbage collector walks). If queueing fails part-way (a bad partition, say), the
        error is raised, or set on the future; records queued before it may still be
        appended.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Sequence[Position]] = loop.create_future()
        if not records:
            future.set_result([])
            return future
        check_sizes(records, self._max_bytes)
        append = _Append(future, [r.topic for r in records], self._finished, self._ordered)
        self._open.add(append)
        index = self._produce(append, records, 0)
        if index < len(records):
            task = loop.create_task(self._queue_rest(append, records, index))
            self._queueing.add(task)
            task.add_done_callback(self._queueing.discard)
        if not self._busy:
            self._reschedule(_BUSY_POLL)
        return future

    async def send(self, records: Sequence[OutRecord]) -> Sequence[Position]:
        """Queue ``records`` and wait until the broker acknowledged all of them."""
        return await self.queue(records)

    async def _queue_rest(self, append: _Append, records: Sequence[OutRecord], index: int
                          ) -> None:
        try:
            while index < len(records):
                self._serve()  # librdkafka's queue is full: serve reports, let it send
                await asyncio.sleep(0.002)
                index = self._produce(append, records, index)
        except TransportError as exc:
            append.fail(exc)

    def _produce(self, append: _Append, records: Sequence[OutRecord], index: int) -> int:
        """Produce ``records[index:]`` until librdkafka's queue is full; return the index
        reached. Raises TransportError (the append abandoned) if the producer is closed
        or librdkafka refuses a record."""
        report, produce, partial = append.report, self.producer.produce, functools.partial
        keyed = append.report_keyed if append.by_key else None
        heads, chain, tails = append.heads, append.chain, append.tails
        while index < len(records):  # one tight loop: this is the publishing hot path
            if self._closed:
                self._open.discard(append)
                raise TransportError("append: the Kafka producer is closed")
            record = records[index]
            key, partition, wire_headers = produce_args(record)
            try:
                if key is not None and partition < 0 and keyed is not None:
                    wire = key.encode()
                    produce(record.topic, record.value, wire, -1, on_delivery=keyed,
                            headers=wire_headers)
                    previous = tails.get(wire)  # queued: now chain it behind its key
                    if previous is None:
                        heads[wire] = index
                    else:
                        chain[previous] = index
                    tails[wire] = index
                else:
                    produce(record.topic, record.value, key, partition,
                            on_delivery=partial(report, index), headers=wire_headers)
            except BufferError:
                return index
            except KafkaException as exc:
                self._open.discard(append)  # abandoned: its queued records report to nobody
                raise translate_exception(exc, "append", record.topic) from exc
            index += 1
        append.tails = {}
        return index

    def _poll(self) -> None:
        self._serve()
        if not self._closed:
            self._reschedule(_BUSY_POLL if self._open else _IDLE_POLL)

    def _reschedule(self, delay: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._loop is not None and not self._closed:
            self._busy = delay == _BUSY_POLL
            self._timer = self._loop.call_later(delay, self._poll)

    def _serve(self) -> None:
        """Serve the delivery reports that arrived and settle finished sends (loop thread)."""
        try:
            self.producer.poll(0)
        except Exception:  # a client callback failed: keep serving the others
            log.exception("serving Kafka producer events failed")
        finished = self._finished
        while finished:
            append = finished.popleft()
            self._open.discard(append)
            append.settle()

    async def close(self, timeout: float) -> None:
        """Deliver what is queued (up to ``timeout``), fail the rest, stop polling.

        Flushes on the event loop (a ``poll(0)`` every 5 ms), so every report is served
        on one thread and waiting sends settle as they finish."""
        if self._loop is None or self._closed:
            return
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        deadline = time.monotonic() + timeout
        while len(self.producer) and time.monotonic() < deadline:
            self._serve()
            await asyncio.sleep(0.005)
        if len(self.producer):
            # Undelivered records get a _PURGE_QUEUE or _PURGE_INFLIGHT delivery error, so
            # their sends raise; in-flight ones report from librdkafka's broker threads.
            self.producer.purge(in_queue=True, in_flight=True, blocking=False)
            deadline = time.monotonic() + 5
            while self._open and time.monotonic() < deadline:
                self._serve()
                await asyncio.sleep(0.01)
        self._serve()
        for append in list(self._open):  # no report will come any more
            append.fail(TransportError("append: the Kafka producer closed before the "
                                       "broker acknowledged every record"))
        self._open.clear()


WireHeaders = dict[str, str | bytes | None]


def produce_args(record: OutRecord) -> tuple[str | None, int, WireHeaders]:
    """The key, partition (-1: the partitioner's choice) and headers librdkafka takes
    (it encodes str keys and header values as UTF-8 itself; it wants a real dict)."""
    headers = record.headers
    return (
        record.key,
        record.partition if record.partition is not None else -1,
        cast(WireHeaders, headers if type(headers) is dict else dict(headers)),
    )


def check_sizes(records: Sequence[OutRecord], max_bytes: int) -> None:
    """Refuse, before sending anything, a record larger than ``max_bytes``."""
    for record in records:
        # A quick upper bound first (UTF-8 takes at most 4 bytes a character); a plain
        # loop, as it runs once per record (map and sum cost twice as much here).
        chars = len(record.key or "")
        for name, value in record.headers.items():
            chars += len(name) + len(value)
        if len(record.value) + _OVERHEAD + 4 * chars <= max_bytes:
            continue
        size = len(record.value) + _OVERHEAD + len((record.key or "").encode()) + sum(
            len(name.encode()) + len(value.encode()) for name, value in record.headers.items()
        )
        if size > max_bytes:
            raise MessageTooLargeError(
                f"record of ~{size} bytes for topic {record.topic!r} exceeds "
                f"max_message_bytes={max_bytes}"
            )
