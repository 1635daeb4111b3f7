"""tidings' own bookkeeping as small JSON streams it tails: the topics registry, the
groups registry and each group's committed offsets.

A stream cannot say where it ends over AMQP 0-9-1, so :meth:`JsonLog.sync` appends a
marker of its own and waits until the tail reads it back: everything appended before
the call is then known. A stream is totally ordered, so "the first claim wins" and "the
last commit wins" need no other coordination. When the broker cancels the tail (the
node of the stream's replica it read went down), it starts again past the last entry it
saw.
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
from ._channels import open_channel, shielded
from ._streams import declare_stream, offset_of
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
        self._acking = 0  # acks on their way to the socket
        self._acked = asyncio.Event()
        self._next = 0  # the offset of the next entry to see
        self._retail: asyncio.Task[None] | None = None

    @property
    def alive(self) -> bool:
        """Whether the tail's channel is open (it is not once its connection closed)."""
        return self._channel is not None and not self._channel.is_closed

    async def open(self) -> None:
        """Declare the stream and start tailing it from its first entry."""
        with driver_errors(f"opening tidings' stream {self.name!r}"):
            await shielded(self._open())

    async def _open(self) -> None:
        channel = await open_channel(self._connection)
        try:
            channel.on_consumer_cancel_callbacks.add(self._cancelled)
            await declare_stream(channel, self.name)
            await channel.basic_qos(prefetch_count=1000)
            self._channel = channel  # before the first delivery: each one is acked
            await self._tail(channel)
        except BaseException:
            self._channel = None
            with contextlib.suppress(Exception):
                await channel.close()
            raise

    async def _tail(self, channel: AbstractChannel) -> None:
        await channel.basic_consume(self.name, self._deliver, no_ack=False,
                                    arguments={"x-stream-offset": self._next})

    def _cancelled(self, frame: object) -> None:
        # Called by the channel's reader: consuming again there would wait on itself.
        if self._channel is not None and self._retail is None:
            self._retail = asyncio.get_running_loop().create_task(self._tail_again())

    async def _tail_again(self) -> None:
        delay = 0.1
        try:
            while (channel := self._channel) is not None and not channel.is_closed:
                try:
                    await shielded(self._tail(channel))
                    return
                except Exception:  # the stream has no leader yet: try again shortly
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 2.0)
        finally:
            self._retail = None

    async def _deliver(self, message: DeliveredMessage) -> None:
        offset = offset_of(message)
        if offset < 0 or offset >= self._next:  # else seen before a re-tail
            self._next = max(self._next, offset + 1)
            self._handle(json.loads(message.body))
        channel = self._channel
        if channel is None or channel is not message.channel:
            return  # closing: a frame after its close would cost the connection
        self._acking += 1
        try:
            with contextlib.suppress(Exception):
                await channel.basic_ack(message.delivery_tag or 0)  # grants credit
        finally:
            self._acking -= 1
            if not self._acking:
                self._acked.set()

    def _handle(self, entry: dict[str, Any]) -> None:
        mark = entry.get("sync")
        if mark is None:
            self._on_entry(entry)
        else:
            future = self._marks.pop(mark, None)
            if future is not None and not future.done():
                future.set_result(None)

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
        channel, self._channel = self._channel, None
        if self._retail is not None:
            self._retail.cancel()
        if channel is not None and not channel.is_closed:
            with contextlib.suppress(Exception):
                await shielded(self._close(channel))

    async def _close(self, channel: AbstractChannel) -> None:
        # An ack still waiting for room in aiormq's write queue could reach the broker
        # after the close (asyncio's queue does not keep waiting writers in order), and
        # the broker closes the connection for a frame on a closed channel (504).
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5.0):
                while self._acking:
                    self._acked.clear()
                    await self._acked.wait()
        await channel.close()
