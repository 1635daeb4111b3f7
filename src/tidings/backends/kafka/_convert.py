"""Conversions between librdkafka messages and tidings records."""

from __future__ import annotations

import logging
from typing import cast

from confluent_kafka import Consumer, KafkaError, Message

from ..._errors import TransportError
from ..._records import Record
from ._translate import translate

__all__ = ["take", "to_record", "to_records"]

log = logging.getLogger("tidings.kafka")


def take(consumer: Consumer, max_messages: int, wait: float) -> list[Message]:
    """Blocking: what is buffered now, else the first message within ``wait`` seconds
    plus whatever arrived with it. (``consume(n, timeout)`` alone waits the whole
    timeout unless ``n`` messages come, which would add ``wait`` to every delivery.)"""
    messages = consumer.consume(max_messages, 0)
    if messages or wait <= 0:
        return messages
    first = consumer.poll(wait)
    if first is None:
        return []
    return [first, *consumer.consume(max_messages - 1, 0)] if max_messages > 1 else [first]


def to_record(message: Message) -> Record:
    """The tidings record of a consumed message (headers and key decoded as UTF-8)."""
    key = message.key()
    # A consumed message's headers are a list of (name, bytes or None); the stubs allow
    # more. Plain loops, no comprehension: this runs once per consumed record.
    raw = cast("list[tuple[str, bytes | None]] | None", message.headers())
    headers: dict[str, str] = {}
    if raw:
        for name, value in raw:
            headers[name] = value.decode("utf-8", "replace") if value is not None else ""
    return Record(
        message.topic() or "",
        message.partition() or 0,
        message.offset() or 0,
        key.decode("utf-8", "replace") if key is not None else None,
        message.value() or b"",
        headers,
        message.timestamp()[1] / 1000.0,
    )


def to_records(messages: list[Message], what: str) -> list[Record]:
    """Records of a ``consume()`` batch; errors are logged, or raised if nothing came.

    Empties ``messages`` as it goes: a librdkafka message is an object the garbage
    collector tracks, and freeing each as soon as its record exists keeps a batch's
    worth of them from being promoted to an older generation by a collection that
    runs in the middle of the conversion."""
    records: list[Record] = []
    failure: TransportError | None = None
    for index in range(len(messages)):
        message = messages[index]
        messages[index] = None  # type: ignore[call-overload]  # see the docstring
        error = message.error()
        if error is None:
            records.append(to_record(message))
        elif error.code() != KafkaError._PARTITION_EOF:
            failure = translate(error, what, message.topic())
            if error.fatal():
                raise failure
            log.warning("%s: %s", what, failure)
    if failure is not None and not records:
        raise failure
    return records
