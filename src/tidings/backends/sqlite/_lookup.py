"""Finding a conversation's records by index (the console's lookups).

The bus itself carries no lookup index: every append would pay for it, whether anybody
ever looks anything up or not. Instead the reading connection attaches a private,
temporary database (SQLite deletes it when the connection closes) and indexes the log
into it: per record its conversation (the correlation id header, else the record's own
id: a conversation's first message carries no correlation header), its message id and
its key. Each lookup first indexes what was appended since the last one (per partition,
the offsets past the last indexed one, read in the same snapshot as the partitions'
ends), so the bus is only ever read, and writers never wait for the index.

The first lookup on a big bus indexes all of it (about a second per million records
here); later ones index only what is new. Records removed by retention drop out of the
index as their partition's start moves.
"""

from __future__ import annotations

import sqlite3

from ..._records import Record
from ._reads import decode_headers
from ._schema import OFFSET_BITS

__all__ = ["lookup"]

_ID = """json_extract(headers, '$."tidings-id"')"""
_CONVERSATION = f"""coalesce(json_extract(headers, '$."tidings-correlation-id"'), {_ID})"""

_TABLES = """
CREATE TABLE IF NOT EXISTS lookup.idx (rid INTEGER PRIMARY KEY, conv TEXT, mid TEXT, key TEXT);
CREATE TABLE IF NOT EXISTS lookup.progress (pid INTEGER PRIMARY KEY, next_rid INTEGER NOT NULL);
"""
# made after the first catch-up: a bulk load into unindexed tables is several times faster
_INDEXES = """
CREATE INDEX IF NOT EXISTS lookup.idx_conv ON idx (conv);
CREATE INDEX IF NOT EXISTS lookup.idx_mid ON idx (mid);
CREATE INDEX IF NOT EXISTS lookup.idx_key ON idx (key) WHERE key IS NOT NULL;
"""
_ADD = (f"INSERT OR REPLACE INTO lookup.idx SELECT id, {_CONVERSATION}, {_ID}, key "
        "FROM main.log WHERE id >= ? AND id < ? AND headers IS NOT NULL")
_SEEDS = """
SELECT conv FROM lookup.idx WHERE key = ?1
UNION SELECT conv FROM lookup.idx WHERE mid = ?1
UNION SELECT conv FROM lookup.idx WHERE conv = ?1
"""
_MEMBERS = ("SELECT l.id, l.key, l.value, l.headers, l.ts FROM lookup.idx AS i "
            "JOIN main.log AS l ON l.id = i.rid WHERE i.conv = ?")
#: at most this many conversations for one lookup (a key shared by many orders)
_MAX_SEEDS = 100


def lookup(conn: sqlite3.Connection, wanted: str) -> list[Record]:
    """Every record of the conversations ``wanted`` names (key, id or correlation id).

    Runs on the reading connection's thread: it indexes what is new, then looks up."""
    places = catch_up(conn)
    seeds = [row[0] for row in conn.execute(_SEEDS, (wanted,)).fetchmany(_MAX_SEEDS)]
    out: list[Record] = []
    for seed in seeds:
        if seed is None:
            continue
        for rid, key, value, headers, ts in conn.execute(_MEMBERS, (seed,)):
            place = places.get(rid >> OFFSET_BITS)
            if place is None:
                continue
            out.append(Record(place[0], place[1], rid - ((rid >> OFFSET_BITS) << OFFSET_BITS),
                              key, value, decode_headers(headers), ts))
    return out


def catch_up(conn: sqlite3.Connection) -> dict[int, tuple[str, int]]:
    """Index every record appended since the last call; returns the partitions
    (pid -> topic, partition) as of the snapshot indexed."""
    if not _attached(conn):
        conn.execute("ATTACH DATABASE '' AS lookup")
        conn.executescript(_TABLES)
    conn.execute("BEGIN")
    try:
        done = dict(conn.execute("SELECT pid, next_rid FROM lookup.progress").fetchall())
        bulk = not done  # nothing indexed yet: load first, index after
        places: dict[int, tuple[str, int]] = {}
        for pid, topic, partition, start, end in conn.execute(
                "SELECT pid, topic, partition, start_offset, next_offset FROM main.partitions"
        ).fetchall():
            places[pid] = (topic, partition)
            base = pid << OFFSET_BITS
            first = max(done.get(pid, base), base + start)
            if pid in done and done[pid] < base + start:  # retention moved the start
                conn.execute("DELETE FROM lookup.idx WHERE rid >= ? AND rid < ?",
                             (base, base + start))
            if first < base + end:
                conn.execute(_ADD, (first, base + end))
            if done.get(pid) != base + end:
                conn.execute("INSERT OR REPLACE INTO lookup.progress VALUES (?, ?)",
                             (pid, base + end))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    if bulk:
        conn.executescript(_INDEXES)
    return places


def _attached(conn: sqlite3.Connection) -> bool:
    return any(row[1] == "lookup" for row in conn.execute("PRAGMA database_list"))
