"""Connecting to RabbitMQ, with every failure told in one line.

aiormq logs nothing of its own worth keeping when a connect fails (the error reaches the
caller), so its loggers are quietened below warning; what fails is raised as one tidings
error naming the cause: the broker down, the credentials, or the vhost.
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

for _name in ("aiormq", "aiormq.connection", "aio_pika"):
    logging.getLogger(_name).setLevel(logging.ERROR)


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
    except amqp.ConnectionNotAllowed as exc:
        raise ConfigurationError(
            f"RabbitMQ at {where} refused access to vhost {settings.vhost!r} for user "
            f"{settings.username!r} (missing vhost or permissions: {exc})"
        ) from None
    except (OSError, amqp.AMQPError) as exc:
        error = translate(exc, f"connecting to RabbitMQ at {where}")
        raise error from None
