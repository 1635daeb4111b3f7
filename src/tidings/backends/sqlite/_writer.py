"""The writer thread: every write of a transport, with group commit.

All jobs pending when the writer becomes free run in one ``BEGIN IMMEDIATE``
transaction: the appends together (one ``executemany``), every other job in its own
savepoint so that a failing job (a fenced commit, a bad topic) leaves the rest intact.
Each caller's future is resolved only after COMMIT, so a returned ``append`` survives
a SIGKILL of the process (WAL with ``synchronous=NORMAL``).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Callable, Sequence

from ..._errors import TidingsError
from ..._records import OutRecord, Position
from ._append import Appender
from ._errors import sqlite_errors
from ._schema import BUSY_TIMEOUT_MS
from ._threads import DbThread, Job, Outcome

__all__ = ["WriterThread", "begin_immediate"]

_FIRST_WAIT, _LONGEST_WAIT = 0.00005, 0.001


def begin_immediate(conn: sqlite3.Connection) -> None:
    """Take SQLite's write lock, retrying every 50 µs to 1 ms while another process
    holds it. (SQLite's own busy handler sleeps 1, 2, 5, 10, 15, 20, 25... ms between
    tries, which turns a lock held for a few ms into tens of ms of latency; the writer
    connection therefore has ``busy_timeout = 0`` and waits here instead.)"""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    wait = _FIRST_WAIT
    while True:
        try:
            conn.execute("BEGIN IMMEDIATE")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
        time.sleep(wait)
        wait = min(wait * 2, _LONGEST_WAIT)


class WriterThread(DbThread):
    """A :class:`DbThread` whose batches are transactions, with appends grouped."""

    def __init__(
        self, name: str, connect: Callable[[], sqlite3.Connection], appender: Appender
    ) -> None:
        super().__init__(name, connect)
        self.appender = appender

    def append(self, records: Sequence[OutRecord]) -> asyncio.Future[list[Position]]:
        """Queue records for the next group commit; the future resolves after COMMIT."""
        return self._submit(Job(None, records, self._new_future(), wakes=True))

    def _run(self, conn: sqlite3.Connection, jobs: list[Job]) -> None:
        try:
            with sqlite_errors("write"):
                outcomes = self._transaction(conn, jobs)
        except Exception as exc:
            self.appender.forget()
            outcomes = [(job.future, None, exc) for job in jobs]
        self._settle(outcomes, wake=any(job.wakes for job in jobs))

    def _transaction(self, conn: sqlite3.Connection, jobs: list[Job]) -> list[Outcome]:
        begin_immediate(conn)
        try:
            outcomes = self._apply(conn, jobs)
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
        return outcomes

    def _apply(self, conn: sqlite3.Connection, jobs: list[Job]) -> list[Outcome]:
        # Taken under the write lock, so timestamps follow commit order across processes.
        now = time.time()
        outcomes: list[Outcome] = []
        appends = [job for job in jobs if job.call is None]
        if appends:
            results = self.appender.append(conn, [job.records for job in appends], now)
            for job, result in zip(appends, results, strict=True):
                if isinstance(result, TidingsError):
                    outcomes.append((job.future, None, result))
                else:
                    outcomes.append((job.future, result, None))
        for job in jobs:
            if job.call is not None:
                outcomes.append(self._savepoint(conn, job))
        return outcomes

    def _savepoint(self, conn: sqlite3.Connection, job: Job) -> Outcome:
        assert job.call is not None
        conn.execute("SAVEPOINT job")
        try:
            with sqlite_errors("write"):
                result = job.call(conn)
        except Exception as exc:
            conn.execute("ROLLBACK TO job")
            conn.execute("RELEASE job")
            self.appender.forget()
            return (job.future, None, exc)
        conn.execute("RELEASE job")
        return (job.future, result, None)
