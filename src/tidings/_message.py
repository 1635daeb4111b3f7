"""The envelope handlers see, and the header names tidings reserves."""

from __future__ import annotations

import contextvars
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from ._records import Record

__all__ = ["Headers", "Message", "Outgoing", "Published", "current_message"]


class Headers:
    """Header names tidings writes. Everything with the ``tidings-`` prefix is reserved."""

    ID = "tidings-id"
    CORRELATION_ID = "tidings-correlation-id"
    CAUSATION_ID = "tidings-causation-id"
    CONTENT_TYPE = "content-type"
    REPLY_TO = "tidings-reply-to"
    REPLY_STATUS = "tidings-reply-status"
    REDRIVE_GROUP = "tidings-redrive-group"
    PRIORITY = "tidings-priority"
    DLQ_TOPIC = "tidings-dlq-topic"
    DLQ_PARTITION = "tidings-dlq-partition"
    DLQ_OFFSET = "tidings-dlq-offset"
    DLQ_KEY_NULL = "tidings-dlq-key-null"
    DLQ_GROUP = "tidings-dlq-group"
    DLQ_ERROR_TYPE = "tidings-dlq-error-type"
    DLQ_ERROR_MESSAGE = "tidings-dlq-error-message"
    DLQ_ATTEMPTS = "tidings-dlq-attempts"
    DLQ_FAILED_AT = "tidings-dlq-failed-at"
    DLQ_RESOLVES = "tidings-dlq-resolves"


@dataclass(slots=True)
class Message:
    """A received message: the record plus what tidings knows about this delivery.

    ``attempt`` counts deliveries to this handler in this process, starting at 1; a
    message redelivered after a crash starts again at 1. ``correlation_id`` is the
    conversation's: the first message's id, carried by everything it caused (a message
    that starts one has no header and its own id here). Read-only by convention (a
    plain slotted dataclass: one is built for every delivery).
    """

    id: str
    topic: str
    partition: int
    offset: int
    key: str | None
    headers: Mapping[str, str]
    timestamp: float
    attempt: int
    correlation_id: str | None
    causation_id: str | None
    body: bytes

    @classmethod
    def from_record(cls, record: Record, attempt: int) -> Message:
        """Build the envelope of ``record`` for delivery number ``attempt``."""
        headers = record.headers
        message_id = headers.get(Headers.ID) or f"{record.topic}-{record.partition}-{record.offset}"
        return cls(  # positional: this runs once per handled message
            message_id,
            record.topic,
            record.partition,
            record.offset,
            record.key,
            headers,
            record.timestamp,
            attempt,
            headers.get(Headers.CORRELATION_ID) or message_id,
            headers.get(Headers.CAUSATION_ID),
            record.value,
        )


@dataclass(slots=True, unsafe_hash=True)  # hashable, as it was when frozen
class Published:
    """What ``App.publish`` returns: the message id and where it landed.

    ``partition`` and ``offset`` are None for a delayed message not yet in the log.
    """

    id: str
    topic: str
    partition: int | None
    offset: int | None


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message for :meth:`App.publish_batch`: any topic, its own key, headers and
    delay (seconds, a timedelta or an aware datetime)."""

    topic: str
    payload: Any
    key: str | None = None
    headers: Mapping[str, str] | None = None
    delay: float | timedelta | datetime | None = None


#: The message whose handler is running in this task (for correlation and causation).
current_message: contextvars.ContextVar[Message | None] = contextvars.ContextVar(
    "tidings_current_message", default=None
)
