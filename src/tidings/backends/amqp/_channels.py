"""Channels for one question at a time, safe from cancellation.

RabbitMQ answers an error on a channel (a queue held by another connection, a stream
not there) by closing that channel; aiormq answers a call cancelled under it (a caller's
timeout, a task cancelled) by closing the channel too. When both happen at once, the
broker gets a ``channel.close`` for a channel it is closing, then a ``close-ok`` for one
it has forgotten, and closes the whole connection (``504 CHANNEL_ERROR - expected
'channel.open'``), and with it every partition lock of the process. So every call that
can fail on the broker's side runs to its end in a task of its own (:func:`shielded`):
a caller cancelled meanwhile goes at once, the call finishes without it and its channel
is closed cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from aiormq.abc import AbstractChannel, AbstractConnection

from ..._errors import BrokerUnavailableError

__all__ = ["on_channel", "open_channel", "shielded"]

T = TypeVar("T")

#: Calls that outlived a cancelled caller: referenced until they end.
_orphans: set[asyncio.Task[Any]] = set()


def _orphaned(task: asyncio.Task[Any]) -> None:
    _orphans.discard(task)
    if not task.cancelled():
        task.exception()  # retrieved: nobody waits for it any more


async def shielded(call: Coroutine[Any, Any, T]) -> T:
    """``await call``, except that cancelling the caller does not cancel ``call``: it
    runs to its end (its outcome is dropped) while the caller is cancelled at once."""
    task = asyncio.ensure_future(call)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        if not task.done():
            _orphans.add(task)
            task.add_done_callback(_orphaned)
        raise


async def open_channel(connection: AbstractConnection) -> AbstractChannel:
    """A new channel without publisher confirms (one round trip fewer)."""
    try:
        return await connection.channel(publisher_confirms=False)
    except RuntimeError as exc:  # aiormq's way to say the connection is closed
        raise BrokerUnavailableError(f"RabbitMQ unavailable ({exc})") from None


async def on_channel(connection: AbstractConnection,
                     call: Callable[[AbstractChannel], Awaitable[T]]) -> T:
    """``call(channel)`` on a channel of its own, closed afterwards, :func:`shielded`."""

    async def run() -> T:
        channel = await open_channel(connection)
        try:
            return await call(channel)
        finally:
            if not channel.is_closed:
                with contextlib.suppress(Exception):
                    await channel.close()

    return await shielded(run())
