"""Finding a conversation's records by index (the console's lookups).

``_schema`` indexes ``log`` by key, by message id and by conversation (the correlation
id header, else the record's own id: a conversation's first message carries no
correlation header); the queries here use the same expressions, so SQLite uses them.
"""

from __future__ import annotations

import sqlite3

from ..._records import Record
from ._reads import decode_headers
from ._schema import CONVERSATION as _CONVERSATION
from ._schema import MESSAGE_ID as _ID
from ._schema import OFFSET_BITS

__all__ = ["lookup"]

_SEEDS = f"""
SELECT {_CONVERSATION} FROM log WHERE key = ?1 AND headers IS NOT NULL
UNION SELECT {_CONVERSATION} FROM log WHERE {_ID} = ?1 AND headers IS NOT NULL
UNION SELECT {_CONVERSATION} FROM log WHERE {_CONVERSATION} = ?1 AND headers IS NOT NULL
"""
_MEMBERS = (f"SELECT id, key, value, headers, ts FROM log WHERE {_CONVERSATION} = ? "
            "AND headers IS NOT NULL")
#: at most this many conversations for one lookup (a key shared by many orders)
_MAX_SEEDS = 100


def lookup(conn: sqlite3.Connection, wanted: str) -> list[Record]:
    """Every record of the conversations ``wanted`` names (key, id or correlation id)."""
    seeds = [row[0] for row in conn.execute(_SEEDS, (wanted,)).fetchmany(_MAX_SEEDS)]
    places = {int(pid): (topic, int(partition)) for pid, topic, partition
              in conn.execute("SELECT pid, topic, partition FROM partitions")}
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
