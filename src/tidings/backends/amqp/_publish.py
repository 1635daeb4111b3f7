"""Publishing many messages in one frame batch on a confirm-mode channel.

aiormq publishes one message a call: a ``basic.publish``, a content header and a body
marshalled by pamqp (~50 µs), a delivery tag, a confirmation future and one write to the
socket each. :class:`BatchPublisher` queues the messages of every caller and writes as
many as are waiting (up to :data:`BATCH_MESSAGES` or :data:`BATCH_BYTES`) as one frame
batch; whatever arrives while a batch is written goes in the next, so concurrent single
publishes are coalesced too. Frames are marshalled here, by the caller (so a message
pamqp cannot encode fails its own publish only): the ``basic.publish`` of an exchange
and routing key once, the content header of string headers and a delivery mode
(tidings' messages) packed directly, byte for byte what pamqp makes.

It relies on aiormq's channel internals, which is why ``pyproject.toml`` pins aiormq to
the tested range and ``tests/backends/test_amqp_publish.py`` tests each of them:

- ``channel.lock``: the lock ``basic_publish`` and every RPC (``channel.close`` too) hold
  while they write. Holding it, delivery tags follow the order of frames on the wire, and
  no frame goes out after a ``channel.close`` the client sent.
- ``channel.delivery_tag`` and ``channel.confirmations``: the confirm of tag ``t``
  resolves ``confirmations[t]``: an ack calls its ``set_result``, a nack its
  ``set_exception`` with a ``DeliveryError``. A caller's batch stands there itself.
- ``channel.create_future()``: a future the channel fails with its close reason when it
  closes, which fails every message of a batch not confirmed yet: never a silent loss.
- ``channel.message_id_delivery_tag``: every message is ``mandatory`` and has a message
  id (one of the publisher's own unless it brought one), registered there with its
  delivery tag; a message no queue takes (its stream deleted) comes back as a
  ``basic.return``, which aiormq finds by that id and fails as a ``PublishError`` (before
  the ack the broker sends for it anyway): never confirmed and dropped.
- the channel's close event (set once a close is sent or received) and
  ``connection.write_queue`` (bounded): both are checked, and the batch enqueued with
  ``put_nowait``, in one step with no ``await`` between. A frame queued behind the
  ``channel.close-ok`` of a channel the broker closed would make the broker close the
  whole connection (``504 CHANNEL_ERROR - expected 'channel.open'``).

Cancelling a caller never cancels a write half-done: batches are written by a task of
the publisher's own; a caller cancelled before its messages were written drops them.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import functools
import itertools
import os
import struct
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiormq import Channel
from aiormq.abc import AbstractChannel, ChannelFrame
from aiormq.exceptions import ChannelInvalidStateError
from pamqp.commands import Basic
from pamqp.header import ContentHeader

__all__ = ["BATCH_BYTES", "BATCH_MESSAGES", "BatchPublisher", "Message", "content_header"]

#: (exchange, routing key, body, properties)
Message = tuple[str, str, bytes, Basic.Properties]
OpenChannel = Callable[[], Awaitable[AbstractChannel]]
# A message marshalled but for the channel number: basic.publish and content header
# payloads, the body, and its message id.
_Marshalled = tuple[bytes, bytes, bytes, str]

BATCH_MESSAGES = 1000
BATCH_BYTES = 1 << 20

_FRAME = struct.Struct(">BHI")
_HEADER = struct.Struct(">HxxQH")  # class, weight, body size, property flags
_LONG = struct.Struct(">I")
_END = b"\xce"
_METHOD, _HEADER_FRAME, _BODY = 1, 2, 3
_HEADERS_AND_DELIVERY_MODE = 0x2000 | 0x1000  # property flags
_MESSAGE_ID = 0x0080
_OCTETS = [bytes((i,)) for i in range(256)]
_KEYS: dict[str, bytes] = {}  # a header name, encoded as a table key and a string tag


class _Call:
    """One caller's messages and the future it awaits. It stands in the channel's
    ``confirmations`` for each of its delivery tags: aiormq calls ``set_result`` on an
    ack and ``set_exception`` on a nack (after ``done()``, which stays False so that a
    late confirm is never logged as ignored)."""

    __slots__ = ("future", "left", "messages")

    def __init__(self, messages: list[_Marshalled], future: asyncio.Future[None]) -> None:
        self.messages = messages
        self.future = future
        self.left = len(messages)

    def fail(self, exc: BaseException) -> None:
        if self.future.done():
            return
        if isinstance(exc, asyncio.CancelledError):
            self.future.cancel()
        else:
            self.future.set_exception(exc)

    def done(self) -> bool:
        return False

    def set_result(self, _: object) -> None:
        """One message's ack came."""
        self.left -= 1
        if not self.left and not self.future.done():
            self.future.set_result(None)

    def set_exception(self, exc: BaseException) -> None:
        """One message's nack came."""
        self.fail(exc)


