"""The one place where librdkafka errors become tidings errors.

Every call into confluent-kafka runs inside :func:`driver_errors` (or passes a
:class:`~confluent_kafka.KafkaError` to :func:`translate`), so callers above the
backend only ever see the tidings exception tree.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from confluent_kafka import KafkaError, KafkaException

from ..._errors import (
    BrokerUnavailableError,
    FencedError,
    MessageTooLargeError,
    TransportError,
    UnknownTopicError,
)

__all__ = ["AUTH_CODES", "driver_errors", "translate", "translate_exception"]

_UNAVAILABLE = frozenset({
    KafkaError._MSG_TIMED_OUT, KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN,
    KafkaError._TIMED_OUT, KafkaError._RESOLVE, KafkaError.BROKER_NOT_AVAILABLE,
    KafkaError.REQUEST_TIMED_OUT, KafkaError.NETWORK_EXCEPTION, KafkaError._WAIT_COORD,
})
AUTH_CODES = frozenset({
    KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED,
    KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.GROUP_AUTHORIZATION_FAILED,
    KafkaError.CLUSTER_AUTHORIZATION_FAILED,
})
_TOO_LARGE = frozenset({KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.RECORD_LIST_TOO_LARGE})
_UNKNOWN = frozenset({
    KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC, KafkaError._UNKNOWN_PARTITION,
})
_FENCED = frozenset({
    KafkaError.ILLEGAL_GENERATION, KafkaError.UNKNOWN_MEMBER_ID,
    KafkaError.REBALANCE_IN_PROGRESS, KafkaError.FENCED_INSTANCE_ID, KafkaError._FENCED,
    KafkaError._ASSIGNMENT_LOST, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH,
})


def translate(error: KafkaError, what: str, topic: str | None = None) -> TransportError:
    """The tidings error for a librdkafka error met while doing ``what``."""
    code = error.code()
    detail = f"{what}: {error.str()} ({error.name()})"
    where = f" (topic {topic!r})" if topic is not None else ""
    if code in _TOO_LARGE:
        return MessageTooLargeError(f"record too large for topic {topic!r}: {detail}")
    if code in AUTH_CODES:
        return TransportError(f"Kafka authentication or authorization failed: {detail}")
    if code in _UNAVAILABLE:
        return BrokerUnavailableError(f"Kafka broker unavailable: {detail}")
    if code in _UNKNOWN:
        return UnknownTopicError(f"unknown topic or partition{where}: {detail}")
    if code in _FENCED:
        return FencedError(f"this member lost its partitions{where}: {detail}")
    return TransportError(f"Kafka error{where}: {detail}")


def translate_exception(
    exc: KafkaException, what: str, topic: str | None = None
) -> TransportError:
    """The tidings error for a confluent-kafka exception."""
    error = exc.args[0] if exc.args else None
    if isinstance(error, KafkaError):
        return translate(error, what, topic)
    return TransportError(f"{what}: {exc}")


@contextlib.contextmanager
def driver_errors(what: str, topic: str | None = None) -> Iterator[None]:
    """Translate confluent-kafka exceptions raised inside the block."""
    try:
        yield
    except KafkaException as exc:
        raise translate_exception(exc, what, topic) from exc
    except BufferError as exc:  # the producer's local queue is full
        raise BrokerUnavailableError(f"{what}: producer queue full ({exc})") from exc
