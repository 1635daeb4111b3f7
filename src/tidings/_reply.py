"""Request/reply over the bus: a shared replies topic and correlation ids.

Every App instance reads the replies topic from its end (without a group) and completes
the future whose correlation id a reply carries; replies for other instances are skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence

from ._consumer import Consumer, ConsumerSpec
from ._errors import RequestTimeoutError
from ._message import Headers
from ._records import OutRecord, Position, Record, Start
from .ports import Transport

__all__ = ["REPLIES_TOPIC", "ReplyListener"]

REPLIES_TOPIC = "tidings.replies"


class ReplyListener:
    """Waits for replies to this instance's requests."""

    def __init__(self, transport: Transport, client: str,
                 append: Callable[[list[OutRecord]], Awaitable[Sequence[Position]]]) -> None:
        self._transport = transport
        self._append = append  # the app's, through its middleware
        self._waiting: dict[str, asyncio.Future[Record]] = {}
        spec = ConsumerSpec(group=None, topics=(REPLIES_TOPIC,), start=Start.LATEST,
                            client=client, commit_interval=0.05, shutdown_timeout=1.0)
        self._consumer = Consumer(transport, spec, self._on_reply)
        self._lock = asyncio.Lock()
        self._running = False
        self._ready = False  # started and its read position pinned

    async def ensure_started(self) -> None:
        """Start reading replies (once), and wait until the read position is pinned."""
        if self._ready:  # every request asks: no lock once started
            return
        async with self._lock:
            if not self._running:
                await self._transport.ensure_topic(REPLIES_TOPIC)
                await self._consumer.start()
                self._running = True
            await self._consumer.started.wait()
            self._ready = True

    async def _on_reply(self, record: Record, attempt: int) -> float | None:
        future = self._waiting.get(record.headers.get(Headers.CORRELATION_ID, ""))
        if future is not None and not future.done():
            future.set_result(record)
        return None

    async def request(self, record: OutRecord, correlation_id: str, timeout: float) -> Record:
        """Append ``record`` and wait for the reply carrying ``correlation_id``."""
        await self.ensure_started()
        future: asyncio.Future[Record] = asyncio.get_running_loop().create_future()
        self._waiting[correlation_id] = future
        try:
            await self._append([record])
            async with asyncio.timeout(timeout):  # no task per request, as wait_for made
                return await future
        except TimeoutError:
            raise RequestTimeoutError(
                f"no reply to a request on {record.topic!r} within {timeout:g} s"
            ) from None
        finally:
            self._waiting.pop(correlation_id, None)

    async def close(self) -> None:
        """Stop reading replies; pending requests time out."""
        if self._running:
            with contextlib.suppress(Exception):
                await self._consumer.stop()
            self._running = self._ready = False
