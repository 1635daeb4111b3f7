"""Connecting to RabbitMQ, staying connected, and telling every failure in one line.

:func:`connect` opens one connection to the first node of the URL that answers. A
:class:`Link` keeps one open: when the broker closes it (a node lost, a restart, a
network cut), it connects again in the background, node after node, with a backoff
doubling from 0.1 s to 2 s, and calls its ``on_reconnect`` callback (which re-opens what
lived on the old connection) before it says it is up. An outage is logged twice: one
line when it starts, one when it ends, never a line per try.

aiormq logs a failed connect at error level and raises it too; the raise reaches the
caller as one tidings error naming the cause (the broker down, the credentials, or the
vhost), so that log line is dropped by a filter on aiormq's logger (nothing else is).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import aiormq
from aiormq import exceptions as amqp

from ..._errors import BrokerUnavailableError, ConfigurationError, TransportError
from ._settings import AmqpSettings
from ._translate import translate

__all__ = ["Link", "check_cluster", "connect", "connect_one"]

log = logging.getLogger("tidings.amqp")
T = TypeVar("T")

_BACKOFF_FIRST, _BACKOFF_MAX = 0.1, 2.0


class _RaisedAnyway(logging.Filter):
    """Drops aiormq's log of a failed connect: the caller gets it as an exception."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.msg.startswith("error when creating transport")


logging.getLogger("aiormq.connection").addFilter(_RaisedAnyway())


def _where(address: tuple[str, int]) -> str:
    return f"{address[0]}:{address[1]}"


async def connect(settings: AmqpSettings,
                  first: int = 0) -> tuple[aiormq.abc.AbstractConnection, int]:
    """Open one connection to the first node that answers, trying them in the URL's
    order from node ``first``; the connection and the index of its node. Every node
    down: :class:`BrokerUnavailableError` naming each address tried and why."""
    nodes = settings.nodes()
    failures: list[str] = []
    for i in range(len(nodes)):
        index = (first + i) % len(nodes)
        try:
            return await connect_one(settings, nodes[index]), index
        except BrokerUnavailableError as exc:
            failures.append(str(exc))
    if len(failures) == 1:
        raise BrokerUnavailableError(failures[0])
    raise BrokerUnavailableError(f"no RabbitMQ node answered: {'; '.join(failures)}")


