"""What became of a topic's dead letters, read incrementally (DeadLetterScan, used by
keys parked behind a dead letter): only what was appended since is read, a resolution
changes an entry's state, and dead letters gone from the front of a partition (deleted
by hand, or by retention) are gone from what it tells."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

from tidings import App
from tidings._dlqscan import DeadLetterScan
from tidings._message import Headers
from tidings._records import OutRecord
from tidings.backends.sqlite._schema import OFFSET_BITS
from tidings.testing import memory_url


def _dead(offset: int) -> OutRecord:
    """The dead letter of ``t[0]@offset`` failed in group ``g``."""
    return OutRecord("t.dlq", b"{}", key="k", partition=0, headers={
        Headers.DLQ_GROUP: "g", Headers.DLQ_PARTITION: "0", Headers.DLQ_OFFSET: str(offset)})


def _purge(*positions: int) -> OutRecord:
    marks = ",".join(f"0:{p}" for p in positions)
    return OutRecord("t.dlq", b"", partition=0, headers={Headers.DLQ_RESOLVES: marks})


def _counting_reads(app: App) -> list[int]:
    """The offsets ``app``'s transport is asked to read from (the real transport)."""
    asked: list[int] = []
    read = app.transport.read

    async def counted(topic: str, partition: int, offset: int, limit: int) -> Any:
        asked.append(offset)
        return await read(topic, partition, offset, limit)

    app.transport.read = counted  # type: ignore[method-assign]
    return asked


def test_only_what_was_appended_since_is_read_and_resolutions_count() -> None:
    async def main() -> None:
        app = App("admin", broker=memory_url())
        async with app:
            await app.transport.ensure_topic("t.dlq", 1)
            await app.transport.append([_dead(3), _dead(7)])
            asked = _counting_reads(app)
            scan = DeadLetterScan("t")
            assert await scan.status(app.transport) == {("g", 0, 3): "pending",
                                                        ("g", 0, 7): "pending"}
            assert asked == [0]
            await app.transport.append([_purge(0)])  # the entry at dlq offset 0: t@3
            assert await scan.status(app.transport) == {("g", 0, 3): "purged",
                                                        ("g", 0, 7): "pending"}
            assert asked == [0, 2]  # from where it left off
            assert await scan.status(app.transport) == {("g", 0, 3): "purged",
                                                        ("g", 0, 7): "pending"}
            assert asked == [0, 2]  # nothing new: nothing read
            assert await DeadLetterScan("t").status(app.transport) == \
                await scan.status(app.transport)  # what a whole read tells

    asyncio.run(main())


def test_dead_letters_deleted_from_the_front_by_hand_are_gone(tmp_path: Path) -> None:
    db = tmp_path / "bus.db"

    async def main() -> None:
        app = App("admin", broker=f"sqlite:///{db}")
        async with app:
            await app.transport.ensure_topic("t.dlq", 1)
            await app.transport.append([_dead(3), _dead(7), _dead(9)])
            scan = DeadLetterScan("t")
            assert len(await scan.status(app.transport)) == 3
            with sqlite3.connect(db) as conn:  # delete the first two, as by hand
                [pid] = conn.execute("SELECT pid FROM partitions WHERE topic = 't.dlq'"
                                     ).fetchone()
                base = pid << OFFSET_BITS
                conn.execute("DELETE FROM log WHERE id BETWEEN ? AND ?", (base, base + 1))
                conn.execute("UPDATE partitions SET start_offset = 2 WHERE pid = ?", (pid,))
            assert await scan.status(app.transport) == {("g", 0, 9): "pending"}

    asyncio.run(main())


def test_a_dead_letter_topic_made_again_is_read_afresh() -> None:
    async def main() -> None:
        app = App("admin", broker=memory_url())
        async with app:
            await app.transport.ensure_topic("t.dlq", 1)
            await app.transport.append([_dead(3), _dead(7)])
            scan = DeadLetterScan("t")
            assert len(await scan.status(app.transport)) == 2
            scan.next[0] = 5  # as if it had read further than the topic now goes
            await app.transport.append([_dead(8)])
            assert await scan.status(app.transport) == {
                ("g", 0, 3): "pending", ("g", 0, 7): "pending", ("g", 0, 8): "pending"}

    asyncio.run(main())
