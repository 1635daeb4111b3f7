"""Notices commits made by other connections (other processes) within about a millisecond.

``PRAGMA data_version`` on a connection changes only when another connection has
committed, and reading it costs a few microseconds. The watcher polls it every 1 ms
while records flow (the transport fetched or appended some within the last second),
and backs off to 2 ms and then 5 ms after 1 s and 10 s without any (heartbeat commits
do not count as activity). Each timed wake-up costs ~40 µs of CPU on a small VM, so an
idle transport costs about 1% of a core; with no subscription to wake it polls every
50 ms (enough for the scheduler).
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable

from ._threads import PollingThread

__all__ = ["Watcher"]

class Watcher(PollingThread):
    """A thread that calls ``on_change`` on the event loop when the database changed.

    It sleeps at most 50 ms between polls, so ``stop()`` returns within that.
    """

    def __init__(
        self,
        connect: Callable[[], sqlite3.Connection],
        loop: asyncio.AbstractEventLoop,
        on_change: Callable[[], None],
        listening: Callable[[], bool],
        last_activity: Callable[[], float],
    ) -> None:
        super().__init__("tidings-sqlite-watch", connect)
        self._loop = loop
        self._on_change = on_change
        self._listening = listening
        self._last_activity = last_activity
        self._signalled = False

    def _run(self, conn: sqlite3.Connection) -> None:
        cursor = conn.cursor()
        last_version = None
        while not self._stop.is_set() and not self._loop.is_closed():
            try:
                version = cursor.execute("PRAGMA data_version").fetchone()[0]
            except sqlite3.Error:
                version = last_version
                self._stop.wait(0.05)
            if version != last_version:
                if last_version is not None:
                    self._signal()
                last_version = version
            self._stop.wait(self._interval())

    def _interval(self) -> float:
        if not self._listening():
            return 0.05
        quiet_for = time.monotonic() - self._last_activity()
        if quiet_for < 1.0:
            return 0.001
        return 0.002 if quiet_for < 10.0 else 0.005

    def _signal(self) -> None:
        # One pending wake-up at a time: a burst of commits costs the loop one callback.
        if self._signalled:
            return
        self._signalled = True
        try:
            self._loop.call_soon_threadsafe(self._deliver)
        except RuntimeError:  # the loop is closed
            self._stop.set()

    def _deliver(self) -> None:
        self._signalled = False
        self._on_change()