class BatchPublisher:
    """Publishes through one confirm-mode channel it opens with ``open_channel`` (again
    whenever that one closed), many messages to a frame batch."""

    def __init__(self, open_channel: OpenChannel) -> None:
        self._open_channel = open_channel
        self._channel: Channel | None = None
        self._waiting: list[_Call] = []
        self._writer: asyncio.Task[None] | None = None
        self._methods: dict[tuple[str, str], bytes] = {}
        self._prefix = os.urandom(6).hex() + "-"  # message ids: unique per publisher
        self._ids = itertools.count()

    async def publish(self, messages: Sequence[Message]) -> None:
        """Publish ``messages`` (in order) and return once the broker confirmed them all.

        Raises the driver's error if the broker refused one (a nack), returned one (no
        queue took it: ``PublishError``), if the channel closed before all were
        confirmed, or if no channel could be opened; pamqp's
        ``ValueError``/``TypeError`` for a message it cannot encode (nothing is sent)."""
        if not messages:
            return
        call = _Call([self._marshal(m) for m in messages],
                     asyncio.get_running_loop().create_future())
        self._waiting.append(call)
        if self._writer is None:
            self._writer = asyncio.create_task(self._write())
        await call.future

    def _marshal(self, message: Message) -> _Marshalled:
        exchange, routing_key, body, props = message
        method = self._methods.get((exchange, routing_key))
        if method is None:
            if len(self._methods) > 10_000:
                self._methods.clear()
            publish = Basic.Publish(exchange=exchange, routing_key=routing_key,
                                    mandatory=True)
            method = self._methods[exchange, routing_key] = \
                _LONG.pack(publish.index) + publish.marshal()
        message_id = props.message_id or f"{self._prefix}{next(self._ids)}"
        return method, content_header(len(body), props, message_id), body, message_id

    async def _write(self) -> None:
        try:
            while self._waiting:
                calls, self._waiting = self._waiting, []
                await self._write_calls(calls)
        finally:
            self._writer = None
            for call in self._waiting:  # only if cancelled: nobody would write these
                call.fail(ChannelInvalidStateError("the publisher stopped"))
            self._waiting.clear()

    async def _write_calls(self, calls: list[_Call]) -> None:
        """Write the messages of ``calls`` in batches; a batch that cannot be written
        fails its calls and every later one (earlier calls wait for their confirms)."""
        batch: list[tuple[_Call, _Marshalled]] = []
        size = 0
        for index, call in enumerate(calls):
            for message in call.messages:
                batch.append((call, message))
                size += len(message[2])
                if len(batch) >= BATCH_MESSAGES or size >= BATCH_BYTES:
                    if not await self._try_batch(batch, calls[index:]):
                        return
                    batch, size = [], 0
        if batch:
            await self._try_batch(batch, [])

    async def _try_batch(self, batch: list[tuple[_Call, _Marshalled]],
                         later: list[_Call]) -> bool:
        batch = [entry for entry in batch if not entry[0].future.done()]
        if not batch:
            return True
        try:
            await self._write_batch(batch)
        except BaseException as exc:
            if _cancelled_here(exc):  # this task was cancelled: so are the callers
                for call in [entry[0] for entry in batch] + later:
                    call.fail(exc)
                raise
            for call in [entry[0] for entry in batch] + later:
                call.fail(_closed(exc))
            return False
        return True

    async def _write_batch(self, batch: list[tuple[_Call, _Marshalled]]) -> None:
        for attempt in range(2):
            channel = await self._usable_channel()
            payload = _frames(channel.number, channel.max_content_size, batch)
            drained = channel.create_future()
            with contextlib.suppress(ChannelInvalidStateError):  # the lock's "closed"
                async with channel.lock:
                    await _room(channel)
                    if not _closing(channel):
                        _enqueue(channel, batch, payload, drained)
                        break
            # It closed before anything was sent: nothing is lost by sending again.
            if attempt:
                raise ChannelInvalidStateError(f"{channel!r} closed")
        # Backpressure: the socket took the batch (or the channel closed: its callers
        # learn it from their confirmations); asyncio.wait raises neither way.
        await asyncio.wait([drained])

    async def _usable_channel(self) -> Channel:
        channel = self._channel
        if channel is None or _closing(channel):
            self._channel = None
            opened = await self._open_channel()
            if not isinstance(opened, Channel) or not opened.publisher_confirms:
                raise TypeError(f"{opened!r} is not an aiormq channel in confirm mode")
            channel = self._channel = opened
        return channel


