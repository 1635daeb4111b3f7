"""One OS thread that owns a librdkafka consumer and runs every call on it.

A librdkafka consumer serves its rebalance callbacks inside ``consume()``, on the
calling thread, and must not be used by two threads at once. So each consumer gets
a :class:`DriverThread`: coroutines submit calls with :meth:`DriverThread.call` and
await the result, and the event loop never blocks.

While a rebalance callback waits for the runtime (``on_revoked`` finishing in-flight
work and committing), the thread keeps serving submitted calls (:meth:`wait_serving`),
so that a ``commit`` made from inside the callback runs, re-entrantly, on the thread
that owns the consumer instead of deadlocking behind the blocked ``consume()``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["DriverThread"]

T = TypeVar("T")

_Job = tuple[Callable[[], Any], asyncio.AbstractEventLoop, "asyncio.Future[Any]"]
_WAKE = object()  # a marker that only makes a waiting :meth:`wait_serving` look again


class DriverThread:
    """A single worker thread with a job queue; jobs may run nested inside callbacks."""

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[_Job | object | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    async def call(self, function: Callable[[], T]) -> T:
        """Run ``function()`` on the driver thread and return its result."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._jobs.put((function, loop, future))
        return await future

    def on_thread(self) -> bool:
        """Whether the caller runs on this driver thread."""
        return threading.current_thread() is self._thread

    def wait_serving(self, pending: concurrent.futures.Future[T]) -> T:
        """On the driver thread: run submitted jobs until ``pending`` is done."""
        pending.add_done_callback(lambda _: self._jobs.put(_WAKE))
        while not pending.done():
            job = self._jobs.get()
            if job is None:  # stop requested while a callback waits: stop after it
                self._jobs.put(None)
                break
            self._execute(job)
        return pending.result()

    def stop(self) -> None:
        """Let the thread finish the jobs already queued, then exit."""
        self._jobs.put(None)

    def join(self, timeout: float) -> None:
        """Wait (blocking) for the thread to exit."""
        self._thread.join(timeout)

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            self._execute(job)

    @staticmethod
    def _execute(job: _Job | object) -> None:
        if not isinstance(job, tuple):
            return
        function, loop, future = job
        try:
            result = function()
        except BaseException as exc:  # handed to the awaiting coroutine
            _resolve(loop, future, None, exc)
        else:
            _resolve(loop, future, result, None)


def _resolve(
    loop: asyncio.AbstractEventLoop,
    future: asyncio.Future[Any],
    result: Any,
    error: BaseException | None,
) -> None:
    def settle() -> None:
        if future.done():  # the caller was cancelled
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
        loop.call_soon_threadsafe(settle)
