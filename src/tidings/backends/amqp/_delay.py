"""Durable delayed records without the delayed-message plugin: TTL buckets.

A record due in ``d`` seconds is published, persistent, to the headers exchange
``tidings.delay`` with headers naming its bucket (``d`` rounded *up* to two significant
digits of milliseconds) and its partition's stream. The bucket's queue
``tidings.delay.<ms>ms`` has that message TTL and dead-letters what expires into the queue
``tidings.delay.due`` (RabbitMQ 3.10 does not dead-letter into streams). Every started
transport forwards due messages into their streams: publish, await the confirm, then
ack, so a crash repeats a forward rather than losing it. Every message of a bucket has
the same TTL, so a queue expires in order and a long delay never holds a shorter one
back (they wait in different queues). Rounding up means a record is never early, and at
most ~10% (and 10 ms) late, plus the forward. A forwarder whose consumer the broker
cancels (its queue deleted, say) or whose channel it closes, while the connection
lives on, starts again within :data:`WATCH_EVERY` seconds (a new connection makes a new
forwarder anyway).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable

from aiormq.abc import AbstractChannel, AbstractConnection, DeliveredMessage
from pamqp.commands import Basic
from pamqp.common import FieldValue

from ._translate import driver_errors

__all__ = ["BUCKET", "DUE", "EXCHANGE", "RETRY_FORWARD", "TARGET", "WATCH_EVERY", "DelayBuckets",
           "DueForwarder", "bucket_ms"]

EXCHANGE = "tidings.delay"
# Not x-...: a headers exchange ignores binding arguments that start with "x-".
BUCKET = "tidings-amqp-delay"
TARGET = "tidings-amqp-target"
DUE = f"{EXCHANGE}.due"
_REDECLARE = 600.0
#: Seconds between checks that the forwarder still consumes.
WATCH_EVERY = 5.0
#: Seconds before a due message that could not be forwarded goes back to the queue.
RETRY_FORWARD = 1.0

log = logging.getLogger("tidings.amqp")


def bucket_ms(delay: float) -> int:
    """The bucket (milliseconds) of a delay of ``delay`` seconds: rounded up."""
    ms = max(math.ceil(delay * 1000), 1)
    step = 10 ** max(len(str(ms)) - 2, 1)
    return int(-(-ms // step) * step)


class DelayBuckets:
    """Declares bucket queues on first use (once per process)."""

    def __init__(self, connection: AbstractConnection, queue_type: str) -> None:
        self._connection = connection
        self._queue_type = queue_type
        self._declared: dict[int, float] = {}  # bucket -> when declared (monotonic)
        self._exchange = False

    def arguments(self, bucket: int) -> dict[str, FieldValue]:
        """The arguments of a bucket's queue (fixed per bucket: redeclaring agrees)."""
        args: dict[str, FieldValue] = {
            "x-message-ttl": bucket, "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": DUE,
            # An idle bucket goes away, but never while a message could still be in it.
            "x-expires": bucket + 3_600_000,
        }
        if self._queue_type == "quorum":
            args.update({"x-queue-type": "quorum", "x-overflow": "reject-publish",
                         "x-dead-letter-strategy": "at-least-once"})
        return args

    async def ensure(self, bucket: int) -> None:
        """Declare bucket ``bucket``'s queue and binding (the queue's timer restarts)."""
        # Publishing does not count as using a queue for x-expires: declare again
        # well before it could expire, so a bucket never vanishes under a publisher.
        if time.monotonic() - self._declared.get(bucket, -_REDECLARE) < _REDECLARE:
            return
        name = f"{EXCHANGE}.{bucket}ms"
        with driver_errors(f"declaring the delay queue {name!r}"):
            channel = await self._connection.channel()
            try:
                if not self._exchange:
                    await channel.exchange_declare(EXCHANGE, exchange_type="headers",
                                                   durable=True)
                    self._exchange = True
                await channel.queue_declare(name, durable=True,
                                            arguments=self.arguments(bucket))
                await channel.queue_bind(name, EXCHANGE, arguments={
                    "x-match": "all", BUCKET: str(bucket)})
            finally:
                await channel.close()
        self._declared[bucket] = time.monotonic()


