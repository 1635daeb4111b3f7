"""The one exception tree of tidings.

Every error tidings raises on purpose is a subclass of :class:`TidingsError`::

    TidingsError
    ├── ConfigurationError          bad settings, bad broker URL, bad declarations
    │   └── MissingDependencyError  an optional extra is not installed (names the pip extra)
    ├── SerializationError          a payload cannot be encoded at publish time
    ├── DecodeError                 a received message cannot be decoded for its handler
    ├── TransportError              the backend failed (driver errors are translated to this)
    │   ├── BrokerUnavailableError  the broker cannot be reached in time
    │   ├── UnknownTopicError       an admin call names a topic that does not exist
    │   ├── FencedError             this member lost a partition it was working on
    │   └── MessageTooLargeError    a record exceeds the backend's size limit
    ├── RequestTimeoutError         no reply arrived for app.request() in time
    ├── RemoteError                 the responder raised; carries its error type and message
    └── NotRunningError             the App is used outside ``async with app``

Handlers may raise anything; those exceptions are the user's and are handled by the
retry policy, never wrapped.
"""

from __future__ import annotations

__all__ = [
    "BrokerUnavailableError",
    "ConfigurationError",
    "DecodeError",
    "FencedError",
    "MessageTooLargeError",
    "MissingDependencyError",
    "NotRunningError",
    "RemoteError",
    "RequestTimeoutError",
    "SerializationError",
    "TidingsError",
    "TransportError",
    "UnknownTopicError",
]


class TidingsError(Exception):
    """Base class of every error tidings raises on purpose."""


class ConfigurationError(TidingsError, ValueError):
    """Settings, a broker URL or a declaration (subscriber, policy) is invalid."""


class MissingDependencyError(ConfigurationError, ImportError):
    """A backend needs an optional dependency; the message names the pip extra."""

    def __init__(self, feature: str, extra: str) -> None:
        super().__init__(
            f"{feature} needs an optional dependency: pip install 'tidings[{extra}]'"
        )
        self.extra = extra


class SerializationError(TidingsError, TypeError):
    """A payload cannot be encoded; raised by publish before anything is sent."""


class DecodeError(TidingsError):
    """A received message cannot be decoded into the handler's declared type.

    Never retried: the same bytes would fail the same way. It goes to the dead letters.
    """


class TransportError(TidingsError):
    """The backend failed. Driver exceptions are translated into this or a subclass."""


class BrokerUnavailableError(TransportError):
    """The broker could not be reached within the configured timeout."""


class UnknownTopicError(TransportError, LookupError):
    """An operation names a topic that does not exist."""


class FencedError(TransportError):
    """This member no longer owns a partition (its lease expired or it was revoked)."""


class MessageTooLargeError(TransportError):
    """A record is larger than the backend accepts."""


class RequestTimeoutError(TidingsError, TimeoutError):
    """No reply arrived for a request within its timeout."""


class RemoteError(TidingsError):
    """The responder's handler raised; ``error_type`` and ``message`` describe it."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(f"{error_type}: {message}")
        self.error_type = error_type
        self.message = message


class NotRunningError(TidingsError, RuntimeError):
    """The App was used to publish or request outside its ``async with`` block."""
