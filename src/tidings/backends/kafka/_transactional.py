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
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
from confluent_kafka import TopicPartition as KafkaPartition

from ..._errors import FencedError, TransportError
from ..._records import OutRecord, TopicPartition
from ...ports import TransactionalSubscription
from ._producer import produce_args
from ._subscription import ErrorCallback, KafkaSubscription
from ._translate import driver_errors, translate

__all__ = ["TransactionalKafkaSubscription"]

log = logging.getLogger("tidings.kafka")

#: Routes delayed records to their tier and creates missing topics (the transport's).
Prepare = Callable[[Sequence[OutRecord]], Awaitable[list[OutRecord]]]


class TransactionalKafkaSubscription(KafkaSubscription, TransactionalSubscription):
    """A :class:`KafkaSubscription` whose commits can carry records, atomically."""

    def __init__(self, *args: Any, transactional_id: str, prepare: Prepare,
                 on_error: ErrorCallback | None = None) -> None:
        self._transactional_id = transactional_id
        self._prepare = prepare
        self._producer: Producer | None = None
        super().__init__(*args, on_error=on_error)

    async def _open(self) -> None:
        await super()._open()
        await self._call("begin transactions", self._new_producer)

    def _new_producer(self, consumer: Consumer) -> None:
        """Driver thread: a producer whose first act fences (and aborts the open
        transaction of) any earlier producer with the same transactional id."""
        config = self._settings.transactional_config(self._transactional_id)
        producer = Producer(config)
        producer.init_transactions(self._settings.request_timeout)
        self._producer = producer

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
        if self._producer is None:  # the last one failed fatally: start over
            self._new_producer(consumer)
        producer = self._producer
        assert producer is not None
        timeout = self._settings.request_timeout
        producer.begin_transaction()
        try:
            for record in records:
                _produce(producer, record)
            producer.send_offsets_to_transaction(
                offsets, consumer.consumer_group_metadata(), timeout
            )
            _commit(producer, timeout)
        except (KafkaException, TransportError) as exc:
            self._abort(producer, exc)
            raise

    def _abort(self, producer: Producer, exc: Exception) -> None:
        error = exc.args[0] if isinstance(exc, KafkaException) and exc.args else None
        if isinstance(error, KafkaError) and error.fatal():
            log.warning("transactional producer %r failed for good (%s); a new one "
                        "fences it", self._transactional_id, error.str())
            self._producer = None
            return
        try:
            producer.abort_transaction(self._settings.request_timeout)
        except KafkaException as again:
            log.warning("aborting a failed transaction failed too (%s); starting over", again)
            self._producer = None

    async def close(self) -> None:
        """Revoke (the runtime commits, in a transaction), leave, drop the producer."""
        try:
            await super().close()
        finally:
            self._producer = None


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
