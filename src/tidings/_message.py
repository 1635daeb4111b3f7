"""The envelope handlers see, and the header names tidings reserves."""

from __future__ import annotations

import contextvars
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from ._errors import TransportError
from ._lazy import LazySequence
from ._records import Position, Record

__all__ = ["Headers", "Message", "Outgoing", "Published", "PublishedMany", "current_message"]


class Headers:
    """Header names tidings writes. Everything with the ``tidings-`` prefix is reserved."""

    ID = "tidings-id"
    CORRELATION_ID = "tidings-correlation-id"
    CAUSATION_ID = "tidings-causation-id"
    #: the name of the app that first published the message (kept by re-drives)
    SOURCE = "tidings-source"
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
    message redelivered after a crash starts again at 1, unless its subscriber's retries
    are non-blocking (``RetryPolicy(blocking=False)``): a parked message keeps its
    count. ``correlation_id`` is the conversation's: the first message's id, carried by
    everything it caused (a message that starts one has no header and its own id here).
    Read-only by convention (a plain slotted dataclass: one is built for every delivery).
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
        message_id, correlation_id = _ids_of(record)
        return cls(  # positional: this runs once per handled message
            message_id,
            record.topic,
            record.partition,
            record.offset,
            record.key,
            headers,
            record.timestamp,
            attempt,
            correlation_id,
            headers.get(Headers.CAUSATION_ID),
            record.value,
        )


def _ids_of(record: Record) -> tuple[str, str]:
    """``(id, correlation id)`` of a received record: its id header (else its place in
    the log), and the correlation header (else its own id: it starts a conversation)."""
    headers = record.headers
    message_id = headers.get(Headers.ID) or f"{record.topic}-{record.partition}-{record.offset}"
    return message_id, headers.get(Headers.CORRELATION_ID) or message_id


@dataclass(slots=True, unsafe_hash=True)  # hashable, as it was when frozen
class Published:
    """What ``App.publish`` returns: the message id and where it landed.

    ``partition`` and ``offset`` are None for a delayed message not yet in the log.
    """

    id: str
    topic: str
    partition: int | None
    offset: int | None


class PublishedMany(LazySequence[Published]):
    """What ``App.publish_many`` and ``publish_batch`` return: a read-only sequence of
    :class:`Published`, each made when it is read (most callers read none)."""

    __slots__ = ("_ids", "_positions", "_topics")

    def __init__(self, ids: list[str], topics: str | list[str],
                 positions: Sequence[Position]) -> None:
        if len(positions) != len(ids):
            raise TransportError(f"the transport reported {len(positions)} positions "
                                 f"for {len(ids)} messages")
        self._ids, self._topics, self._positions = ids, topics, positions

    def __len__(self) -> int:
        return len(self._ids)

    def _item(self, index: int) -> Published:
        position = self._positions[index]
        topic = self._topics if isinstance(self._topics, str) else self._topics[index]
        return Published(self._ids[index], topic, position.partition, position.offset)


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message for :meth:`App.publish_batch`: any topic, its own key, headers and
    delay (seconds, a timedelta or an aware datetime)."""

    topic: str
    payload: Any
    key: str | None = None
    headers: Mapping[str, str] | None = None
    delay: float | timedelta | datetime | None = None


class _CurrentMessage:
    """The message whose handler runs in this task (for correlation and causation).

    Set to a :class:`Message`, or to the bare :class:`Record` of a first delivery to a
    handler that takes no Message: most never ask for it, so it is built only when
    someone does (:meth:`get`), and :meth:`ids` reads the ids without building it.
    """

    __slots__ = ("var",)

    def __init__(self) -> None:
        self.var: contextvars.ContextVar[Message | Record | None] = contextvars.ContextVar(
            "tidings_current_message", default=None
        )

    def get(self) -> Message | None:
        """The message being handled, or None outside a handler (the same object for
        every call within one handler call)."""
        value = self.var.get()
        if isinstance(value, Record):  # built on first use, then kept for this delivery
            message = Message.from_record(value, 1)
            self.var.set(message)  # the worker's reset() still restores what came before
            return message
        return value

    def set(self, value: Message | Record | None) -> contextvars.Token[Message | Record | None]:
        """Make ``value`` the current message until :meth:`reset`."""
        return self.var.set(value)

    def reset(self, token: contextvars.Token[Message | Record | None]) -> None:
        """Restore the current message from before ``set``."""
        self.var.reset(token)

    def ids(self) -> tuple[str, str] | None:
        """``(id, correlation id)`` of the message being handled, or None."""
        value = self.var.get()
        if value is None:
            return None
        if isinstance(value, Message):
            return value.id, value.correlation_id or value.id
        return _ids_of(value)


#: The message whose handler is running in this task (for correlation and causation).
current_message = _CurrentMessage()