class DueForwarder:
    """Moves due messages from ``tidings.delay.due`` into their streams."""

    def __init__(self, connection: AbstractConnection, queue_type: str,
                 publish: Callable[[str, bytes, Basic.Properties], Awaitable[None]]) -> None:
        self._connection = connection
        self._queue_type = queue_type
        self._publish = publish
        self._channel: AbstractChannel | None = None
        self._tag: str | None = None
        self._watch: asyncio.Task[None] | None = None

    async def open(self) -> None:
        """Declare the due queue and start forwarding (and watching that it goes on)."""
        await self._consume()
        self._watch = asyncio.create_task(self._watch_loop(), name="tidings-amqp-delay-watch")

    async def _consume(self) -> None:
        args: dict[str, FieldValue] = {}
        if self._queue_type == "quorum":
            args["x-queue-type"] = "quorum"
        with driver_errors(f"declaring the queue {DUE!r}"):
            self._channel = channel = await self._connection.channel()
            await channel.queue_declare(DUE, durable=True, arguments=args)
            await channel.basic_qos(prefetch_count=100)
            ok = await channel.basic_consume(DUE, self._forward, no_ack=False)
            self._tag = ok.consumer_tag

    @property
    def consuming(self) -> bool:
        """Whether the broker still delivers due messages to this forwarder."""
        channel = self._channel
        if channel is None or channel.is_closed:
            return False
        # aiormq drops a consumer the broker cancelled from ``consumers`` (pinned: see
        # tests/backends/test_amqp_publish.py); without it, an open channel must do.
        consumers = getattr(channel, "consumers", None)
        return consumers is None or self._tag in consumers

    async def _watch_loop(self) -> None:
        while not self._connection.is_closed:  # a new connection has its own forwarder
            await asyncio.sleep(WATCH_EVERY)
            if self.consuming or self._connection.is_closed:
                continue
            log.warning("the broker stopped the forwarding of delayed messages from %r "
                        "(consumer cancelled or channel closed): starting it again", DUE)
            old, self._channel = self._channel, None
            if old is not None:
                with contextlib.suppress(Exception):
                    await old.close()
            try:
                await self._consume()
            except Exception as exc:  # tried again at the next check
                log.warning("could not start forwarding delayed messages again: %s", exc)

    async def _forward(self, message: DeliveredMessage) -> None:
        props = message.header.properties
        headers = dict(props.headers or {})
        target = headers.pop(TARGET, None)
        for name in [h for h in headers if h.startswith("x-") and "death" in h]:
            del headers[name]
        channel = self._channel
        try:
            if isinstance(target, str | bytes):
                stream = target.decode() if isinstance(target, bytes) else target
                await self._publish(stream, message.body,
                                    Basic.Properties(headers=headers, delivery_mode=2))
            if channel is not None:
                await channel.basic_ack(message.delivery_tag or 0)
        except Exception:  # not acked: the broker redelivers it to a forwarder
            log.warning("could not forward a delayed message to %r (tried again in %g s)",
                        target, RETRY_FORWARD, exc_info=True)
            # Not at once: a stream that stays missing (deleted by hand) or full would
            # make the broker and this forwarder pass the message back and forth.
            await asyncio.sleep(RETRY_FORWARD)
            if channel is not None:
                with contextlib.suppress(Exception):
                    await channel.basic_nack(message.delivery_tag or 0, requeue=True)

    async def close(self) -> None:
        """Stop forwarding (unacked messages go back to the queue)."""
        watch, self._watch = self._watch, None
        if watch is not None:
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch
        channel, self._channel = self._channel, None
        if channel is not None:
            with contextlib.suppress(Exception):
                await channel.close()
