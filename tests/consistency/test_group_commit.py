"""Group commit (``tidings.sqlalchemy.GroupCommit``): units of work arriving together share
one transaction and one COMMIT, each in its own savepoint; one that fails loses nobody
else's writes, and every caller is answered after the COMMIT. On the toolkit's inline
SQLite engine, plain aiosqlite and a real PostgreSQL."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import (
    Column,
    Integer,
    MetaData,
    String,
    Table,
    bindparam,
    event,
    func,
    select,
    update,
)
from sqlalchemy import insert as sql_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tidings import ConfigurationError
from tidings.sqlalchemy import GroupCommit, execute_dml, sqlite_engine

from .services import make_engine

metadata = MetaData()
items = Table("gc_items", metadata, Column("id", String(20), primary_key=True),
              Column("n", Integer, nullable=False))
_made = iter(range(1, 1_000_000))
defaulted = Table("gc_defaulted", metadata, Column("id", String(20), primary_key=True),
                  Column("kind", String(10), nullable=False, default="plain"),
                  Column("made", Integer, nullable=False, default=lambda: next(_made)),
                  Column("touched", Integer, default=0, onupdate=1))


class Boom(Exception):
    pass


@pytest.fixture(params=["inline-sqlite", "aiosqlite", "postgres"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "inline-sqlite":
        return f"inline:{tmp_path}/group.db"
    if request.param == "aiosqlite":
        return f"sqlite+aiosqlite:///{tmp_path}/group.db"
    from postgres_server import fresh_database
    return fresh_database(request.getfixturevalue("postgres_server"))


@asynccontextmanager
async def database(url: str) -> AsyncIterator[AsyncEngine]:
    engine = sqlite_engine(url[7:]) if url.startswith("inline:") else make_engine(url)
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    try:
        yield engine
    finally:
        await engine.dispose()


def insert(key: str, fail: bool = False) -> Callable[[AsyncConnection], Awaitable[str]]:
    async def work(conn: AsyncConnection) -> str:
        await conn.execute(items.insert().values(id=key, n=1))
        if fail:
            raise Boom(key)
        return key
    return work


async def ids(engine: AsyncEngine) -> list[str]:
    async with engine.connect() as conn:
        return sorted((await conn.execute(select(items.c.id))).scalars().all())


def test_concurrent_units_share_one_commit_and_a_failing_savepoint_is_its_own(url: str) -> None:
    async def main() -> None:
        async with database(url) as engine:
            commits = GroupCommit.of(engine)
            assert GroupCommit.of(engine) is commits  # one writer per engine
            seen: list[int] = []
            event.listen(engine.sync_engine, "commit", lambda _conn: seen.append(1))
            answered: list[list[str]] = []

            async def caller(n: int) -> str:
                key = await commits.run(insert(f"i{n}", fail=n == 3))
                async with engine.connect() as conn:  # answered after the COMMIT
                    answered.append(list((await conn.execute(
                        select(items.c.id).where(items.c.id == key))).scalars()))
                return key

            results = await asyncio.gather(*(caller(n) for n in range(8)),
                                           return_exceptions=True)
            assert [r if not isinstance(r, Boom) else "boom" for r in results] == \
                ["i0", "i1", "i2", "boom", "i4", "i5", "i6", "i7"]
            assert len(seen) == 1 and commits.commits == 1  # eight callers, one COMMIT
            assert all(len(found) == 1 for found in answered)
            assert await ids(engine) == ["i0", "i1", "i2", "i4", "i5", "i6", "i7"]

    asyncio.run(main())


def test_a_conflict_inside_the_group_rolls_back_only_its_caller(url: str) -> None:
    async def main() -> None:
        async with database(url) as engine:
            commits = GroupCommit.of(engine)

            async def twice(conn: AsyncConnection) -> None:
                await conn.execute(items.insert().values(id="a", n=1))
                await conn.execute(items.insert().values(id="b", n=2))
                await conn.execute(items.insert().values(id="a", n=3))  # IntegrityError

            results = await asyncio.gather(commits.run(insert("c")), commits.run(twice),
                                           commits.run(insert("d")), return_exceptions=True)
            assert type(results[1]).__name__ == "IntegrityError"
            assert (results[0], results[2]) == ("c", "d")
            assert await commits.run(insert("e")) == "e"  # the next group is fine too
            async with commits.transaction() as conn:  # a transaction of its own
                await conn.execute(items.insert().values(id="f", n=1))
            assert await ids(engine) == ["c", "d", "e", "f"]

    asyncio.run(main())


def test_each_unit_runs_in_its_callers_context_and_nesting_is_refused(url: str) -> None:
    """Context variables (the handled message, for correlation ids) are the caller's;
    a unit that starts another write of its database gets an error, not a deadlock."""
    who: contextvars.ContextVar[str] = contextvars.ContextVar("who", default="nobody")

    async def main() -> None:
        async with database(url) as engine:
            commits = GroupCommit.of(engine)

            async def caller(name: str) -> str:
                who.set(name)

                async def work(conn: AsyncConnection) -> str:
                    await conn.execute(items.insert().values(id=name, n=1))
                    return who.get()

                return await commits.run(work)

            assert await asyncio.gather(*(caller(f"c{i}") for i in range(4))) == \
                ["c0", "c1", "c2", "c3"]

            async def nested(conn: AsyncConnection) -> None:
                await commits.run(lambda c: asyncio.sleep(0))

            with pytest.raises(ConfigurationError, match="wait for its own transaction"):
                await asyncio.wait_for(commits.run(nested), 5)
            assert await commits.run(lambda conn: asyncio.sleep(0, "fine")) == "fine"
            assert await ids(engine) == ["c0", "c1", "c2", "c3"]

    asyncio.run(main())


def test_the_inline_sqlite_engine_runs_its_calls_in_the_loops_thread(tmp_path: Path) -> None:
    """sqlite_engine relies on aiosqlite routing every call through one method: if an
    aiosqlite release changes that, this fails rather than the engine going slow."""
    import threading

    async def main() -> None:
        engine = sqlite_engine(tmp_path / "inline.db")

        def thread_function(dbapi_connection: Any, _record: object) -> None:
            dbapi_connection.create_function("thread", 0, threading.get_ident)

        event.listen(engine.sync_engine, "connect", thread_function)
        try:
            async with engine.begin() as conn:
                await conn.run_sync(metadata.create_all)
            assert await GroupCommit.of(engine).run(insert("x")) == "x"
            async with engine.connect() as conn:
                assert await conn.scalar(select(func.count()).select_from(items)) == 1
                assert (await conn.exec_driver_sql("PRAGMA journal_mode")).scalar() == "wal"
                ran_in = (await conn.exec_driver_sql("SELECT thread()")).scalar()
        finally:
            await engine.dispose()
        assert ran_in == threading.get_ident()

    asyncio.run(main())


def test_batched_items_share_one_call_and_fail_alone(url: str) -> None:
    """``run_batched``: the items of one write waiting in a group go to one call of it;
    an exception it returns for an item is that caller's alone; one it raises fails
    its items but not the other units of the group."""
    calls: list[list[str]] = []

    async def write(conn: AsyncConnection, keys: list[str]) -> list[Any]:
        calls.append(keys)
        await conn.execute(items.insert(), [{"id": k, "n": 1} for k in keys if k != "bad"])
        return [Boom(k) if k == "bad" else k for k in keys]

    async def broken(conn: AsyncConnection, keys: list[str]) -> list[Any]:
        await conn.execute(items.insert(), [{"id": k, "n": 1} for k in keys])
        raise Boom("all of them")

    async def main() -> None:
        async with database(url) as engine:
            commits = GroupCommit.of(engine)
            results = await asyncio.gather(
                *(commits.run_batched(write, k) for k in ("a", "bad", "b")),
                commits.run(insert("c")), commits.run_batched(broken, "x"),
                commits.run_batched(broken, "y"), return_exceptions=True)
            assert results[:4] == ["a", results[1], "b", "c"]
            assert isinstance(results[1], Boom)
            assert [str(r) for r in results[4:]] == ["all of them"] * 2
            assert calls == [["a", "bad", "b"]] and commits.commits == 1
            assert await ids(engine) == ["a", "b", "c"]  # x and y rolled back

    asyncio.run(main())


def test_saga_saves_of_a_group_are_one_write_and_a_stale_one_conflicts(url: str) -> None:
    from tidings.saga import SagaConflictError
    from tidings.saga._store import Direction, SagaRecord, SagaStatus, StepEvent
    from tidings.sqlalchemy import SqlSagaStore, create_tables

    async def main() -> None:
        async with database(url) as engine:
            await create_tables(engine)
            store = SqlSagaStore(engine)
            for n in range(3):
                await store.create(SagaRecord(f"s{n}", "bench", SagaStatus.RUNNING,
                                              Direction.FORWARD, "{}"), [])
            claimed = await store.claim("me", ["bench"], 30.0)
            stale = claimed[1].replace(version=claimed[1].version - 1)
            results = await asyncio.gather(
                store.save(claimed[0].replace(step=1), [StepEvent("s0", "a", "action", "ok")],
                           30.0),
                store.save(stale.replace(step=1), [StepEvent("s1", "a", "action", "ok")], 30.0),
                store.save(claimed[2].replace(step=2), [StepEvent("s2", "b", "action", "ok")],
                           30.0, release=True),
                return_exceptions=True)
            assert isinstance(results[1], SagaConflictError)
            assert [r.step for r in results if not isinstance(r, Exception)] == [1, 2]
            s0, s1, s2 = [await store.get(f"s{n}") for n in range(3)]
            assert s0 is not None and s1 is not None and s2 is not None
            assert (s0.step, s0.version, s0.owner) == (1, claimed[0].version + 1, "me")
            assert (s1.step, s1.version) == (0, claimed[1].version)  # untouched
            assert (s2.step, s2.owner, s2.lease_until) == (2, None, None)
            assert [e.step for e in await store.history("s0")] == ["a"]
            assert await store.history("s1") == []  # a conflicting save wrote no event

    asyncio.run(main())


def test_on_postgresql_a_saga_started_in_a_unit_costs_two_round_trips(
        postgres_server: Any) -> None:
    """On asyncpg a unit's RELEASE goes with the next unit's SAVEPOINT (the COMMIT
    releases the last), and a new saga and its first history lines are one statement:
    a saga started inside a unit costs two round trips, not four."""
    from postgres_server import fresh_database
    from tidings.saga._store import Direction, SagaRecord, SagaStatus, StepEvent
    from tidings.sqlalchemy import SqlSagaStore, create_tables

    url = fresh_database(postgres_server)

    async def main() -> None:
        async with database(url) as engine:
            await create_tables(engine)
            store, commits = SqlSagaStore(engine), GroupCommit.of(engine)
            sent: list[str] = []

            @event.listens_for(engine.sync_engine, "connect")
            def log_queries(dbapi_connection: Any, _record: Any) -> None:
                dbapi_connection.driver_connection.add_query_logger(
                    lambda record: sent.append(record.query))

            @event.listens_for(engine.sync_engine, "before_cursor_execute")
            def log_statements(*args: Any) -> None:
                sent.append(args[2])  # what goes through SQLAlchemy

            await engine.dispose()  # reconnect, with the logger of asyncpg's own queries

            def start(n: int) -> Callable[[AsyncConnection], Awaitable[None]]:
                async def work(conn: AsyncConnection) -> None:
                    record = SagaRecord(f"s{n}", "s", SagaStatus.RUNNING, Direction.FORWARD,
                                        "{}")
                    await store.create(record, [StepEvent(f"s{n}", "", "saga", "RUNNING"),
                                                StepEvent(f"s{n}", "a", "action", "started")],
                                       within=conn)
                return work

            before = commits.commits
            await asyncio.gather(*(commits.run(start(n)) for n in range(10)))
            assert commits.commits == before + 1
            units = [q for q in sent if "tidings_unit" in q or "tidings_sagas" in q]
            assert len(units) == 20, units  # a SAVEPOINT (+ RELEASE) and an INSERT each
            assert [e.step for e in await store.history("s9")] == ["", "a"]

    asyncio.run(main())


def test_execute_dml_runs_statements_built_once_in_the_units_transaction(url: str) -> None:
    """execute_dml: rows changed, values the statement fixed itself (``n == 1``), many rows
    at once, and a savepoint that rolls back takes its statements with it."""
    add = sql_insert(items)
    bump = update(items).where(items.c.id == bindparam("key"), items.c.n == 1
                               ).values(n=bindparam("to"))

    async def main() -> None:
        async with database(url) as engine:
            commits = GroupCommit.of(engine)

            async def first(conn: AsyncConnection) -> tuple[int, int, int]:
                added = await execute_dml(conn, add, [{"id": "a", "n": 1}, {"id": "b", "n": 2}])
                return (added, await execute_dml(conn, bump, {"key": "a", "to": 5}),
                        await execute_dml(conn, bump, {"key": "b", "to": 5}))  # n is 2: none

            async def failing(conn: AsyncConnection) -> None:
                await execute_dml(conn, add, {"id": "c", "n": 1})
                raise Boom("c")

            results = await asyncio.gather(commits.run(first), commits.run(failing),
                                           return_exceptions=True)
            many = -1 if engine.dialect.driver == "asyncpg" else 2  # asyncpg: not counted
            assert results[0] == (many, 1, 0) and isinstance(results[1], Boom)
            async with engine.connect() as conn:
                rows = (await conn.execute(select(items.c.id, items.c.n).order_by(items.c.id))
                        ).all()
            assert [tuple(r) for r in rows] == [("a", 5), ("b", 2)]

    asyncio.run(main())


def test_execute_dml_computes_python_side_defaults_like_sqlalchemy(url: str) -> None:
    """Columns the values leave out get their Python-side ``default`` (an INSERT) or
    ``onupdate`` (an UPDATE), scalar or callable, on every path: inline SQLite used to
    write NULL for them (or fail on NOT NULL), unlike ``conn.execute``."""
    add = sql_insert(defaulted)
    rename = update(defaulted).where(defaulted.c.id == bindparam("key")
                                     ).values(kind=bindparam("new_kind"))

    async def main() -> None:
        async with database(url) as engine:
            commits = GroupCommit.of(engine)

            async def write(conn: AsyncConnection) -> None:
                await execute_dml(conn, add, {"id": "a", "kind": "given"})
                await execute_dml(conn, add, [{"id": "b"}, {"id": "c"}])
                await execute_dml(conn, rename, {"key": "c", "new_kind": "renamed"})

            await commits.run(write)
            async with engine.connect() as conn:
                rows = [tuple(r) for r in (await conn.execute(
                    select(defaulted).order_by(defaulted.c.id))).all()]
        assert [(i, kind, touched) for i, kind, _, touched in rows] == [
            ("a", "given", 0), ("b", "plain", 0), ("c", "renamed", 1)]
        made = [m for _, _, m, _ in rows]
        assert len(set(made)) == 3 and all(isinstance(m, int) for m in made)

    asyncio.run(main())
