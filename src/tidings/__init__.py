"""tidings: event-driven services in Python on a durable message bus.

Publish/subscribe with consumer groups, work queues with priority and delay,
request/reply, retries with backoff and dead letters, over an embedded SQLite log,
an in-memory log for tests, or Kafka, with one API.
"""

from __future__ import annotations

from ._app import DEFAULT_BROKER, App
from ._cron import CatchUp, CronError, cron
from ._dlq import DeadLetter, DeadLetters
from ._errors import (
    BrokerUnavailableError,
    ConfigurationError,
    DecodeError,
    FencedError,
    MessageTooLargeError,
    MissingDependencyError,
    NotRunningError,
    RemoteError,
    RequestTimeoutError,
    SerializationError,
    TidingsError,
    TransportError,
    UnknownTopicError,
)
from ._lag import Health, PartitionLag
from ._message import Headers, Message, Outgoing, Published, PublishedMany
from ._middleware import AppendCall, AppendNext, CallNext, HandlerCall, Middleware
from ._records import (
    GroupInfo,
    MemberInfo,
    Position,
    Record,
    Start,
    TopicInfo,
    TopicPartition,
)
from ._redact import redact_url
from ._retry import RetryPolicy

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_BROKER",
    "App",
    "AppendCall",
    "AppendNext",
    "BrokerUnavailableError",
    "CallNext",
    "CatchUp",
    "ConfigurationError",
    "CronError",
    "DeadLetter",
    "DeadLetters",
    "DecodeError",
    "FencedError",
    "GroupInfo",
    "HandlerCall",
    "Headers",
    "Health",
    "MemberInfo",
    "Message",
    "MessageTooLargeError",
    "Middleware",
    "MissingDependencyError",
    "NotRunningError",
    "Outgoing",
    "PartitionLag",
    "Position",
    "Published",
    "PublishedMany",
    "Record",
    "RemoteError",
    "RequestTimeoutError",
    "RetryPolicy",
    "SerializationError",
    "Start",
    "TidingsError",
    "TopicInfo",
    "TopicPartition",
    "TransportError",
    "UnknownTopicError",
    "__version__",
    "cron",
    "redact_url",
]
