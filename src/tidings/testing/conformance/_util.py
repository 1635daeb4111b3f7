"""Small helpers for the suite's async tests."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from typing import Any

from ..._app import App
from ..._dlq import DeadLetter, dlq_topic
from ..._records import TopicPartition
from ...ports import Capability, Subscription

__all__ = ["Handler", "LetterWatch", "Names", "eventually", "wait_letters", "watch_letters"]


async def eventually(check: Callable[[], Any], timeout: float = 10.0, what: str = "") -> None:
    """Wait until ``check()`` is true, failing the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or check}")
        await asyncio.sleep(0.01)


async def wait_letters(app: App, topic: str, count: int) -> list[DeadLetter]:
    """The pending dead letters of ``topic`` once there are ``count`` (10 s at most)."""
    for _ in range(500):
        try:
            letters = await app.dead_letters(topic).pending()
        except LookupError:
            letters = []
        if len(letters) >= count:
            return letters
        await asyncio.sleep(0.02)
    raise AssertionError(f"expected {count} dead letters")


class LetterWatch:
    """The dead letters of one topic, as a test checks them: listed from the DLQ's log
    (``dead_letters(topic).pending()``) where the transport keeps one (``replay``), else
    read off ``<topic>.dlq`` by a plain subscriber, with the same ``tidings-dlq-*``
    headers: what is under test (dead-lettered with the error, the consumer goes on)
    is the same; only listing them needs the log."""

    def __init__(self, app: App, topic: str) -> None:
        self.app = app
        self.topic = topic
        self.seen: list[DeadLetter] = []
        self._reader: Subscription | None = None

    async def wait(self, count: int) -> list[DeadLetter]:
        """The topic's dead letters once there are ``count`` (10 s at most)."""
        if self._reader is None:
            return await wait_letters(self.app, self.topic, count)
        await eventually(lambda: len(self.seen) >= count, 10.0, f"{count} dead letters")
        return list(self.seen)

    async def _start(self) -> None:
        if Capability.REPLAY in self.app.transport.capabilities:
            return
        self._reader = self.app.transport.subscribe(None, [dlq_topic(self.topic)], _Quiet())
        await self._reader.fetch(100, 0.01)  # subscribed before the test publishes

    async def _read(self) -> None:
        reader = self._reader
        assert reader is not None
        while True:
            records = await reader.fetch(100, 0.05)
            self.seen.extend(DeadLetter.from_record(r) for r in records)
            if records:
                last = records[-1]
                await reader.commit({TopicPartition(last.topic, last.partition): last.offset + 1})


@contextlib.asynccontextmanager
async def watch_letters(app: App, topic: str) -> AsyncIterator[LetterWatch]:
    """Watch the dead letters of ``topic`` while the block runs (``app`` started)."""
    watch = LetterWatch(app, topic)
    await watch._start()
    if watch._reader is None:
        yield watch
        return
    task = asyncio.create_task(watch._read())
    try:
        yield watch
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await watch._reader.close()


class _Quiet:
    async def on_assigned(self, partitions: Collection[TopicPartition]) -> None: ...
    async def on_revoked(self, partitions: Collection[TopicPartition]) -> None: ...
    async def on_lost(self, partitions: Collection[TopicPartition]) -> None: ...


#: The ``names`` fixture: a name made unique to one test.
Names = Callable[[str], str]
#: A handler a test builds (any async function of a payload).
Handler = Callable[..., Awaitable[None]]
