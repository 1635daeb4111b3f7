"""The database layout and how connections to it are opened.

Tables::

    topics      name -> partition count
    partitions  pid (small integer id) per (topic, partition), with its start offset
                (first record kept), next offset and approximate size in bytes
    log         one row per record; its rowid is ``pid << 40 | offset``, so a partition
                is one contiguous rowid range and a fetch is one index-free range scan
    scheduled   records with a future ``deliver_at``, moved into ``log`` when due
    groups      per consumer group: ``generation`` (bumped on join, leave, release) and
                ``resets`` (bumped by ``set_offsets``)
    members     live members of groups: topics subscribed and lease expiry
    claims      per (group, topic, partition): owner and lease expiry
    offsets     per (group, topic, partition): the committed next offset

``log`` has no index but its primary key: the console's lookups index it in a private
database of their own (see ``_lookup``), so appends never pay for them.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from urllib.parse import quote

from ..._errors import TransportError

__all__ = [
    "BUSY_TIMEOUT_MS",
    "MAX_PIDS",
    "OFFSET_BITS",
    "SCHEMA_VERSION",
    "connect",
    "create_schema",
]

OFFSET_BITS = 40  # up to ~1.1e12 records per partition
MAX_PIDS = 1 << (63 - OFFSET_BITS)  # up to ~8.4e6 partitions in one database
SCHEMA_VERSION = 1
BUSY_TIMEOUT_MS = 30_000

_DDL = """
CREATE TABLE IF NOT EXISTS topics (
    name TEXT PRIMARY KEY,
    partitions INTEGER NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS partitions (
    pid INTEGER PRIMARY KEY,
    topic TEXT NOT NULL,
    partition INTEGER NOT NULL,
    start_offset INTEGER NOT NULL DEFAULT 0,
    next_offset INTEGER NOT NULL DEFAULT 0,
    bytes INTEGER NOT NULL DEFAULT 0,
    UNIQUE (topic, partition)
);
CREATE TABLE IF NOT EXISTS log (
    id INTEGER PRIMARY KEY,
    key TEXT,
    value BLOB NOT NULL,
    headers TEXT,
    ts REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS scheduled (
    id INTEGER PRIMARY KEY,
    due REAL NOT NULL,
    topic TEXT NOT NULL,
    partition INTEGER,
    key TEXT,
    value BLOB NOT NULL,
    headers TEXT
);
CREATE INDEX IF NOT EXISTS scheduled_by_due ON scheduled (due);
CREATE TABLE IF NOT EXISTS groups (
    name TEXT PRIMARY KEY,
    generation INTEGER NOT NULL DEFAULT 0,
    resets INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS members (
    group_name TEXT NOT NULL,
    member_id TEXT NOT NULL,
    client TEXT NOT NULL,
    topics TEXT NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (group_name, member_id)
);
CREATE TABLE IF NOT EXISTS claims (
    group_name TEXT NOT NULL,
    topic TEXT NOT NULL,
    partition INTEGER NOT NULL,
    owner TEXT NOT NULL,
    lease_until REAL NOT NULL,
    PRIMARY KEY (group_name, topic, partition)
);
CREATE INDEX IF NOT EXISTS claims_by_owner ON claims (group_name, owner);
CREATE TABLE IF NOT EXISTS offsets (
    group_name TEXT NOT NULL,
    topic TEXT NOT NULL,
    partition INTEGER NOT NULL,
    next_offset INTEGER NOT NULL,
    PRIMARY KEY (group_name, topic, partition)
);
"""


def connect(path: Path, *, read_only: bool = False) -> sqlite3.Connection:
    """Open a connection in autocommit mode (transactions are explicit) with WAL settings;
    ``read_only``: SQLite's ``mode=ro``, which neither creates nor writes the file.

    ``synchronous=NORMAL`` in WAL mode makes a COMMIT durable against a crash of the
    process (the OS keeps the written WAL pages), though not against power loss.
    """
    target = f"file:{quote(str(path.absolute()))}?mode=ro" if read_only else str(path)
    conn = sqlite3.connect(
        target, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=True,
        uri=read_only,
    )
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA synchronous = NORMAL")
    return conn


def create_schema(conn: sqlite3.Connection) -> None:
    """Switch the file to WAL and create missing tables (idempotent, safe to race)."""
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        raise TransportError(f"SQLite refused WAL mode for this file (journal_mode={mode})")
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise TransportError(
            f"this bus database has schema version {version}; this tidings knows "
            f"{SCHEMA_VERSION} (upgrade tidings)"
        )
    conn.execute("BEGIN IMMEDIATE")
    try:
        for statement in _DDL.split(";"):
            if statement.strip():
                conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