def _enqueue(channel: Channel, batch: list[tuple[_Call, _Marshalled]], payload: bytes,
             drained: asyncio.Future[Any]) -> None:
    """Register each delivery tag's caller and each message id's delivery tag (for a
    return), and queue the frames, in one step."""
    tag = channel.delivery_tag
    confirmations: dict[int, Any] = channel.confirmations
    tags: dict[str, int] = channel.message_id_delivery_tag
    calls: dict[int, _Call] = {}
    for call, message in batch:
        tag += 1
        confirmations[tag] = call
        tags[message[3]] = tag
        if id(call) not in calls:
            calls[id(call)] = call
            call.future.add_done_callback(functools.partial(_forget, tags, call))
    channel.delivery_tag = tag
    channel.write_queue.put_nowait(
        ChannelFrame(payload=payload, should_close=False, drain_future=drained))
    _watch(channel, list(calls.values()))


def _forget(tags: dict[str, int], call: _Call, _: asyncio.Future[None]) -> None:
    """``call`` is settled: no return concerns its messages any more."""
    for message in call.messages:
        tags.pop(message[3], None)


def _watch(channel: Channel, calls: list[_Call]) -> None:
    """Fail ``calls`` with the channel's close reason if it closes before they are all
    confirmed (their delivery tags are then never confirmed)."""
    closed = channel.create_future()  # the channel fails it with its close reason
    left = len(calls)

    def settled(_: asyncio.Future[None]) -> None:
        nonlocal left
        left -= 1
        if not left and not closed.done():
            closed.set_result(None)  # all settled: stop watching

    def channel_closed(future: asyncio.Future[None]) -> None:
        if not future.cancelled() and (exc := future.exception()) is not None:
            for call in calls:
                call.fail(_closed(exc))

    closed.add_done_callback(channel_closed)
    for call in calls:
        call.future.add_done_callback(settled)


