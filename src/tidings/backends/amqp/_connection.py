"""Connecting to RabbitMQ, with every failure told in one line.

aiormq logs a failed connect at error level and raises it too; the raise reaches the
caller as one tidings error naming the cause (the broker down, the credentials, or the
vhost), so that log line is dropped by a filter on aiormq's logger (nothing else is).
"""

from __future__ import annotations

import asyncio
import logging

import aiormq
from aiormq import exceptions as amqp

from ..._errors import BrokerUnavailableError, ConfigurationError
from ._settings import AmqpSettings
from ._translate import translate

__all__ = ["connect"]



class _RaisedAnyway(logging.Filter):
    """Drops aiormq's log of a failed connect: the caller gets it as an exception."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.msg.startswith("error when creating transport")


logging.getLogger("aiormq.connection").addFilter(_RaisedAnyway())


async def connect(settings: AmqpSettings) -> aiormq.abc.AbstractConnection:
    """Open one connection, or raise a tidings error within ``connect_timeout``."""
    where = f"{settings.host}:{settings.port}"
    try:
        return await asyncio.wait_for(aiormq.connect(settings.connection_url()),
                                      settings.connect_timeout)
    except TimeoutError:
        raise BrokerUnavailableError(
            f"RabbitMQ at {where} did not answer within {settings.connect_timeout:g} s"
        ) from None
    except amqp.ProbableAuthenticationError as exc:
        raise ConfigurationError(
            f"RabbitMQ at {where} refused the credentials of user {settings.username!r}"
            f" ({exc})"
        ) from None
    except (amqp.ConnectionNotAllowed, amqp.InvalidFrameError) as exc:
        if isinstance(exc, amqp.InvalidFrameError) and "Connection.Close" not in str(exc):
            raise translate(exc, f"connecting to RabbitMQ at {where}") from None
        # Past authentication, the broker closes the connection instead of opening the
        # vhost: it does not exist, or the user has no permission on it.
        raise ConfigurationError(
            f"RabbitMQ at {where} refused to open vhost {settings.vhost!r} for user "
            f"{settings.username!r}: the vhost does not exist or the user has no "
            "permission on it"
        ) from None
    except (OSError, amqp.AMQPError) as exc:
        error = translate(exc, f"connecting to RabbitMQ at {where}")
        raise error from None
