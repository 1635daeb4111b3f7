"""Durable delayed records without the delayed-message plugin: TTL buckets.

A record due in ``d`` seconds is published, persistent, to the headers exchange
``tidings.delay`` with its partition's stream as routing key and a header naming its
bucket: ``d`` rounded *up* to two significant digits of milliseconds. The bucket's queue
``tidings.delay.<ms>`` has that message TTL and dead-letters through the default exchange,
which routes the expired message by its routing key into the stream. Every message of a
bucket has the same TTL, so a queue expires in order and a long delay never holds a
shorter one back (they wait in different queues). Rounding up means a record is never
early, and at most ~10% (and 10 ms) late.
"""

from __future__ import annotations

import math
import time

from aiormq.abc import AbstractConnection
from pamqp.common import FieldValue

from ._translate import driver_errors

__all__ = ["BUCKET", "EXCHANGE", "DelayBuckets", "bucket_ms"]

EXCHANGE = "tidings.delay"
BUCKET = "x-tidings-delay"
_REDECLARE = 600.0


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
        name = f"{EXCHANGE}.{bucket}"
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
