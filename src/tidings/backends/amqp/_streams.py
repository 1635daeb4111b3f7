"""Topics as RabbitMQ streams: one stream per partition, records as messages.

Partition ``p`` of topic ``t`` is the stream ``t.p``. A record's key, timestamp and
headers travel as message headers (tidings' own start with ``x-tidings-``); its offset is
the stream's ``x-stream-offset``. AMQP 0-9-1 cannot ask a stream where it ends, so reads
that need the end (``read``, end offsets) consume until the stream stays quiet for
``end_wait`` seconds: a stream delivers a chunk as one burst.

A stream declared by two connections at once is not ready for the second when its
declare returns: RabbitMQ 3.10 answers an existing queue at once, before its stream
coordinator has started the stream, and a consume or publish then fails
(``PRECONDITION_FAILED - ... does not have a replica on the local node``) or crashes
the channel, closing the whole connection (``541 INTERNAL_ERROR``). The declare that
creates a stream returns only once it is ready, so :func:`declare_stream` makes the
declares of one name take turns, under an exclusive queue ``tidings.declaring.<name>``:
whoever declares after the creator finds a ready stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import time
from collections.abc import Mapping
from typing import Any

import aiormq
from aiormq import exceptions as amqp
from aiormq.abc import AbstractConnection, DeliveredMessage
from pamqp.commands import Basic
from pamqp.common import FieldValue

from ..._errors import BrokerUnavailableError
from ..._records import OutRecord, Record
from ._channels import open_channel, shielded

__all__ = [
    "KEY",
    "TIMESTAMP",
    "declare_stream",
    "partition_stream",
    "properties",
    "read_quiet",
    "to_record",
]

KEY = "x-tidings-key"
TIMESTAMP = "x-tidings-ts"
_BROKER_HEADERS = frozenset({"x-stream-offset", "x-death", "x-first-death-exchange",
                             "x-first-death-queue", "x-first-death-reason",
                             "x-last-death-exchange", "x-last-death-queue",
                             "x-last-death-reason", "tidings-amqp-delay",
                             "tidings-amqp-target"})
STREAM: dict[str, FieldValue] = {"x-queue-type": "stream"}


def partition_stream(topic: str, partition: int) -> str:
    """The stream that holds partition ``partition`` of ``topic``."""
    return f"{topic}.{partition}"


#: How long a declare waits for another connection's declare of the same stream.
DECLARE_WAIT = 30.0
#: A turn not given back (its holder stuck) expires after this long unused.
_TURN_EXPIRES_MS = 10_000


def _turn(name: str) -> str:
    """The exclusive queue held while declaring the stream ``name``."""
    if len(name) > 200:  # queue names are at most 255 bytes
        name = hashlib.sha256(name.encode()).hexdigest()
    return f"tidings.declaring.{name}"


async def declare_stream(channel: aiormq.abc.AbstractChannel, name: str) -> None:
    """Create the stream ``name`` if missing (idempotent); return once it is ready to be
    consumed and published to. A conflicting queue of that name is refused on
    ``channel`` (406, as by a plain declare)."""
    await shielded(_declare_stream(channel, name))


async def _declare_stream(channel: aiormq.abc.AbstractChannel, name: str) -> None:
    turn, deadline = _turn(name), time.monotonic() + DECLARE_WAIT
    while True:
        holder = await open_channel(channel.connection)
        try:
            await holder.queue_declare(turn, exclusive=True,
                                       arguments={"x-expires": _TURN_EXPIRES_MS})
            break
        except BaseException as exc:
            with contextlib.suppress(Exception):
                await holder.close()
            if not isinstance(exc, amqp.ChannelLockedResource):
                raise
        # Another connection is declaring it (the broker closed the channel): wait.
        if time.monotonic() > deadline:
            raise BrokerUnavailableError(
                f"declaring stream {name!r}: another connection held its turn for "
                f"{DECLARE_WAIT:g} s")
        await asyncio.sleep(0.02)
    try:
        await channel.queue_declare(name, durable=True, arguments=STREAM)
    finally:
        with contextlib.suppress(Exception):
            await holder.queue_delete(turn)
        with contextlib.suppress(Exception):
            await holder.close()


def properties(record: OutRecord, timestamp: float,
               extra: Mapping[str, str] | None = None) -> Basic.Properties:
    """The persistent message properties carrying ``record``'s key, time and headers."""
    headers: dict[str, Any] = dict(record.headers)
    headers[TIMESTAMP] = repr(timestamp)
    if record.key is not None:
        headers[KEY] = record.key
    if extra:
        headers.update(extra)
    return Basic.Properties(headers=headers, delivery_mode=2)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def offset_of(message: DeliveredMessage) -> int:
    """The stream offset of a delivered message."""
    headers = message.header.properties.headers or {}
    offset = headers.get("x-stream-offset")
    return offset if isinstance(offset, int) else -1


def to_record(topic: str, partition: int, message: DeliveredMessage) -> Record:
    """The tidings record for a message delivered from a partition's stream."""
    raw = message.header.properties.headers or {}
    headers = {k: _text(v) for k, v in raw.items()
               if k not in _BROKER_HEADERS and not k.startswith("x-tidings-")}
    key = raw.get(KEY)
    return Record(topic, partition, offset_of(message),
                  None if key is None else _text(key), message.body, headers,
                  float(_text(raw.get(TIMESTAMP, "0"))))


def offset_spec(offset: int | str | float) -> FieldValue:
    """The ``x-stream-offset`` argument: a number, ``first``/``last``/``next``, or a
    timestamp given as a float (epoch seconds)."""
    if isinstance(offset, float):
        return datetime.datetime.fromtimestamp(max(offset, 0), datetime.UTC)
    return offset


async def read_quiet(connection: AbstractConnection, stream: str, start: int | str | float,
                     limit: int, quiet: float, first_wait: float) -> list[DeliveredMessage]:
    """Up to ``limit`` messages of ``stream`` from ``start``, stopping when it stays quiet
    (``first_wait`` for the first message, ``quiet`` between later ones); none if the
    stream does not exist (yet). A caller cancelled meanwhile does not cancel the read
    (see ``_channels``)."""
    return await shielded(_read_quiet(connection, stream, start, limit, quiet, first_wait))


async def _read_quiet(connection: AbstractConnection, stream: str, start: int | str | float,
                      limit: int, quiet: float, first_wait: float) -> list[DeliveredMessage]:
    got: asyncio.Queue[DeliveredMessage] = asyncio.Queue()
    channel = await open_channel(connection)
    try:
        await channel.basic_qos(prefetch_count=min(max(limit, 1), 2000))

        async def deliver(message: DeliveredMessage) -> None:
            got.put_nowait(message)

        try:
            ok = await channel.basic_consume(stream, deliver, no_ack=False,
                                             arguments={"x-stream-offset": offset_spec(start)})
        except amqp.ChannelNotFoundEntity:
            # Registered, and not declared yet by the process that registered it: empty.
            return []
        out: list[DeliveredMessage] = []
        wait = first_wait
        while len(out) < limit:
            try:
                message = await asyncio.wait_for(got.get(), wait)
            except TimeoutError:
                break
            wait = quiet
            if isinstance(start, int) and offset_of(message) < start:
                continue
            out.append(message)
            await channel.basic_ack(message.delivery_tag or 0)
        with contextlib.suppress(Exception):
            await channel.basic_cancel(ok.consumer_tag or "")
        return out
    finally:
        with contextlib.suppress(Exception):
            await channel.close()
