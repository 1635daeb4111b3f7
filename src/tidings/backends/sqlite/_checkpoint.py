"""Copying the write-ahead log back into the database, off the writer thread.

SQLite's automatic checkpoint runs inside the COMMIT that crosses 1000 WAL pages and
takes about 10 ms here (it syncs the file), stalling every append queued behind it.
The writer therefore has ``wal_autocheckpoint = 0`` and this thread runs a PASSIVE
checkpoint (which never blocks writers or readers) once this process appended 1 MB
since the last one, and at least every 5 s while anything committed (heartbeats alone
must not cost a checkpoint each). With several processes each runs one; a checkpoint
already in progress elsewhere is simply skipped.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable

from ._threads import PollingThread

__all__ = ["Checkpointer"]

log = logging.getLogger("tidings.sqlite")

_INTERVAL = 0.25
_BYTES = 1 << 20
_MAX_WAIT = 5.0


class Checkpointer(PollingThread):
    """A thread that checkpoints the WAL when it has grown."""

    def __init__(
        self, connect: Callable[[], sqlite3.Connection], written: Callable[[], int]
    ) -> None:
        super().__init__("tidings-sqlite-checkpoint", connect)
        self._written = written

    def _prepare(self, conn: sqlite3.Connection) -> None:
        conn.execute("PRAGMA busy_timeout = 0")  # someone else checkpointing: skip

    def _run(self, conn: sqlite3.Connection) -> None:
        last_version, last_written, last_time = None, self._written(), time.monotonic()
        while not self._stop.wait(_INTERVAL):
            try:
                version = conn.execute("PRAGMA data_version").fetchone()[0]
                written = self._written()
                due = time.monotonic() - last_time >= _MAX_WAIT and version != last_version
                if due or written - last_written >= _BYTES:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                    last_version, last_written, last_time = version, written, time.monotonic()
            except sqlite3.Error as exc:
                log.debug("tidings sqlite checkpoint skipped: %s", exc)
