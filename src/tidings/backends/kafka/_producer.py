"""Appending: librdkafka's batching producer, with acknowledgements awaited in asyncio.

``produce()`` only queues a record in librdkafka (microseconds, never a network round
trip), so it runs on the event loop; librdkafka batches queued records by ``linger_ms``
and ``batch_size``. A poller thread serves delivery reports and hands every finished
append back to the loop in one ``call_soon_threadsafe`` per poll, so 100k concurrent
appends cost a few hundred loop wake-ups, not 100k.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
from collections import deque
from collections.abc import Sequence
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from ..._errors import MessageTooLargeError, TransportError
from ..._records import OutRecord, Position
from ._translate import translate, translate_exception

__all__ = ["DeliveryProducer", "check_sizes", "produce_args"]

_POLL_SECONDS = 0.1
_OVERHEAD = 512  # bytes librdkafka adds around a record (batch and record headers)


class _Append:
    """The delivery reports of one ``append`` call, filled in on the poller thread."""

    __slots__ = ("error", "finished", "future", "positions", "remaining")

    def __init__(
        self, future: asyncio.Future[list[Position]], size: int, finished: deque[_Append]
    ) -> None:
        self.future = future
        self.positions: list[Position | None] = [None] * size
        self.remaining = size
        self.error: TransportError | None = None
        self.finished = finished

    def report(self, index: int, error: KafkaError | None, message: Message) -> None:
        """librdkafka's delivery callback for record ``index`` (poller thread)."""
        topic = message.topic() or ""
        if error is not None and self.error is None:
            self.error = translate(error, "append", topic)
        self.positions[index] = Position(topic, message.partition(), message.offset())
        self.remaining -= 1
        if self.remaining == 0:
            self.finished.append(self)

    def settle(self) -> None:
        """Resolve the awaiting coroutine (event loop thread)."""
        if self.future.done():
            return
        if self.error is not None:
            self.future.set_exception(self.error)
        else:
            self.future.set_result([p for p in self.positions if p is not None])


class DeliveryProducer:
    """A librdkafka producer whose ``send`` returns once every record is acknowledged."""

    def __init__(self, config: dict[str, Any], max_message_bytes: int) -> None:
        self.producer = Producer(config)
        self._max_bytes = max_message_bytes
        self._finished: deque[_Append] = deque()  # appended to by delivery callbacks
        self._closing = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start the poller thread that serves delivery reports."""
        self._loop = loop
        self._thread = threading.Thread(
            target=self._poll_loop, name="tidings-kafka-producer", daemon=True
        )
        self._thread.start()

    async def send(self, records: Sequence[OutRecord]) -> list[Position]:
        """Queue ``records`` and wait until the broker acknowledged all of them.

        If queueing fails part-way (a bad partition, say), the error is raised at once;
        records queued before it may still be appended.
        """
        if not records:
            return []
        prepared = [produce_args(record) for record in records]
        check_sizes(records, prepared, self._max_bytes)
        future: asyncio.Future[list[Position]] = asyncio.get_running_loop().create_future()
        report = _Append(future, len(records), self._finished).report
        produce = self.producer.produce
        index = 0
        while index < len(records):  # one tight loop: this is the publishing hot path
            record = records[index]
            key, partition, headers = prepared[index]
            try:
                produce(record.topic, record.value, key, partition,
                        on_delivery=functools.partial(report, index), headers=headers)
            except BufferError:  # librdkafka's queue is full: let the poller drain it
                await asyncio.sleep(0.005)
                continue
            except KafkaException as exc:
                raise translate_exception(exc, "append", record.topic) from exc
            index += 1
        return await future

    def _poll_loop(self) -> None:
        while not self._closing.is_set():
            self.producer.poll(_POLL_SECONDS)
            self._hand_over()
        self.producer.poll(0)
        self._hand_over()

    def _hand_over(self) -> None:
        if not self._finished or self._loop is None:
            return
        done = [self._finished.popleft() for _ in range(len(self._finished))]
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
            self._loop.call_soon_threadsafe(_settle_all, done)

    async def close(self, timeout: float) -> None:
        """Deliver what is queued (up to ``timeout``), fail the rest, stop the poller."""
        if self._thread is None:
            return
        left = await asyncio.to_thread(self.producer.flush, timeout)
        if left:
            # Undelivered records get a _PURGE_QUEUE delivery error: their appends raise.
            self.producer.purge(in_queue=True, in_flight=True, blocking=False)
        self._closing.set()
        await asyncio.to_thread(self._thread.join, 5)
        self._thread = None


Headers = list[tuple[str, str | bytes | None]]


Args = tuple[bytes | None, int, Headers]


def produce_args(record: OutRecord) -> Args:
    """The key, partition (-1: the partitioner's choice) and headers librdkafka takes."""
    headers: Headers = [(name, value.encode()) for name, value in record.headers.items()]
    key = record.key.encode() if record.key is not None else None
    return key, record.partition if record.partition is not None else -1, headers


def check_sizes(records: Sequence[OutRecord], prepared: Sequence[Args], max_bytes: int) -> None:
    """Refuse, before sending anything, a record larger than ``max_bytes``."""
    for record, (key, _, headers) in zip(records, prepared, strict=True):
        size = len(record.value) + len(key or b"") + _OVERHEAD
        for name, value in headers:
            size += len(name) + len(value or b"")
        if size > max_bytes:
            raise MessageTooLargeError(
                f"record of ~{size} bytes for topic {record.topic!r} exceeds "
                f"max_message_bytes={max_bytes}"
            )


def _settle_all(done: list[_Append]) -> None:
    for append in done:
        append.settle()