async def connect_one(settings: AmqpSettings,
                      address: tuple[str, int]) -> aiormq.abc.AbstractConnection:
    """Open one connection to ``address``, or raise a tidings error within
    ``connect_timeout``."""
    where = _where(address)
    try:
        return await asyncio.wait_for(aiormq.connect(settings.connection_url(address)),
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


async def check_cluster(settings: AmqpSettings, connection: aiormq.abc.AbstractConnection,
                        node: int) -> None:
    """For ``replicated=true``: every other node of the URL that answers must be a node
    of the cluster of ``connection`` (node ``node`` of the URL), else
    :class:`ConfigurationError`. An exclusive queue declared here is seen, locked, from
    a node of the same cluster and not at all from another broker. Nodes that do not
    answer are skipped (an outage, not a configuration)."""
    nodes = settings.nodes()
    probe = f"tidings.cluster-check.{id(connection):x}.{time.monotonic_ns()}"
    channel = await connection.channel()
    try:
        await channel.queue_declare(probe, exclusive=True, auto_delete=True)
        outsiders = await asyncio.gather(*(
            _outside(settings, nodes[i], probe) for i in range(len(nodes)) if i != node))
    finally:
        with contextlib.suppress(Exception):
            await channel.close()
    strangers = [where for where in outsiders if where]
    if strangers:
        raise ConfigurationError(
            f"replicated=true, but the node(s) at {', '.join(strangers)} are not in the "
            f"cluster of the node at {_where(nodes[node])}: the URL must name nodes of "
            "one RabbitMQ cluster")


async def _outside(settings: AmqpSettings, address: tuple[str, int], probe: str) -> str:
    """``address`` if that node answers and does not see ``probe``; else ``""``."""
    try:
        other = await connect_one(settings, address)
    except BrokerUnavailableError:
        return ""
    try:
        channel = await other.channel()
        await channel.queue_declare(probe, passive=True)
    except amqp.ChannelLockedResource:
        return ""  # seen, and held by another connection: the same cluster
    except amqp.ChannelNotFoundEntity:
        return _where(address)
    except (amqp.AMQPError, OSError):
        return ""
    finally:
        with contextlib.suppress(Exception):
            await other.close()
    return ""  # seen (unlocked): the same cluster


class Link:
    """One connection kept open: made again in the background whenever it is lost.

    ``on_reconnect(connection)`` runs on every new connection after the first, before
    the link is up again; if it fails, that connection is dropped and the link tries
    again. ``closed`` (set by :meth:`close`) stops it for good.
    """

    def __init__(self, settings: AmqpSettings,
                 on_reconnect: Callable[[aiormq.abc.AbstractConnection], Awaitable[None]],
                 ) -> None:
        self.settings = settings
        self._on_reconnect = on_reconnect
        self._connection: aiormq.abc.AbstractConnection | None = None
        self._node = 0
        self._up = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        #: When the current outage began (monotonic), None while up.
        self.down_since: float | None = None
        self.last_error = ""

    @property
    def where(self) -> str:
        """The address of the node connected to (or last connected to)."""
        return _where(self.settings.nodes()[self._node])

    async def open(self) -> aiormq.abc.AbstractConnection:
        """Connect (to the first node that answers), or raise at once."""
        self._closed = False
        connection, self._node = await connect(self.settings)
        if self.settings.replicated:
            try:
                await check_cluster(self.settings, connection, self._node)
            except BaseException:
                with contextlib.suppress(Exception):
                    await connection.close()
                raise
        self._attach(connection)
        return connection

    def _attach(self, connection: aiormq.abc.AbstractConnection) -> None:
        self._connection = connection
        self._up.set()
        connection.closing.add_done_callback(lambda f: self._lost(connection, f))

    def _lost(self, connection: aiormq.abc.AbstractConnection, closing: asyncio.Future[object],
              ) -> None:
        if self._closed or connection is not self._connection or self._task is not None:
            return
        reason = closing.exception() if not closing.cancelled() else None
        self.last_error = str(reason) or type(reason).__name__ if reason else "closed"
        self.down_since = time.monotonic()
        self._up.clear()
        log.warning("lost the connection to RabbitMQ at %s (%s); connecting again",
                    self.where, self.last_error)
        self._task = asyncio.get_running_loop().create_task(self._reconnect())

    async def _reconnect(self) -> None:
        backoff = _BACKOFF_FIRST
        while not self._closed:
            try:
                connection, node = await connect(self.settings, self._node)
            except TransportError as exc:  # ConfigurationError too: a vhost deleted...
                self.last_error = str(exc)
            except ConfigurationError as exc:
                self.last_error = str(exc)
            else:
                try:
                    await self._on_reconnect(connection)
                except (TransportError, amqp.AMQPError, OSError) as exc:
                    self.last_error = str(exc) or type(exc).__name__
                    with contextlib.suppress(Exception):
                        await connection.close()
                else:
                    self._finish(connection, node)
                    return
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _BACKOFF_MAX)

    def _finish(self, connection: aiormq.abc.AbstractConnection, node: int) -> None:
        outage = time.monotonic() - (self.down_since or time.monotonic())
        self._node, self._task, self.down_since = node, None, None
        log.warning("connected to RabbitMQ again, at %s, after %.1f s", self.where, outage)
        self._attach(connection)

    @property
    def up(self) -> bool:
        """Whether the connection is open now."""
        connection = self._connection
        return self._up.is_set() and connection is not None and not connection.is_closed

    @property
    def connection(self) -> aiormq.abc.AbstractConnection:
        """The open connection; :class:`BrokerUnavailableError` during an outage."""
        connection = self._connection
        if connection is None or connection.is_closed or not self._up.is_set():
            raise self.unavailable()
        return connection

    def unavailable(self) -> BrokerUnavailableError:
        """The error for "the broker is unreachable now"."""
        if self._connection is None or self._closed:
            return BrokerUnavailableError("the RabbitMQ transport is not connected")
        nodes = ", ".join(_where(a) for a in self.settings.nodes())
        if self.down_since is None:  # closed a moment ago: the link has not heard yet
            return BrokerUnavailableError(
                f"the connection to RabbitMQ at {self.where} closed; connecting again "
                f"(nodes: {nodes})")
        since = time.monotonic() - self.down_since
        return BrokerUnavailableError(
            f"RabbitMQ unreachable for {since:.1f} s (nodes: {nodes}): {self.last_error}")

    async def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the link to be up; whether it is."""
        deadline = time.monotonic() + timeout
        while not self.up:
            remaining = deadline - time.monotonic()
            if self._closed or self._connection is None or remaining <= 0:
                return False
            if self._up.is_set():  # closed a moment ago: let the link hear of it
                await asyncio.sleep(min(0.01, remaining))
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._up.wait(), remaining)
        return True

    async def retry(self, what: str, attempt: Callable[[], Awaitable[T]]) -> T:
        """``attempt()``, tried again on the next connection while the broker is
        unreachable, for up to ``publish_timeout`` seconds in all; then
        :class:`BrokerUnavailableError` naming ``what``. Only errors that say the
        broker is unreachable (or the connection or channel broke) are retried."""
        deadline = time.monotonic() + self.settings.publish_timeout
        pause = 0.05
        while True:
            try:
                return await attempt()
            except BrokerUnavailableError as exc:
                if self._closed or self._connection is None:
                    raise
                last = str(exc)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BrokerUnavailableError(
                    f"{what}: RabbitMQ unreachable for publish_timeout="
                    f"{self.settings.publish_timeout:g} s ({last})") from None
            if await self.wait(remaining):
                # Up, yet it failed (a stream electing a new leader): again, shortly.
                await asyncio.sleep(min(pause, remaining))
                pause = min(pause * 2, 1.0)

    async def close(self) -> None:
        """Stop reconnecting and close the connection."""
        self._closed = True
        self._up.clear()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(Exception):
                await connection.close()
