"""Appending: librdkafka's batching producer, with acknowledgements awaited in asyncio.

``produce()`` only queues a record in librdkafka (microseconds, never a network round
trip), so it runs on the event loop; librdkafka batches queued records by ``linger_ms``
and ``batch_size``. Delivery reports are served on the event loop too, by a non-blocking
``poll(0)`` every millisecond while appends wait (every 100 ms otherwise, for client
errors and logs). A poller thread did this before: each report's Python callback then
had to win the GIL back from the event loop, a contention that cost CPU on every record.

A broker restart that loses the producer's idempotence session (a broker without
durable state, such as tansu on memory storage) would leave librdkafka retrying every
batch with ``UNKNOWN_PRODUCER_ID`` forever: it only bumps its epoch locally. So the
producer watches for that (librdkafka's ``UNKPID`` log line, delivery errors of a lost
session, timed-out records) and then starts a new session, a new librdkafka producer
whose first request asks the broker for a new producer id. The old producer's records are
purged and produced again, in their order, on the new one: an append waiting through the
outage still succeeds if the broker comes back within ``publish_timeout``. Records that
were in flight may then be appended twice (never lost: an append returns only once the
broker acknowledged every record).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any, cast

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from ..._errors import BrokerUnavailableError, MessageTooLargeError, TransportError
from ..._lazy import LazySequence
from ..._records import OutRecord, Position
from ._logging import DriverLog
from ._translate import translate, translate_exception

__all__ = ["DeliveryProducer", "check_sizes", "produce_args"]

log = logging.getLogger("tidings.kafka")

_BUSY_POLL = 0.001  # seconds between polls while sends wait for their reports
_IDLE_POLL = 0.1
_OVERHEAD = 512  # bytes librdkafka adds around a record (batch and record headers)
_RENEW_EVERY = 5.0  # seconds: at most one new producer session this often
_SWEEP_EVERY = 1.0  # seconds between looks for appends past their deadline
#: Delivery errors of a producer session the broker no longer knows: the session is
#: renewed and the record produced again.
_SESSION_LOST = frozenset({
    KafkaError.UNKNOWN_PRODUCER_ID, KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER,
    KafkaError.INVALID_PRODUCER_ID_MAPPING, KafkaError.INVALID_PRODUCER_EPOCH,
    KafkaError._FATAL,
})
#: Delivery errors of records purged from a replaced session: produced again.
_RESEND = _SESSION_LOST | {KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT}

Callback = Callable[[KafkaError | None, Message], None]


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

    __slots__ = ("by_key", "chain", "deadline", "error", "finished", "future", "heads",
                 "offsets", "owner", "partitions", "remaining", "tails", "topics")

    def __init__(self, future: asyncio.Future[Sequence[Position]], topics: list[str],
                 owner: DeliveryProducer, deadline: float) -> None:
        self.future = future
        self.topics = topics
        self.owner = owner
        self.deadline = deadline  # time.monotonic() after which the append fails
        # The partition each record was produced to (-1: the partitioner's choice), until
        # its report overwrites it with the partition it landed in.
        self.partitions: list[int] = [-1] * len(topics)
        self.offsets: list[int] = [-1] * len(topics)
        self.remaining = len(topics)
        self.error: TransportError | None = None
        self.finished = owner.finished
        # Per encoded key, the first unreported record; chain[i]: the record of record
        # i's key after it (-1: none). Dicts and lists of ints, which the GC ignores.
        self.heads: dict[bytes, int] = {}
        self.chain: list[int] = [-1] * len(topics)
        self.tails: dict[bytes, int] = {}  # while queueing: the last record of each key
        # Keyed records share report_keyed when the call has one topic.
        self.by_key = owner.ordered and len(set(topics)) == 1

    def report_keyed(self, error: KafkaError | None, message: Message) -> None:
        """librdkafka's delivery callback for the keyed records of this call."""
        if error is not None and self.owner.resend(self, error, message, self.report_keyed,
                                                   -1):
            return  # produced again, on a new session: its report comes later
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
        if error is not None and self.owner.resend(
                self, error, message, functools.partial(self.report, index),
                self.partitions[index]):
            return  # produced again, on a new session: its report comes later
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
        self._config = config
        self._timeout = config.get("message.timeout.ms", 300_000) / 1000
        self._session = 0  # how many sessions were renewed
        # Why the session seems lost ("" if it does not): renewed at the next serve.
        self._lost = ""
        self._renewable_at = 0.0  # time.monotonic() before which no renewal happens
        self._retired: list[Producer] = []  # replaced producers, until drained
        # Reports of records to produce again on the new session, in their order.
        self._resends: deque[tuple[_Append, Message, Callback, int]] = deque()
        self._next_sweep = 0.0
        self.producer = self._new_producer()
        self._max_bytes = max_message_bytes
        self.finished: deque[_Append] = deque()  # appended to by delivery callbacks
        self._open: set[_Append] = set()  # sends awaiting their reports
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.Handle | None = None
        self._busy = False  # whether the timer runs at the busy pace
        self._closed = False
        self._queueing: set[asyncio.Task[None]] = set()  # queue() calls that filled the queue
        # Whether each partition's records are appended in the order they were produced,
        # which lets keyed records share one delivery callback (see _Append).
        # (A "random" partitioner would scatter one key over partitions.)
        self.ordered = bool(config.get("enable.idempotence")) \
            and config.get("partitioner") != "random"

    def _new_producer(self) -> Producer:
        """A librdkafka producer, a new idempotence session; with ``debug=eos`` so that
        librdkafka's ``UNKPID`` line (the broker forgot the session) reaches us. eos
        lines come only at session events, none per record."""
        config = dict(self._config)
        session = self._session
        logger = config.get("logger")
        if config.get("enable.idempotence") and isinstance(logger, DriverLog):
            config["debug"] = "eos"
            lost = functools.partial(self._session_lost, session)
            config["logger"] = DriverLog(logger.logger, {"UNKPID": lost, "FATAL": lost})
        return Producer(config)

    def _session_lost(self, session: int, text: str) -> bool:
        """librdkafka logged that the broker forgot our producer id (``UNKPID``) or a
        fatal error: renew session ``session`` at the next serve. A fatal error of an
        unknown producer id is handled so (logged at debug level); any other stays."""
        if session == self._session:
            self._lost = "lost"
        return "unknown producer id" in text.lower()

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
        append = _Append(future, [r.topic for r in records], self,
                         time.monotonic() + self._timeout)
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
                if time.monotonic() > append.deadline:
                    self._open.discard(append)
                    raise BrokerUnavailableError(
                        f"append: the Kafka producer's queue stayed full for "
                        f"{self._timeout:g} s (publish_timeout): is the broker down?")
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
                    append.partitions[index] = partition
            except BufferError:
                return index
            except KafkaException as exc:
                error = exc.args[0] if exc.args else None
                if isinstance(error, KafkaError) and error.code() in _SESSION_LOST:
                    # A fatal idempotence error: go on in a new session (the old one's
                    # records first, to keep their order).
                    self._lost = "lost"
                    if self._renew():
                        self._produce_resends()
                        produce = self.producer.produce
                        continue
                self._open.discard(append)  # abandoned: its queued records report to nobody
                raise translate_exception(exc, "append", record.topic) from exc
            index += 1
        append.tails = {}
        return index

    def _poll(self) -> None:
        self._serve()
        if self._open and time.monotonic() >= self._next_sweep:
            self._sweep()
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
            if self._retired:
                self._serve_retired()
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            if not (isinstance(error, KafkaError) and error.code() in _SESSION_LOST):
                log.exception("serving Kafka producer events failed")
            self._lost = "lost"  # a fatal error: this producer is done, a new one takes over
        except Exception:  # a client callback failed: keep serving the others
            log.exception("serving Kafka producer events failed")
        if self._lost and not self._closed:
            self._renew()
        if self._resends:
            self._produce_resends()
        finished = self.finished
        while finished:
            append = finished.popleft()
            self._open.discard(append)
            append.settle()

    # -- producer sessions -----------------------------------------------------------

    def resend(self, append: _Append, error: KafkaError, message: Message,
               callback: Callback, partition: int) -> bool:
        """From a delivery callback: whether the failed record is to be produced again
        on a new session (then its callback is called again later)."""
        code = error.code()
        if code not in _RESEND or self._closed:
            if code == KafkaError._MSG_TIMED_OUT:
                append.error = append.error or self._late(error)
                # librdkafka would go on in a session the broker may have lost: renew it
                # (quietly: during a long outage, this happens every _RENEW_EVERY).
                self._lost = self._lost or "timeout"
            return False
        if code in _SESSION_LOST:
            self._lost = "lost"
        if time.monotonic() > append.deadline:
            if append.error is None:
                append.error = self._late(error)
            return False
        self._resends.append((append, message, callback, partition))
        return True

    def _late(self, error: KafkaError | None) -> BrokerUnavailableError:
        why = f": {error.str()} ({error.name()})" if error is not None else ""
        return BrokerUnavailableError(
            f"append: the Kafka broker did not acknowledge within {self._timeout:g} s "
            f"(publish_timeout){why}")

    def _renew(self) -> bool:
        """Start a new producer session (unless one started less than _RENEW_EVERY ago:
        then False); the old one's records are produced again."""
        now = time.monotonic()
        if now < self._renewable_at:
            return False  # _lost stays set: renewed when allowed
        why, self._lost = self._lost, ""
        self._renewable_at = now + _RENEW_EVERY
        old = self.producer
        self._session += 1
        self.producer = self._new_producer()
        log.log(logging.WARNING if why == "lost" else logging.DEBUG,
                "the Kafka broker lost this producer's session (it restarted?): a new one "
                "takes over and re-sends %d unacknowledged record(s)", len(old))
        try:
            # Purged records report at once (_PURGE_QUEUE, _PURGE_INFLIGHT): served
            # here, they are queued for the new session before any later append.
            old.purge(in_queue=True, in_flight=True, blocking=True)
            old.poll(0)
        except Exception:
            log.exception("purging the old Kafka producer failed")
        self._retired.append(old)
        return True

    def _serve_retired(self) -> None:
        """Serve the reports of replaced producers; drop those with nothing left."""
        for old in list(self._retired):
            old.poll(0)
            if not len(old):
                self._retired.remove(old)

    def _produce_resends(self) -> None:
        """Produce the records of a lost session again, in their order."""
        resends, produce = self._resends, self.producer.produce
        while resends:
            append, message, callback, partition = resends[0]
            if time.monotonic() > append.deadline:
                resends.popleft()
                append.error = append.error or self._late(None)
                callback(KafkaError(KafkaError._MSG_TIMED_OUT), message)
                continue
            try:
                produce(message.topic() or "", message.value(), message.key(), partition,
                        on_delivery=callback, headers=message.headers())
            except BufferError:
                return  # the queue is full: the next serve goes on
            except KafkaException:
                self._lost = "lost"  # this session failed too: the next one takes them
                return
            resends.popleft()

    def _sweep(self) -> None:
        """Fail appends past their deadline (records produced again get a new librdkafka
        timeout, so librdkafka alone would let them wait longer)."""
        now = time.monotonic()
        self._next_sweep = now + _SWEEP_EVERY
        for append in [a for a in self._open if now > a.deadline + _SWEEP_EVERY]:
            self._open.discard(append)
            append.fail(append.error or self._late(None))

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
        for old in self._retired:
            old.purge(in_queue=True, in_flight=True, blocking=False)
        self._retired.clear()
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
