"""Exactly-once consume-transform-produce: a group member that commits in transactions.

Each commit is one Kafka transaction on a transactional producer owned by the member:
``begin``, the records the handlers published, ``send_offsets_to_transaction`` with the
consumer's group metadata (KIP-447: a member fenced by a rebalance cannot commit), then
``commit``. It runs on the consumer's driver thread, like a plain commit, so a commit
from ``on_revoked`` (inside a rebalance callback) works the same way. The records reach
the broker only inside this call: a crash before it publishes nothing, a crash inside it
leaves a transaction the broker aborts (read_committed readers never see it).

The ``transactional.id`` is ``<prefix>.<group>.<topics>``: the prefix is the URL's
``transactional_id`` (stable across restarts of one instance, so a restarted instance
aborts its predecessor's open transaction at once), else random per transport (an open
transaction of a crashed instance then holds readers back until ``transaction_timeout``).

Every call to the producer runs on a thread of its own (:class:`_ProducerThread`), which
the driver thread waits for at most ``2 × request_timeout + 5`` s. librdkafka's
``send_offsets_to_transaction`` can block for ever, past its timeout, once the group
coordinator it cached went away (a broker restart: confluentinc/librdkafka#5456 and
#5511, open in 2.16): such a call must not hold the consumer. A producer stuck that
long is left to its thread, and the next commit starts a new one with the same
``transactional.id``, whose ``init_transactions`` fences it and aborts its transaction.
"""

from __future__ import annotations

import concurrent.futures
import logging
import queue
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
from confluent_kafka import TopicPartition as KafkaPartition

from ..._errors import BrokerUnavailableError, FencedError, TransportError
from ..._records import OutRecord, TopicPartition
from ...ports import TransactionalSubscription
from ._producer import produce_args
from ._subscription import ErrorCallback, KafkaSubscription
from ._translate import driver_errors, translate

__all__ = ["TransactionalKafkaSubscription"]

log = logging.getLogger("tidings.kafka")

T = TypeVar("T")

#: Routes delayed records to their tier and creates missing topics (the transport's).
Prepare = Callable[[Sequence[OutRecord]], Awaitable[list[OutRecord]]]


class TransactionalKafkaSubscription(KafkaSubscription, TransactionalSubscription):
    """A :class:`KafkaSubscription` whose commits can carry records, atomically."""

    def __init__(self, *args: Any, transactional_id: str, prepare: Prepare,
                 on_error: ErrorCallback | None = None) -> None:
        self._transactional_id = transactional_id
        self._prepare = prepare
        self._producer: _ProducerThread | None = None
        super().__init__(*args, on_error=on_error)
        self._limit = 2 * self._settings.request_timeout + 5

    async def _open(self) -> None:
        await super()._open()
        await self._call("begin transactions", self._new_producer)

    def _new_producer(self, consumer: Consumer) -> None:
        """Driver thread: a producer whose first act fences (and aborts the open
        transaction of) any earlier producer with the same transactional id."""
        self._drop()
        config = self._settings.transactional_config(self._transactional_id)
        self._producer = _ProducerThread(Producer(config))
        timeout = self._settings.request_timeout
        try:
            self._on_producer(lambda p: p.init_transactions(timeout))
        except KafkaException:
            self._drop()  # the next commit tries a new one
            raise

    async def commit_appending(
        self, offsets: Mapping[TopicPartition, int], records: Sequence[OutRecord]
    ) -> None:
        """Append ``records`` and commit ``offsets`` in one transaction."""
        if not records:
            await self.commit(offsets)  # nothing to append: a plain commit is as atomic
            return
        foreign = sorted(tp for tp in offsets if tp not in self._owned)
        if foreign:
            raise FencedError(f"commit of partitions this member does not own: {foreign}")
        outgoing = await self._prepare(records)
        wanted = [KafkaPartition(tp.topic, tp.partition, o) for tp, o in offsets.items()]
        await self._call("transaction", lambda c: self._transact(c, wanted, outgoing))

    def _transact(
        self, consumer: Consumer, offsets: list[KafkaPartition], records: list[OutRecord]
    ) -> None:
        """Driver thread: one transaction, committed, or aborted and raised."""
        if self._producer is None:  # the last one failed for good: start over
            self._new_producer(consumer)
        metadata = consumer.consumer_group_metadata()
        timeout = self._settings.request_timeout
        try:
            self._on_producer(lambda p: _transaction(p, offsets, metadata, records, timeout))
        except (KafkaException, TransportError) as exc:
            if self._producer is not None and not self._aborted(exc):
                self._drop()
            raise

    def _aborted(self, exc: Exception) -> bool:
        """Abort the failed transaction; whether the producer can go on."""
        error = exc.args[0] if isinstance(exc, KafkaException) and exc.args else None
        if isinstance(error, KafkaError) and error.fatal():
            log.warning("transactional producer %r failed for good (%s); a new one "
                        "fences it", self._transactional_id, error.str())
            return False
        timeout = self._settings.request_timeout
        try:
            self._on_producer(lambda p: p.abort_transaction(timeout))
        except (KafkaException, BrokerUnavailableError) as again:
            log.warning("aborting a failed transaction failed too (%s); starting over", again)
            return False
        return True

    def _on_producer(self, call: Callable[[Producer], T]) -> T:
        """Driver thread: ``call(producer)`` on the producer's thread, for at most
        ``self._limit`` s; a producer stuck longer is dropped."""
        producer = self._producer
        assert producer is not None
        try:
            return producer.call(call, self._limit)
        except concurrent.futures.TimeoutError:
            log.warning("transactional producer %r stuck in librdkafka for %.0f s (a lost "
                        "group coordinator); a new one fences it", self._transactional_id,
                        self._limit)
            self._drop()
            raise BrokerUnavailableError(
                f"a transaction of {self._transactional_id!r} did not finish within "
                f"{self._limit:.0f} s") from None

    def _drop(self) -> None:
        """Let go of the producer: its thread ends once its call in progress returns."""
        if self._producer is not None:
            self._producer.stop()
            self._producer = None

    async def close(self) -> None:
        """Revoke (the runtime commits, in a transaction), leave, drop the producer."""
        try:
            await super().close()
        finally:
            self._drop()


