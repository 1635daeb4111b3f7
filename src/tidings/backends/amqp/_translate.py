"""The one place where aiormq errors become tidings errors.

Every call into aiormq that can fail runs inside :func:`driver_errors`, so callers above
the backend only ever see the tidings exception tree.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

from aiormq import exceptions as amqp

from ..._errors import (
    BrokerUnavailableError,
    ConfigurationError,
    MessageTooLargeError,
    TransportError,
)

__all__ = ["driver_errors", "translate"]

#: What RabbitMQ says when a queue's or stream's node is down (a cluster failing over).
_NODE_DOWN = ("is down or inaccessible", "not available", "unavailable", "timeout",
              "does not have a replica on the local node")


def translate(exc: BaseException, what: str) -> Exception:
    """The tidings error for an aiormq (or socket) error met while doing ``what``."""
    text = str(exc) or type(exc).__name__
    if isinstance(exc, amqp.ChannelClosed) and any(m in text for m in _NODE_DOWN):
        # A queue or stream whose node is down (a cluster electing a new leader): the
        # broker is unreachable for it, for now; callers wait and try again.
        return BrokerUnavailableError(f"{what}: RabbitMQ unavailable ({text})")
    if isinstance(exc, amqp.ChannelPreconditionFailed):
        # 406 PRECONDITION_FAILED: declared with other arguments than it has, or a
        # message above the broker's max_message_size.
        if "message size" in text or "max_message_size" in text:
            return MessageTooLargeError(f"{what}: the message exceeds RabbitMQ's limit ({text})")
        return ConfigurationError(f"{what}: it exists on the broker with other arguments "
                                  f"({text})")
    if isinstance(exc, amqp.ChannelAccessRefused | amqp.ConnectionNotAllowed):
        return ConfigurationError(f"{what}: access refused ({text})")
    if isinstance(exc, amqp.ChannelNotFoundEntity):
        return TransportError(f"{what}: not found ({text})")
    if isinstance(exc, amqp.ConnectionFrameError | amqp.ConnectionSyntaxError):
        return MessageTooLargeError(f"{what}: the broker refused the frame ({text})")
    if isinstance(exc, ConnectionError | OSError | asyncio.TimeoutError
                  | amqp.ConnectionClosed | amqp.AMQPConnectionError):
        return BrokerUnavailableError(f"{what}: RabbitMQ unavailable ({text})")
    return TransportError(f"{what}: {text}")


@contextlib.contextmanager
def driver_errors(what: str) -> Iterator[None]:
    """Translate aiormq exceptions raised inside the block."""
    try:
        yield
    except (TimeoutError, amqp.AMQPError, OSError) as exc:
        raise translate(exc, what) from exc
