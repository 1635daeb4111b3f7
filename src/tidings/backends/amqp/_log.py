"""tidings' own bookkeeping as small JSON streams it tails: the topics registry, the
groups registry and each group's committed offsets.

A stream cannot say where it ends over AMQP 0-9-1, so :meth:`JsonLog.sync` appends a
marker of its own and waits until the tail reads it back: everything appended before
the call is then known. A stream is totally ordered, so "the first claim wins" and "the
last commit wins" need no other coordination.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from aiormq.abc import AbstractChannel, AbstractConnection, DeliveredMessage
from pamqp.commands import Basic

from ..._errors import BrokerUnavailableError
from ._streams import declare_stream
from ._translate import driver_errors

__all__ = ["JsonLog", "Publish"]

Publish = Callable[[str, bytes, Basic.Properties], Awaitable[None]]
_PERSISTENT = Basic.Properties(delivery_mode=2)


class JsonLog:
    """A tailed stream of JSON entries; ``on_entry`` sees each one, in order."""

    def __init__(self, connection: AbstractConnection, publish: Publish, name: str,
                 on_entry: Callable[[dict[str, Any]], None]) -> None:
        self.name = name
        self._connection = connection
        self._publish = publish
        self._on_entry = on_entry
        self._channel: AbstractChannel | None = None
        self._marks: dict[str, asyncio.Future[None]] = {}
        # Acks are sent by delivery tasks without aiormq's channel lock; close waits for
        # any ack still waiting for room in the connection's write queue, so that no ack
        # can follow the channel.close (RabbitMQ would close the whole connection: 504).
        self._acking = asyncio.Lock()

    async def open(self) -> None:
        """Declare the stream and start tailing it from its first entry."""
        with driver_errors(f"opening tidings' stream {self.name!r}"):
            self._channel = channel = await self._connection.channel()
            await declare_stream(channel, self.name)
            await channel.basic_qos(prefetch_count=1000)
            await channel.basic_consume(self.name, self._deliver, no_ack=False,
                                        arguments={"x-stream-offset": "first"})

    async def _deliver(self, message: DeliveredMessage) -> None:
        entry = json.loads(message.body)
        mark = entry.get("sync")
        if mark is None:
            self._on_entry(entry)
        else:
            future = self._marks.pop(mark, None)
            if future is not None and not future.done():
                future.set_result(None)
        async with self._acking:
            if self._channel is not None:
                with contextlib.suppress(Exception):
                    await self._channel.basic_ack(message.delivery_tag or 0, wait=False)

    async def append(self, *entries: dict[str, Any]) -> None:
        """Append entries durably (each confirmed by the broker)."""
        await asyncio.gather(*(
            self._publish(self.name, json.dumps(e).encode(), _PERSISTENT) for e in entries
        ))

    async def sync(self, timeout: float = 30.0) -> None:
        """Return once every entry appended before this call has been seen."""
        mark = uuid.uuid4().hex
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._marks[mark] = future
        try:
            await self.append({"sync": mark})
            await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise BrokerUnavailableError(
                f"RabbitMQ did not give back a marker of stream {self.name!r} within "
                f"{timeout:g} s") from None
        finally:
            self._marks.pop(mark, None)

    async def close(self) -> None:
        """Stop tailing."""
        async with self._acking:
            channel, self._channel = self._channel, None
        if channel is not None:
            with contextlib.suppress(Exception):
                await channel.close()