class _ProducerThread:
    """A transactional producer and the daemon thread that makes every call to it, so a
    call that blocks past its timeout holds only this thread (and the producer, which
    is dropped on this thread once it is stopped and its last call returned)."""

    def __init__(self, producer: Producer) -> None:
        self._producer: Producer | None = producer
        self._calls: queue.SimpleQueue[
            tuple[Callable[[Producer], Any], concurrent.futures.Future[Any]] | None
        ] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="tidings-kafka-transactions",
                                        daemon=True)
        self._thread.start()

    def call(self, call: Callable[[Producer], T], timeout: float) -> T:
        """``call(producer)`` on the thread; ``concurrent.futures.TimeoutError`` if it
        has not returned within ``timeout`` s (it may still return later)."""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._calls.put((call, future))
        return future.result(timeout)

    def stop(self) -> None:
        """End the thread after the calls already queued."""
        self._calls.put(None)

    def _run(self) -> None:
        while (item := self._calls.get()) is not None:
            call, future = item
            assert self._producer is not None
            try:
                future.set_result(call(self._producer))
            except BaseException as exc:  # the caller raises it
                future.set_exception(exc)
        self._producer = None  # destroyed here, not on the thread that dropped it


def _transaction(producer: Producer, offsets: list[KafkaPartition], metadata: Any,
                 records: list[OutRecord], timeout: float) -> None:
    """The producer's thread: begin, append, add the offsets, commit (not abort)."""
    producer.begin_transaction()
    for record in records:
        _produce(producer, record)
    producer.send_offsets_to_transaction(offsets, metadata, timeout)
    _commit(producer, timeout)


def _produce(producer: Producer, record: OutRecord) -> None:
    key, partition, headers = produce_args(record)
    while True:
        try:
            with driver_errors("append", record.topic):
                producer.produce(record.topic, record.value, key, partition, headers=headers)
            return
        except TransportError as exc:
            if not isinstance(exc.__cause__, BufferError):
                raise
        producer.poll(0.01)  # librdkafka's queue is full: let it send


def _commit(producer: Producer, timeout: float) -> None:
    """Commit, retrying what librdkafka calls retriable (the outcome is then unknown,
    and retrying ``commit_transaction`` is how to learn it)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            producer.commit_transaction(max(deadline - time.monotonic(), 0.1))
            return
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            if not (isinstance(error, KafkaError) and error.retriable()
                    and time.monotonic() < deadline):
                raise
            log.info("retrying a transaction commit: %s", translate(error, "commit"))