def _frames(number: int, max_body: int, batch: list[tuple[_Call, _Marshalled]]) -> bytes:
    """The frames of ``batch`` on channel ``number``."""
    pack = _FRAME.pack
    parts: list[bytes] = []
    for _, (method, header, body, _) in batch:
        parts += (pack(_METHOD, number, len(method)), method, _END,
                  pack(_HEADER_FRAME, number, len(header)), header, _END)
        if len(body) <= max_body:
            if body:  # no body frame at all for an empty body
                parts += (pack(_BODY, number, len(body)), body, _END)
        else:
            for start in range(0, len(body), max_body):
                piece = body[start:start + max_body]
                parts += (pack(_BODY, number, len(piece)), piece, _END)
    return b"".join(parts)


def content_header(body_size: int, props: Basic.Properties,
                   message_id: str | None = None) -> bytes:
    """The payload of the content header frame for ``props`` (with ``message_id`` if it
    has none): packed directly for string headers, a delivery mode and a short message
    id, else by pamqp (the same bytes either way)."""
    headers, mode = props.headers, props.delivery_mode
    if headers and mode is not None and _only_headers_and_mode(props):
        table = _string_table(headers)
        if table is not None:
            if message_id is None:
                return b"".join((_HEADER.pack(60, body_size, _HEADERS_AND_DELIVERY_MODE),
                                 _LONG.pack(len(table)), table, _OCTETS[mode]))
            mid = message_id.encode()
            if len(mid) < 256:
                return b"".join((
                    _HEADER.pack(60, body_size, _HEADERS_AND_DELIVERY_MODE | _MESSAGE_ID),
                    _LONG.pack(len(table)), table, _OCTETS[mode], _OCTETS[len(mid)], mid))
    if message_id is not None and props.message_id is None:
        props = copy.copy(props)
        props.message_id = message_id
    return ContentHeader(0, body_size, props).marshal()


def _only_headers_and_mode(p: Basic.Properties) -> bool:
    # pamqp leaves out a property that is None or "" (cluster_id is "" by default).
    return (p.content_type is None and p.content_encoding is None and p.priority is None
            and p.correlation_id is None and p.reply_to is None and p.expiration is None
            and p.message_id is None and p.timestamp is None and p.message_type is None
            and p.user_id is None and p.app_id is None and not p.cluster_id)


def _string_table(headers: dict[str, Any]) -> bytes | None:
    """A field table of string values, sorted by key as pamqp does; None if another type
    or a long key is in it."""
    parts: list[bytes] = []
    keys = _KEYS
    for key, value in sorted(headers.items()):
        if type(value) is not str:
            return None
        k = keys.get(key)
        if k is None:
            encoded = key.encode()
            if len(encoded) > 128 or len(keys) > 1000:
                return None
            k = keys[key] = bytes((len(encoded),)) + encoded + b"S"
        v = value.encode()
        parts += (k, _LONG.pack(len(v)), v)
    return b"".join(parts)


def _cancelled_here(exc: BaseException) -> bool:
    """Whether ``exc`` is this task being cancelled (not a future of a closed channel
    that aiormq failed with ``CancelledError``, as it does on a plain close)."""
    task = asyncio.current_task()
    return isinstance(exc, asyncio.CancelledError) and task is not None and task.cancelling() > 0


def _closed(exc: BaseException) -> BaseException:
    """The error for callers whose channel closed with ``exc``: never a
    ``CancelledError``, which would look to them as if they were cancelled."""
    if isinstance(exc, asyncio.CancelledError):
        return ChannelInvalidStateError("the publishing channel closed")
    return exc


def _closing(channel: Channel) -> bool:
    """Closed, or closing: a close was sent or received (aiormq's private event)."""
    event: asyncio.Event = channel._Channel__close_event  # type: ignore[attr-defined]
    return channel.is_closed or event.is_set()


async def _room(channel: Channel) -> None:
    """Until the connection's write queue has room (it holds ten frame batches, and the
    writer task empties it whenever it runs) or the channel closes."""
    queue = channel.write_queue
    spins = 0
    while queue.full() and not _closing(channel):
        spins += 1
        await asyncio.sleep(0 if spins < 20 else 0.001)

