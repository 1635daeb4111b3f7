"""Errors of the event sourcing toolkit, all in the one tidings tree.

::

    TidingsError
    ├── ConfigurationError
    │   └── UnknownEventTypeError     an event class was never registered (raised at save)
    └── EventSourcingError
        ├── ConcurrencyConflictError  a stale writer: the stream moved on since it was loaded
        ├── AggregateNotFoundError    no events are stored for this stream
        ├── UpcastError               a stored event cannot be read into today's model
        └── ProjectionError           a projection handler failed on a stored event
"""

from __future__ import annotations

from .._errors import ConfigurationError, TidingsError

__all__ = [
    "AggregateNotFoundError",
    "ConcurrencyConflictError",
    "EventSourcingError",
    "ProjectionError",
    "UnknownEventTypeError",
    "UpcastError",
]


class UnknownEventTypeError(ConfigurationError):
    """An aggregate recorded an event whose class the store's registry does not know."""


class EventSourcingError(TidingsError):
    """An operation on the event store or a projection failed."""


class ConcurrencyConflictError(EventSourcingError):
    """Another writer appended to the stream after this aggregate was loaded.

    Nothing of this save was stored. Load the aggregate again, re-run the command, save.
    """

    def __init__(self, stream_id: str, expected_version: int) -> None:
        super().__init__(
            f"stream {stream_id!r} was changed by another writer: this aggregate was loaded "
            f"at version {expected_version}, but version {expected_version + 1} is already "
            "stored; load it again and retry"
        )
        self.stream_id = stream_id
        self.expected_version = expected_version


class AggregateNotFoundError(EventSourcingError, LookupError):
    """No events are stored for the stream (or none up to the requested version)."""


class UpcastError(EventSourcingError):
    """A stored event cannot be read into today's model: an unknown event type, a gap in
    the chain of upcasters, or data the model rejects. Never skipped silently."""

    def __init__(self, stream_id: str, version: int, event_type: str, schema_version: int,
                 reason: str) -> None:
        super().__init__(
            f"cannot read event {event_type!r} (schema v{schema_version}) at version {version} "
            f"of stream {stream_id!r}: {reason}"
        )
        self.stream_id = stream_id
        self.version = version
        self.event_type = event_type
        self.schema_version = schema_version
        self.reason = reason


class ProjectionError(EventSourcingError):
    """A projection could not handle a stored event; its position stays before it."""

    def __init__(self, projection: str, position: int, stream_id: str, version: int,
                 reason: str) -> None:
        super().__init__(
            f"projection {projection!r} failed at position {position} (stream {stream_id!r} "
            f"version {version}): {reason}"
        )
        self.projection = projection
        self.position = position
        self.stream_id = stream_id
        self.version = version
