"""Threads that own SQLite connections, so the event loop never waits on SQLite.

A :class:`DbThread` runs jobs (functions of its connection) in submission order and
hands results back with one ``loop.call_soon_threadsafe`` per batch of jobs, never one
per record. The writer subclass (``_writer.py``) runs each batch in one transaction.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import queue
import sqlite3
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from ..._errors import TransportError
from ..._records import OutRecord
from ._errors import sqlite_errors

__all__ = ["DbThread", "Job", "Outcome", "PollingThread"]

T = TypeVar("T")
Call = Callable[[sqlite3.Connection], Any]
#: A finished job: its future, and its result or the exception to raise.
Outcome = tuple["asyncio.Future[Any]", Any, BaseException | None]

_MAX_JOBS = 2000


@dataclass(slots=True)
class Job:
    """A function to run on the thread's connection, or records to append (writer only)."""

    call: Call | None
    records: Sequence[OutRecord]
    future: asyncio.Future[Any]
    wakes: bool = False
    stop: bool = False


class DbThread:
    """One thread, one connection, a queue of jobs."""

    def __init__(self, name: str, connect: Callable[[], sqlite3.Connection]) -> None:
        self._connect = connect
        self._queue: queue.SimpleQueue[Job] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._stopping = False
        #: Called on the event loop after a batch that changed the log was settled.
        self.after_wake: Callable[[], None] | None = None

    def start(self) -> None:
        """Start the thread; it opens its connection first."""
        self._thread.start()

    def call(
        self, fn: Callable[[sqlite3.Connection], T], *, wakes: bool = False
    ) -> asyncio.Future[T]:
        """Run ``fn(connection)`` on the thread; await the returned future for its result."""
        return self._submit(Job(fn, (), self._new_future(), wakes))

    async def stop(self) -> None:
        """Finish queued jobs, close the connection and end the thread."""
        if self._stopping:
            return
        future = self._new_future()
        self._queue.put(Job(None, (), future, stop=True))
        self._stopping = True
        await future

    def _new_future(self) -> asyncio.Future[Any]:
        return asyncio.get_running_loop().create_future()

    def _submit(self, job: Job) -> asyncio.Future[Any]:
        if self._stopping:
            raise TransportError("the SQLite transport is closed")
        self._queue.put(job)
        return job.future

    def _main(self) -> None:
        conn: sqlite3.Connection | None = None
        failure: BaseException | None = None
        try:
            with sqlite_errors("open", opening=True):
                conn = self._connect()
        except Exception as exc:
            failure = exc
        while True:
            jobs = self._drain()
            work = [job for job in jobs if not job.stop]
            if conn is None:
                self._settle([(job.future, None, failure) for job in work], wake=False)
            elif work:
                self._run(conn, work)
            if len(work) < len(jobs):
                if conn is not None:
                    conn.close()
                self._settle([(job.future, None, None) for job in jobs if job.stop], wake=False)
                return

    def _drain(self) -> list[Job]:
        jobs = [self._queue.get()]
        size = len(jobs[0].records)
        while len(jobs) < _MAX_JOBS and size < 20_000:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            jobs.append(job)
            size += len(job.records)
        return jobs

    def _run(self, conn: sqlite3.Connection, jobs: list[Job]) -> None:
        """Run jobs one by one (the reader); the writer overrides this."""
        outcomes: list[Outcome] = []
        for job in jobs:
            assert job.call is not None
            try:
                with sqlite_errors("read"):
                    outcomes.append((job.future, job.call(conn), None))
            except Exception as exc:
                outcomes.append((job.future, None, exc))
        self._settle(outcomes, wake=False)

    def _settle(self, outcomes: list[Outcome], *, wake: bool) -> None:
        """Resolve futures on their event loop, with one thread-safe call per loop."""
        by_loop: dict[asyncio.AbstractEventLoop, list[Outcome]] = {}
        for outcome in outcomes:
            by_loop.setdefault(outcome[0].get_loop(), []).append(outcome)
        after = self.after_wake if wake else None
        for loop, items in by_loop.items():
            # A closed loop raises RuntimeError: nobody is waiting any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_resolve, items, after)


def _resolve(outcomes: list[Outcome], after: Callable[[], None] | None) -> None:
    for future, result, error in outcomes:
        if future.done():
            continue
        if error is None:
            future.set_result(result)
        else:
            future.set_exception(error)
    if after is not None:
        after()


class PollingThread(abc.ABC):
    """A daemon thread with its own connection that runs :meth:`_run` until stopped.

    Subclasses loop on ``self._stop`` (an Event) and may prepare the connection first.
    """

    def __init__(self, name: str, connect: Callable[[], sqlite3.Connection]) -> None:
        self._connect = connect
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)

    def start(self) -> None:
        """Start the thread."""
        self._thread.start()

    def stop(self) -> None:
        """Ask the thread to stop and wait for it."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _prepare(self, conn: sqlite3.Connection) -> None:  # noqa: B027 (an optional hook)
        """Set up the thread's connection (nothing by default)."""

    @abc.abstractmethod
    def _run(self, conn: sqlite3.Connection) -> None:
        """The thread's work, until ``self._stop`` is set."""

    def _main(self) -> None:
        try:
            conn = self._connect()
            self._prepare(conn)
        except sqlite3.Error:
            logging.getLogger("tidings.sqlite").exception(
                "%s cannot open the database", self._thread.name)
            return
        try:
            self._run(conn)
        finally:
            conn.close()
