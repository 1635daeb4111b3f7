"""Group commit of a service database (``Database.run``): units of work arriving together
share one transaction and one COMMIT, and one that fails loses nobody else's writes."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from reference.common.db import Database
from sqlalchemy import Column, Integer, MetaData, String, Table, event, func, select
from sqlalchemy.ext.asyncio import AsyncConnection


class Boom(Exception):
    pass


def _database(path: Path) -> tuple[Database, Table]:
    metadata = MetaData()
    table = Table("items", metadata, Column("id", String, primary_key=True),
                  Column("n", Integer, nullable=False))
    return Database(path / "group.db", metadata), table


def test_concurrent_work_shares_one_commit_and_a_failure_stays_its_own(tmp_path: Path) -> None:
    async def main() -> None:
        db, table = _database(tmp_path)
        await db.create()
        commits: list[int] = []
        event.listen(db.engine.sync_engine, "commit", lambda _conn: commits.append(1))

        def insert(n: int, fail: bool = False) -> Callable[[AsyncConnection], Awaitable[int]]:
            async def work(conn: AsyncConnection) -> int:
                await conn.execute(table.insert().values(id=f"i{n}", n=n))
                if fail:
                    raise Boom(n)
                return n
            return work

        results = await asyncio.gather(
            *(db.run(insert(n, fail=n == 3)) for n in range(8)), return_exceptions=True)
        assert [r if not isinstance(r, Boom) else "boom" for r in results] == \
            [0, 1, 2, "boom", 4, 5, 6, 7]
        assert len(commits) == 1  # eight callers, one transaction
        async with db.read() as conn:  # every result was returned after the commit
            rows = (await conn.execute(select(table.c.n).order_by(table.c.n))).scalars().all()
            count = (await conn.execute(select(func.count()).select_from(table))).scalar_one()
        assert list(rows) == [0, 1, 2, 4, 5, 6, 7]
        assert count == 7
        await db.close()

    asyncio.run(main())


def test_a_conflict_inside_the_batch_rolls_back_only_its_caller(tmp_path: Path) -> None:
    async def main() -> None:
        db, table = _database(tmp_path)
        await db.create()

        async def twice(conn: AsyncConnection) -> None:
            await conn.execute(table.insert().values(id="a", n=1))
            await conn.execute(table.insert().values(id="b", n=2))
            await conn.execute(table.insert().values(id="a", n=3))  # IntegrityError

        def other(key: str) -> Callable[[AsyncConnection], Awaitable[str]]:
            async def work(conn: AsyncConnection) -> str:
                await conn.execute(table.insert().values(id=key, n=4))
                return key
            return work

        results = await asyncio.gather(db.run(other("c")), db.run(twice), db.run(other("d")),
                                       return_exceptions=True)
        assert type(results[1]).__name__ == "IntegrityError"
        assert (results[0], results[2]) == ("c", "d")
        assert await db.run(other("e")) == "e"  # the next batch is fine too
        async with db.read() as conn:
            ids = (await conn.execute(select(table.c.id))).scalars().all()
        assert sorted(ids) == ["c", "d", "e"]
        await db.close()

    asyncio.run(main())


def test_each_unit_runs_in_its_callers_context_and_nesting_is_refused(tmp_path: Path) -> None:
    """Context variables (the handled message, for correlation ids) are the caller's, not
    the first caller's; a unit that starts another write gets an error, not a deadlock."""
    who: contextvars.ContextVar[str] = contextvars.ContextVar("who", default="nobody")

    async def main() -> None:
        db, table = _database(tmp_path)
        await db.create()
        seen: list[tuple[str, str]] = []

        async def caller(name: str) -> str:
            who.set(name)

            async def work(conn: AsyncConnection) -> str:
                await conn.execute(table.insert().values(id=name, n=1))
                seen.append((name, who.get()))
                return who.get()

            return await db.run(work)

        assert await asyncio.gather(*(caller(f"c{i}") for i in range(4))) == \
            ["c0", "c1", "c2", "c3"]
        assert all(name == value for name, value in seen)

        async def nested(conn: AsyncConnection) -> None:
            await db.run(lambda c: asyncio.sleep(0))

        with pytest.raises(RuntimeError, match="wait for its own transaction"):
            await asyncio.wait_for(db.run(nested), 5)
        assert await db.run(lambda conn: asyncio.sleep(0, "still fine")) == "still fine"
        await db.close()

    asyncio.run(main())
