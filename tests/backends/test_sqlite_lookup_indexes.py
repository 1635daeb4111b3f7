"""The console's lookups on the embedded bus: indexed in a private database of the
reading connection, never in the bus (an index there would cost every append), and
caught up with what was appended since the last lookup."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from tidings import App
from tidings._message import Headers
from tidings._records import OutRecord


def _schema(path: Path) -> set[str]:
    with sqlite3.connect(path) as conn:
        return {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}


def test_lookups_index_privately_and_catch_up(tmp_path: Path) -> None:
    path = tmp_path / "bus.db"

    async def main() -> None:
        async with App("svc", broker=f"sqlite:///{path}") as app:
            transport = app.transport
            first = await app.publish("orders", {"n": 1}, key="o-1")
            schema = _schema(path)
            found = await transport.lookup(first.id)  # type: ignore[attr-defined]
            assert [r.headers[Headers.ID] for r in found] == [first.id]
            assert _schema(path) == schema, "a lookup changed the bus's schema"

            # a reply in the same conversation, and another conversation, after the
            # first lookup: the next lookups find them (by key, id and correlation id)
            # (as a handler of the first would publish it: with its correlation headers)
            await transport.append([OutRecord("payments", b'{"n": 2}', "o-1", {
                Headers.ID: "reply-1", Headers.CORRELATION_ID: first.id,
                Headers.CAUSATION_ID: first.id})])
            other = await app.publish("orders", {"n": 3}, key="o-2")
            for wanted in ("o-1", first.id, "reply-1"):
                found = await transport.lookup(wanted)  # type: ignore[attr-defined]
                assert sorted(r.headers[Headers.ID] for r in found) == \
                    sorted([first.id, "reply-1"]), wanted
            found = await transport.lookup("o-2")  # type: ignore[attr-defined]
            assert [r.headers[Headers.ID] for r in found] == [other.id]
            assert await transport.lookup("nothing") == []  # type: ignore[attr-defined]

    asyncio.run(main())


def test_lookups_find_what_another_process_appended(tmp_path: Path) -> None:
    path = tmp_path / "bus.db"

    async def publish(n: int) -> str:
        async with App("writer", broker=f"sqlite:///{path}") as app:
            return (await app.publish("orders", {"n": n}, key=f"o-{n}")).id

    async def main() -> None:
        await publish(0)
        async with App("console", broker=f"sqlite:///{path}") as app:
            assert len(await app.transport.lookup("o-0")) == 1  # type: ignore[attr-defined]
            for n in range(1, 4):  # another bus connection appends between lookups
                wanted = await publish(n)
                found = await app.transport.lookup(f"o-{n}")  # type: ignore[attr-defined]
                assert [r.headers[Headers.ID] for r in found] == [wanted]

    asyncio.run(main())


def test_records_removed_by_retention_leave_the_index(tmp_path: Path) -> None:
    path = tmp_path / "bus.db"

    async def main() -> None:
        # retention by size: a partition keeps about its newest 2 KB
        async with App("svc", broker=f"sqlite:///{path}?partitions=1&retention_bytes=2000"
                       ) as app:
            transport = app.transport
            old = await app.publish("orders", {"pad": "x" * 1500}, key="o-old")
            assert len(await transport.lookup("o-old")) == 1  # type: ignore[attr-defined]
            await app.publish("orders", {"pad": "y" * 1500}, key="o-new")
            await transport.apply_retention()  # type: ignore[attr-defined]
            assert (await transport.describe_topics())[0].start_offsets[0] == 1  # trimmed
            assert await transport.lookup(old.id) == []  # type: ignore[attr-defined]
            assert len(await transport.lookup("o-new")) == 1  # type: ignore[attr-defined]

    asyncio.run(main())
