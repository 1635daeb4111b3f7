"""``sqlite:///path/to/bus.db``: the zero-setup, durable, multi-process backend.

One SQLite file in WAL mode holds the log, consumer groups, committed offsets and
delayed records; any number of processes on one machine share it. URLs follow
SQLAlchemy: ``sqlite:///relative/bus.db`` or ``sqlite:////absolute/bus.db``; the
folder is created. Query options (validated when the URL is parsed):

``partitions``       partitions of topics created implicitly (default 4)
``session_timeout``  seconds after which a silent member loses its partitions (3)
``heartbeat``        seconds between a member's lease renewals (session_timeout / 6)
``retention_hours``  delete records older than this; 0 keeps them forever (168)
``retention_bytes``  per partition, delete the oldest records above this; 0: no limit

Durability: a returned ``append`` survives a crash (SIGKILL) of the process; with
``synchronous=NORMAL`` the last commits may be lost on power failure.
"""

from __future__ import annotations

from ._options import SqliteOptions, parse_url
from ._transport import SqliteTransport

__all__ = ["SqliteOptions", "SqliteTransport", "from_url"]


def from_url(url: str) -> SqliteTransport:
    """Build a (not yet started) transport for a ``sqlite://`` URL."""
    return SqliteTransport(parse_url(url))
